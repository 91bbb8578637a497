//! Readiness checks, the drain flag and liveness heartbeats: the state behind
//! `/readyz` and `/livez`.
//!
//! The two probes answer different questions, and conflating them is what
//! makes pods flap or deadlock during rollouts:
//!
//! - **Readiness** — "send me work": every registered check passes *and* no
//!   drain has begun. It never depends on holding the leader lease: a warm
//!   standby is ready, otherwise a `maxUnavailable: 0` rollout could never
//!   make progress. The drain flag flips it to 503 the instant a shutdown
//!   begins, before anything else happens.
//! - **Liveness** — "restart me": fails only when a heartbeat has gone silent
//!   for longer than its allowance, i.e. a loop is wedged. It stays 200 during
//!   a drain, so kubelet does not kill a pod that is shutting down on purpose.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Shared health state; cheap to clone, every clone sees the same state.
#[derive(Clone, Debug, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    draining: AtomicBool,
    checks: Mutex<BTreeMap<&'static str, Arc<AtomicBool>>>,
    heartbeats: Mutex<BTreeMap<&'static str, Arc<HeartbeatState>>>,
}

#[derive(Debug)]
struct HeartbeatState {
    last: Mutex<Instant>,
    max_silence: Duration,
}

/// A named readiness condition owned by one component; starts failing.
#[derive(Clone, Debug)]
pub struct ReadinessCheck {
    ready: Arc<AtomicBool>,
}

/// A liveness heartbeat owned by one loop; the loop calls [`Heartbeat::beat`]
/// every time round, and `/livez` fails once it stays silent too long.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    state: Arc<HeartbeatState>,
}

/// One line of `/readyz?verbose` or `/livez?verbose`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// The check's name, e.g. `caches-synced`.
    pub name: String,
    /// Whether it passes.
    pub ok: bool,
}

/// The outcome of evaluating a probe: the verdict and each check behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Whether the probe passes as a whole.
    pub ok: bool,
    /// Every check, in a stable (alphabetical) order.
    pub checks: Vec<CheckResult>,
}

impl Health {
    /// Fresh state: not draining, no checks, no heartbeats.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a readiness check named `name`, initially failing.
    ///
    /// Registering the same name twice returns the same check, so a component
    /// restarted in-process does not leave a stale duplicate behind.
    pub fn readiness_check(&self, name: &'static str) -> ReadinessCheck {
        let ready = lock(&self.inner.checks)
            .entry(name)
            .or_insert_with(|| Arc::new(AtomicBool::new(false)))
            .clone();
        ReadinessCheck { ready }
    }

    /// Registers a liveness heartbeat that fails `/livez` when silent for
    /// longer than `max_silence`. It counts as having just beaten.
    pub fn heartbeat(&self, name: &'static str, max_silence: Duration) -> Heartbeat {
        let state = Arc::new(HeartbeatState {
            last: Mutex::new(Instant::now()),
            max_silence,
        });
        lock(&self.inner.heartbeats).insert(name, state.clone());
        Heartbeat { state }
    }

    /// Marks the process as draining: readiness fails from now on, for good.
    pub fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// Whether a drain has begun.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Evaluates readiness: all checks pass and no drain has begun.
    pub fn readiness(&self) -> Report {
        let mut checks: Vec<CheckResult> = lock(&self.inner.checks)
            .iter()
            .map(|(name, ready)| CheckResult {
                name: (*name).to_owned(),
                ok: ready.load(Ordering::SeqCst),
            })
            .collect();
        checks.push(CheckResult {
            name: "not-draining".to_owned(),
            ok: !self.is_draining(),
        });
        Report {
            ok: checks.iter().all(|c| c.ok),
            checks,
        }
    }

    /// Evaluates liveness: every heartbeat beat within its allowance.
    /// Draining does not affect it.
    pub fn liveness(&self) -> Report {
        let now = Instant::now();
        let checks: Vec<CheckResult> = lock(&self.inner.heartbeats)
            .iter()
            .map(|(name, hb)| CheckResult {
                name: (*name).to_owned(),
                ok: now.saturating_duration_since(*lock(&hb.last)) <= hb.max_silence,
            })
            .collect();
        Report {
            ok: checks.iter().all(|c| c.ok),
            checks,
        }
    }
}

impl ReadinessCheck {
    /// Sets whether this check passes.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
}

impl Heartbeat {
    /// Records that the owning loop made progress just now.
    pub fn beat(&self) {
        *lock(&self.state.last) = Instant::now();
    }
}

/// Locks a mutex, recovering from poisoning: the guarded data are plain flags
/// and timestamps that a panicking holder cannot leave half-updated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_check_and_no_drain() {
        let health = Health::new();
        let crd = health.readiness_check("crd-served");
        let caches = health.readiness_check("caches-synced");
        assert!(!health.readiness().ok, "checks start failing");
        crd.set_ready(true);
        assert!(!health.readiness().ok, "one check still fails");
        caches.set_ready(true);
        assert!(health.readiness().ok);
        health.begin_drain();
        let report = health.readiness();
        assert!(!report.ok, "a drain turns readiness off");
        assert!(report.checks.contains(&CheckResult {
            name: "not-draining".into(),
            ok: false
        }));
    }

    #[test]
    fn registering_a_name_twice_shares_the_check() {
        let health = Health::new();
        health.readiness_check("x").set_ready(true);
        assert!(health.readiness_check("x").ready.load(Ordering::SeqCst));
        assert_eq!(health.readiness().checks.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_fails_only_when_a_heartbeat_goes_silent() {
        let health = Health::new();
        let hb = health.heartbeat("loop", Duration::from_secs(10));
        health.begin_drain();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(health.liveness().ok, "draining does not fail liveness");
        hb.beat();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(health.liveness().ok);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!health.liveness().ok, "11s of silence > 10s allowance");
        hb.beat();
        assert!(health.liveness().ok);
    }
}
