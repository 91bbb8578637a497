//! How a batch runs: its concurrency, time limits and cancellation inputs.

use std::num::NonZeroUsize;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Options for one batch, built with `#[must_use]` setters.
///
/// The concurrency is a [`NonZeroUsize`] because a batch that may run zero
/// items at once would never finish; the type rules that out instead of a
/// runtime check. Every limit is optional and off by default, so the options
/// say exactly which limits a caller chose.
#[derive(Clone, Debug)]
pub struct BatchOptions {
    pub(super) concurrency: NonZeroUsize,
    pub(super) item_timeout: Option<Duration>,
    pub(super) deadline_after: Option<Duration>,
    pub(super) deadline_at: Option<Instant>,
    pub(super) stop: CancellationToken,
    pub(super) abort: CancellationToken,
}

impl BatchOptions {
    /// At most `concurrency` items in flight, no time limits, no cancellation.
    pub fn new(concurrency: NonZeroUsize) -> Self {
        Self {
            concurrency,
            item_timeout: None,
            deadline_after: None,
            deadline_at: None,
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
        }
    }

    /// One item at a time: for work that must not overlap.
    pub fn sequential() -> Self {
        Self::new(NonZeroUsize::MIN)
    }

    /// How many items may be in flight at once.
    pub fn concurrency_limit(&self) -> NonZeroUsize {
        self.concurrency
    }

    /// Sets how many items may be in flight at once.
    #[must_use]
    pub fn concurrency(mut self, concurrency: NonZeroUsize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Bounds each item, measured from its own start, so one hung API call
    /// cannot hold a slot (or a drain) forever.
    #[must_use]
    pub fn item_timeout(mut self, limit: Duration) -> Self {
        self.item_timeout = Some(limit);
        self
    }

    /// Bounds the whole batch, measured from when [`ordered`](super::ordered)
    /// or [`fail_fast`](super::fail_fast) is called. Combined with
    /// [`deadline_at`](Self::deadline_at), the earlier one wins.
    #[must_use]
    pub fn deadline_after(mut self, limit: Duration) -> Self {
        self.deadline_after = Some(limit);
        self
    }

    /// Bounds the whole batch by an absolute instant, for a caller that
    /// already works to a deadline (a drain, a reconcile budget).
    #[must_use]
    pub fn deadline_at(mut self, deadline: Instant) -> Self {
        self.deadline_at = Some(deadline);
        self
    }

    /// Stops launching items once `stop` is cancelled; running items finish.
    /// This is the first phase of a drain: no new work, nothing lost.
    #[must_use]
    pub fn stop_on(mut self, stop: CancellationToken) -> Self {
        self.stop = stop;
        self
    }

    /// Drops running items once `abort` is cancelled. This is the end of a
    /// drain (or a reconcile made moot): waiting any longer is worse than
    /// leaving the work undone.
    #[must_use]
    pub fn abort_on(mut self, abort: CancellationToken) -> Self {
        self.abort = abort;
        self
    }

    /// The batch's deadline for a batch starting `now`, if any.
    pub(super) fn deadline_from(&self, now: Instant) -> Option<Instant> {
        // An overflowing duration is as good as no deadline.
        let after = self.deadline_after.and_then(|limit| now.checked_add(limit));
        match (after, self.deadline_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
