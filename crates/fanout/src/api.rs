//! How the controller makes an API call: the one place that retries,
//! backs off and gives up, for every request the Fanout code makes itself.
//!
//! - **Deadline.** Each attempt is bounded by the client's own deadline
//!   ([`kube_lifecycle::deadline`], `--write-timeout`), so no attempt waits
//!   forever on a half-open connection.
//! - **Retry.** Transient failures (429, 5xx, a dropped connection, a
//!   deadline) are retried up to [`ATTEMPTS`] times in all, after a jittered
//!   exponential backoff, or after the server's `Retry-After` when it is
//!   longer. Anything else is returned at once: a 409 means the caller's view
//!   was stale and only the caller knows what to read again.
//! - **Cancellation.** The call is dropped the moment `cancel` fires (the
//!   pass's token: drain deadline, deleted source, lost leadership), retry
//!   waits included.
//! - **Liveness.** Every attempt that ends, with any result, is progress for
//!   the reconcile watchdog: an API server that fails is not a wedged loop.
//!
//! What a call *is* (which request, which object) stays with the caller;
//! the global write cap is taken per target by the writer, not per call, so
//! a recreate (delete then create) is never split by the drain.
//!
//! # What is retried
//!
//! Which API errors are worth retrying, and how long to wait first.
//!
//! 429 (the server's own rate limit or priority-and-fairness rejection) and
//! 5xx are transient by nature; so are a dropped connection and our own
//! write timeout. Retries back off exponentially with jitter, so many writers
//! that failed together do not retry in lockstep and hit the server together
//! again. 409 is not retried blindly: it means our view was stale, and the
//! writer re-reads the object and decides again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use kube_lifecycle::deadline::RequestTimedOut;
use kube_lifecycle::health::Watchdog;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::crd::Fanout;

/// Objects per page when a watch lists namespaces, copies or the objects of
/// a source namespace (kube's default is 500): a page is read whole, then
/// decoded whole, so at 500 Secrets the pages of the watches listing side
/// by side at start were the controller's peak memory; more, smaller pages
/// cost a few more requests, once per (re)list.
pub const LIST_PAGE: u32 = 100;
/// Objects per page when listing Fanouts, whose statuses can reach
/// ~200 kB each.
pub const FANOUT_PAGE: u32 = 20;

/// Attempts of one call, the first included.
pub const ATTEMPTS: u32 = 3;
/// The longest `Retry-After` honoured: a server asking for more is treated
/// as failing, and the next pass tries again.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// A call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The API server refused, failed, or did not answer in time (after retries).
    #[error("{operation} {object}")]
    Api {
        /// What was being done: `read`, `create`, `update`, ...
        operation: &'static str,
        /// The object, e.g. `secret team-a/regcred`.
        object: String,
        /// The last attempt's error.
        #[source]
        source: kube::Error,
    },
    /// The caller's token fired first.
    #[error("{operation} {object}: abandoned, the work was cancelled")]
    Cancelled {
        /// What was being done.
        operation: &'static str,
        /// The object.
        object: String,
    },
}

impl CallError {
    /// How the caller should treat it.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Api { source, .. } => classify(source),
            Self::Cancelled { .. } => ErrorClass::Permanent,
        }
    }

    /// Whether the last attempt ran out of time (rather than being refused).
    pub fn timed_out(&self) -> bool {
        matches!(self, Self::Api { source, .. } if is_timeout(source))
    }

    /// The HTTP status the API server answered with, if it answered.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            Self::Api {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }
}

/// Makes calls for one piece of work: cancelled by `cancel`, progress
/// reported to `watchdog`.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// The work's cancellation token.
    pub cancel: &'a CancellationToken,
    /// The reconcile loop's liveness watchdog.
    pub watchdog: &'a Watchdog,
}

