//! What became of each item, and the error of a fail-fast batch.

use std::fmt;
use std::time::Duration;

/// What became of one item of a batch.
///
/// The variants separate the cases a caller treats differently: an item that
/// ran to its end ([`Succeeded`](Self::Succeeded), [`Failed`](Self::Failed)),
/// one that started and was cut off ([`TimedOut`](Self::TimedOut),
/// [`DeadlineExceeded`](Self::DeadlineExceeded), [`Aborted`](Self::Aborted):
/// its side effects may or may not have happened), and one that never
/// started ([`NotStarted`](Self::NotStarted): safe to retry later, recorded as
/// `Pending`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemOutcome<T, E> {
    /// The item ran to its end and returned a value.
    Succeeded(T),
    /// The item ran to its end and returned an error.
    Failed(E),
    /// The item ran longer than the item timeout and was dropped.
    TimedOut {
        /// The item timeout it exceeded.
        after: Duration,
    },
    /// The item was running when the batch deadline passed and was dropped.
    DeadlineExceeded,
    /// The item was running when the batch was aborted and was dropped.
    Aborted,
    /// The item never started.
    NotStarted(NotStartedReason),
}

/// Why an item never started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotStartedReason {
    /// The stop token was cancelled first (the drain began).
    Stopped,
    /// The batch deadline passed first.
    DeadlineExceeded,
    /// The abort token was cancelled first.
    Aborted,
}

/// Why a [`fail_fast`](super::fail_fast) batch returned no values: the first
/// item, in completion order, that ended without one.
#[derive(Debug, thiserror::Error)]
pub enum BatchError<E> {
    /// The item returned an error.
    #[error("batch item {index} failed")]
    Failed {
        /// The item's position in the input.
        index: usize,
        /// The item's own error.
        #[source]
        source: E,
    },
    /// The item exceeded the item timeout.
    #[error("batch item {index} timed out after {after:?}")]
    TimedOut {
        /// The item's position in the input.
        index: usize,
        /// The item timeout it exceeded.
        after: Duration,
    },
    /// The batch deadline passed while the item was running.
    #[error("batch deadline passed while item {index} was running")]
    DeadlineExceeded {
        /// The item's position in the input.
        index: usize,
    },
    /// The batch was aborted while the item was running.
    #[error("batch aborted while item {index} was running")]
    Aborted {
        /// The item's position in the input.
        index: usize,
    },
    /// The item never started.
    #[error("batch item {index} was not started: {reason}")]
    NotStarted {
        /// The item's position in the input.
        index: usize,
        /// Why it never started.
        reason: NotStartedReason,
    },
}

impl<T, E> ItemOutcome<T, E> {
    /// Whether the item's work began (and so may have had side effects).
    pub fn started(&self) -> bool {
        !matches!(self, Self::NotStarted(_))
    }

    /// Whether the item ran to its own end, with a value or an error, rather
    /// than being cut off or never started.
    pub fn ran_to_end(&self) -> bool {
        matches!(self, Self::Succeeded(_) | Self::Failed(_))
    }

    /// The value, treating every other outcome as an error of item `index`.
    pub fn into_result(self, index: usize) -> Result<T, BatchError<E>> {
        match self {
            Self::Succeeded(value) => Ok(value),
            Self::Failed(source) => Err(BatchError::Failed { index, source }),
            Self::TimedOut { after } => Err(BatchError::TimedOut { index, after }),
            Self::DeadlineExceeded => Err(BatchError::DeadlineExceeded { index }),
            Self::Aborted => Err(BatchError::Aborted { index }),
            Self::NotStarted(reason) => Err(BatchError::NotStarted { index, reason }),
        }
    }
}

impl<T, E> From<Result<T, E>> for ItemOutcome<T, E> {
    fn from(result: Result<T, E>) -> Self {
        match result {
            Ok(value) => Self::Succeeded(value),
            Err(error) => Self::Failed(error),
        }
    }
}

impl<E> BatchError<E> {
    /// The position in the input of the item that ended the batch.
    pub fn index(&self) -> usize {
        match self {
            Self::Failed { index, .. }
            | Self::TimedOut { index, .. }
            | Self::DeadlineExceeded { index }
            | Self::Aborted { index }
            | Self::NotStarted { index, .. } => *index,
        }
    }
}

impl fmt::Display for NotStartedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stopped => "the batch was stopped",
            Self::DeadlineExceeded => "the batch deadline passed",
            Self::Aborted => "the batch was aborted",
        })
    }
}
