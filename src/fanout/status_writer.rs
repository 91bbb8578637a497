//! The coalescing status writer of one reconcile.
//!
//! The reconcile publishes a fresh snapshot of the *whole* status (every
//! target in resolution order: finished ones with their result, the rest
//! `Pending`) whenever a result arrives; this task writes the latest
//! snapshot at most once per `--status-interval`, and [`StatusWriter::finish`]
//! writes the final one. One task issues every write of the pass, one after
//! the other, so a write can never overtake an earlier one, and since each
//! write carries the complete ordered list, the status is never reordered —
//! nor written once per target. A snapshot equal to what is already on the
//! object is not written at all.
//!
//! Writes are server-side apply on the status subresource with a fixed field
//! manager: each write states the whole status, and fields it leaves out
//! (an optional field that became empty) are removed.

use std::sync::Arc;
use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

use super::api::{CallError, Caller};
use super::copy::FIELD_MANAGER;
use super::crd::{Fanout, FanoutStatus};
use crate::runtime::health::Watchdog;

/// Errors writing a status.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The write failed (after its retries) or got no answer in time.
    #[error("cannot write the status of Fanout {fanout}")]
    Write {
        /// The Fanout's name.
        fanout: String,
        /// Why.
        #[source]
        source: CallError,
    },
    /// The pass was cancelled (drain deadline, deleted source) before the
    /// final status was written; its successor writes it.
    #[error("abandoned the final status write of Fanout {fanout}")]
    Abandoned {
        /// The Fanout's name.
        fanout: String,
    },
}

/// Writes one Fanout's status during one reconcile. Dropping it without
/// [`finish`](Self::finish) stops the writer where it is (a cancelled pass
/// leaves the status to its successor).
pub struct StatusWriter {
    name: String,
    snapshots: watch::Sender<Arc<FanoutStatus>>,
    finished: CancellationToken,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), StatusError>>,
}

impl StatusWriter {
    /// Starts the writer for Fanout `name` (via `api`, namespaced), knowing
    /// that `current` is on the object now. Each write is a call under the
    /// client's deadline ([`Caller`]); `cancel` (the pass's token) abandons
    /// the writer, including a final write the API server does not answer.
    pub fn start(
        api: Api<Fanout>,
        name: String,
        interval: Duration,
        current: FanoutStatus,
        cancel: CancellationToken,
        watchdog: Watchdog,
    ) -> Self {
        let current = Arc::new(current);
        let (snapshots, receiver) = watch::channel(current.clone());
        let finished = CancellationToken::new();
        let span = tracing::Span::current();
        let task = tokio::spawn(
            write_loop(
                Target {
                    api,
                    name: name.clone(),
                    cancel: cancel.clone(),
                    watchdog,
                },
                interval,
                receiver,
                current,
                finished.clone(),
            )
            .instrument(span),
        );
        Self {
            name,
            snapshots,
            finished,
            cancel,
            task,
        }
    }

    /// Publishes the latest snapshot; written within one interval.
    pub fn publish(&self, status: FanoutStatus) {
        self.snapshots.send_replace(Arc::new(status));
    }

    /// Writes `last` (unless equal to what is on the object) after any
    /// write in progress, and returns once it is done, or once the pass is
    /// cancelled (the write is then abandoned, and logged as such).
    pub async fn finish(mut self, last: FanoutStatus) -> Result<(), StatusError> {
        self.snapshots.send_replace(Arc::new(last));
        self.finished.cancel();
        let cancel = self.cancel.clone();
        let joined = tokio::select! {
            joined = &mut self.task => joined,
            () = cancel.cancelled() => {
                warn!(fanout = %self.name, "abandoned the final status write: the pass was cancelled");
                return Err(StatusError::Abandoned { fanout: self.name.clone() });
            }
        };
        match joined {
            Ok(result) => result,
            // The task neither panics nor is aborted while we hold it.
            Err(join) => {
                warn!(error = %join, "status writer task ended abnormally");
                Ok(())
            }
        }
    }
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Target {
    api: Api<Fanout>,
    name: String,
    cancel: CancellationToken,
    watchdog: Watchdog,
}

impl Target {
    /// One status write (transient failures retried by [`Caller`]: the
    /// final write of a drain must land).
    async fn write(&self, status: &FanoutStatus) -> Result<(), StatusError> {
        let patch = json!({
            "apiVersion": "fanout.dev/v1alpha1",
            "kind": "Fanout",
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let patch = Patch::Apply(&patch);
        let caller = Caller {
            cancel: &self.cancel,
            watchdog: &self.watchdog,
        };
        let object = format!("status of Fanout {}", self.name);
        caller
            .call("patch", &object, || {
                self.api.patch_status(&self.name, &params, &patch)
            })
            .await
            .map(drop)
            .map_err(|source| StatusError::Write {
                fanout: self.name.clone(),
                source,
            })
    }
}

async fn write_loop(
    target: Target,
    interval: Duration,
    mut snapshots: watch::Receiver<Arc<FanoutStatus>>,
    mut written: Arc<FanoutStatus>,
    finished: CancellationToken,
) -> Result<(), StatusError> {
    // The first write waits one interval too: a short pass then writes once.
    let mut next_write = Instant::now() + interval;
    loop {
        tokio::select! {
            biased;
            () = finished.cancelled() => break,
            changed = snapshots.changed() => if changed.is_err() { break },
        }
        tokio::select! {
            biased;
            () = finished.cancelled() => break,
            () = tokio::time::sleep_until(next_write) => {}
        }
        let latest = snapshots.borrow_and_update().clone();
        if latest != written {
            debug!(
                pending = latest.summary.pending,
                "writing intermediate status"
            );
            // An intermediate write may fail; the next one (or the final
            // one) carries the same information and more.
            match target.write(&latest).await {
                Ok(()) => written = latest,
                Err(error) => warn!(%error, "intermediate status write failed"),
            }
        }
        next_write = Instant::now() + interval;
    }
    let last = snapshots.borrow_and_update().clone();
    if last != written {
        target.write(&last).await?;
    }
    Ok(())
}