impl Caller<'_> {
    /// Runs `request` (made afresh for every attempt) as the module
    /// documentation says. `object` names the object in errors.
    pub async fn call<T, F, Fut>(
        &self,
        operation: &'static str,
        object: &str,
        mut request: F,
    ) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let cancelled = || CallError::Cancelled {
            operation,
            object: object.to_owned(),
        };
        let mut attempt = 0;
        loop {
            let result = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Err(cancelled()),
                result = request() => result,
            };
            self.watchdog.progress();
            let source = match result {
                Ok(value) => return Ok(value),
                Err(source) => source,
            };
            attempt += 1;
            if attempt >= ATTEMPTS || classify(&source) != ErrorClass::Transient {
                return Err(CallError::Api {
                    operation,
                    object: object.to_owned(),
                    source,
                });
            }
            let pause = pause_before_retry(attempt - 1, &source);
            tracing::debug!(error = %source, attempt, ?pause, "{operation} {object} failed; retrying");
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Err(cancelled()),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// The wait before retry number `attempt` (0-based): the jittered backoff,
/// or the server's `Retry-After` when that is longer (up to a bound).
fn pause_before_retry(attempt: u32, error: &kube::Error) -> Duration {
    let backoff = backoff(attempt);
    match retry_after(error) {
        Some(asked) => backoff.max(asked.min(MAX_RETRY_AFTER)),
        None => backoff,
    }
}

/// The `Retry-After` a 429 (or 5xx) carried, from the Status body's
/// `details.retryAfterSeconds` (the API server sets both from one value).
fn retry_after(error: &kube::Error) -> Option<Duration> {
    match error {
        kube::Error::Api(status) => status
            .details
            .as_ref()
            .map(|details| details.retry_after_seconds)
            .filter(|seconds| *seconds > 0)
            .map(|seconds| Duration::from_secs(u64::from(seconds))),
        _ => None,
    }
}

/// Whether `error` is the client deadline running out.
pub fn is_timeout(error: &kube::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if error.is::<RequestTimedOut>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// How an API error should be handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The object changed under us (409 conflict/already exists, 404 on an
    /// update): read it again and decide again.
    Stale,
    /// Try again after a backoff (429, 5xx, connection trouble).
    Transient,
    /// Retrying will not help (403, 422, ...).
    Permanent,
}

/// Classifies an error from the kube client.
pub fn classify(error: &kube::Error) -> ErrorClass {
    match error {
        kube::Error::Api(status) => match status.code {
            404 | 409 => ErrorClass::Stale,
            429 | 500..=599 => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            ErrorClass::Transient
        }
        _ => ErrorClass::Permanent,
    }
}

/// Backoff before retry number `attempt` (0-based): exponential from 100 ms,
/// capped at 5 s, with "equal jitter" (uniform in the upper half).
pub fn backoff(attempt: u32) -> Duration {
    let ceiling = Duration::from_millis(100)
        .saturating_mul(1 << attempt.min(16))
        .min(Duration::from_secs(5));
    let half = ceiling / 2;
    half + rand::rng().random_range(Duration::ZERO..=half)
}

/// A delay of about `base`, jittered by ±20%, for requeues: many Fanouts
/// failing at once must not all come back at the same instant.
pub fn jittered(base: Duration) -> Duration {
    let spread = base / 5;
    base - spread + rand::rng().random_range(Duration::ZERO..=spread * 2)
}

/// Per-Fanout backoff after failed passes: the first retry comes after
/// about a second, each further one waits twice as long, up to a cap. A
/// Fanout whose API calls fail because the API server is down comes back
/// quickly once it is up, and a thousand failing Fanouts do not retry in
/// lockstep at full speed while it is down.
#[derive(Debug)]
pub struct Failures {
    counts: Mutex<HashMap<ObjectRef<Fanout>, u32>>,
    cap: Duration,
}

impl Failures {
    /// Backoffs that never exceed `cap`.
    pub fn new(cap: Duration) -> Self {
        Self {
            counts: Mutex::default(),
            cap,
        }
    }

    /// Records one more failure of `key`; returns how long to wait before
    /// the next pass (jittered).
    pub fn failed(&self, key: &ObjectRef<Fanout>) -> Duration {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(key.clone()).or_insert(0);
        let delay = Duration::from_secs(1)
            .saturating_mul(1 << (*count).min(16))
            .min(self.cap);
        *count = count.saturating_add(1);
        jittered(delay)
    }

