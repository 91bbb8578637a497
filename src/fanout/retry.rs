//! Which API errors are worth retrying, and how long to wait first.
//!
//! 429 (the server's own rate limit or priority-and-fairness rejection) and
//! 5xx are transient by nature; so are a dropped connection and our own
//! write timeout. Retries back off exponentially with jitter, so many writers
//! that failed together do not retry in lockstep and hit the server together
//! again. 409 is not retried blindly: it means our view was stale, and the
//! writer re-reads the object and decides again.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use rand::Rng;

use super::crd::Fanout;

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