    /// Forgets the failures of `key` (a pass succeeded, or it is gone).
    pub fn succeeded(&self, key: &ObjectRef<Fanout>) {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;
    use kube::core::response::StatusDetails;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn status(code: u16, retry_after: u32) -> kube::Error {
        let mut status = Status::failure("x", "y").with_code(code);
        let details: StatusDetails =
            serde_json::from_value(serde_json::json!({ "retryAfterSeconds": retry_after }))
                .unwrap();
        status.details = Some(details);
        kube::Error::Api(Box::new(status))
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_and_retry_after_is_honoured() {
        let health = kube_lifecycle::health::Health::new();
        let (cancel, watchdog) = (
            CancellationToken::new(),
            health.watchdog("w", Duration::MAX),
        );
        let caller = Caller {
            cancel: &cancel,
            watchdog: &watchdog,
        };
        let attempts = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let value = caller
            .call("read", "secret a/b", || {
                let n = attempts.fetch_add(1, Ordering::SeqCst);
                async move { if n == 0 { Err(status(429, 3)) } else { Ok(n) } }
            })
            .await
            .unwrap();
        assert_eq!(value, 1);
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "waited {:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_and_exhausted_retries_are_returned() {
        let health = kube_lifecycle::health::Health::new();
        let (cancel, watchdog) = (
            CancellationToken::new(),
            health.watchdog("w", Duration::MAX),
        );
        let caller = Caller {
            cancel: &cancel,
            watchdog: &watchdog,
        };
        let attempts = AtomicU32::new(0);
        let error = caller
            .call("update", "secret a/b", || {
                attempts.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(status(403, 0)) }
            })
            .await
            .unwrap_err();
        assert_eq!(
            (attempts.load(Ordering::SeqCst), error.status_code()),
            (1, Some(403))
        );
        attempts.store(0, Ordering::SeqCst);
        let error = caller
            .call("update", "secret a/b", || {
                attempts.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(status(503, 0)) }
            })
            .await
            .unwrap_err();
        assert_eq!(attempts.load(Ordering::SeqCst), ATTEMPTS);
        assert_eq!(error.to_string(), "update secret a/b");
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_ends_a_call_and_its_retry_wait() {
        let health = kube_lifecycle::health::Health::new();
        let cancel = CancellationToken::new();
        let watchdog = health.watchdog("w", Duration::MAX);
        let caller = Caller {
            cancel: &cancel,
            watchdog: &watchdog,
        };
        let call = caller.call("read", "secret a/b", || async {
            Err::<(), _>(status(429, 10))
        });
        let cancelling = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            cancel.cancel();
        };
        let (result, ()) = tokio::join!(call, cancelling);
        assert!(matches!(result, Err(CallError::Cancelled { .. })));
    }
}

#[cfg(test)]
mod retry_tests {
    use super::*;
    use kube::core::Status;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure("x", "y").with_code(code)))
    }

    #[test]
    fn errors_are_classified_by_status_code() {
        assert_eq!(classify(&api_error(409)), ErrorClass::Stale);
        assert_eq!(classify(&api_error(404)), ErrorClass::Stale);
        assert_eq!(classify(&api_error(429)), ErrorClass::Transient);
        assert_eq!(classify(&api_error(503)), ErrorClass::Transient);
        assert_eq!(classify(&api_error(403)), ErrorClass::Permanent);
        assert_eq!(classify(&api_error(422)), ErrorClass::Permanent);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        for attempt in 0..20 {
            let ceiling = Duration::from_millis(100 << attempt.min(6)).min(Duration::from_secs(5));
            let delay = backoff(attempt);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "attempt {attempt}: {delay:?}"
            );
        }
        let samples: std::collections::HashSet<_> = (0..20).map(|_| backoff(4)).collect();
        assert!(samples.len() > 1, "jitter varies the delay");
    }

    #[test]
    fn failures_back_off_from_a_second_to_the_cap_and_reset() {
        let failures = Failures::new(Duration::from_secs(10));
        let key = ObjectRef::new("f").within("ns");
        let delays: Vec<Duration> = (0..6).map(|_| failures.failed(&key)).collect();
        let within = |d: Duration, base: u64| {
            d >= Duration::from_secs(base) * 4 / 5 && d <= Duration::from_secs(base) * 6 / 5
        };
        for (delay, base) in delays.iter().zip([1, 2, 4, 8, 10, 10]) {
            assert!(within(*delay, base), "{delays:?}");
        }
        failures.succeeded(&key);
        assert!(within(failures.failed(&key), 1), "reset after a success");
    }

    #[test]
    fn jittered_stays_within_a_fifth() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(12));
        }
    }
}
