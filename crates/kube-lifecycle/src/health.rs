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
//! - **Liveness** — "restart me": fails only when a loop is wedged: a
//!   [`Heartbeat`] has gone silent for longer than its allowance (a timer
//!   loop that stopped turning), or a [`Watchdog`] has work in flight that has
//!   made no progress for longer than its allowance (a reconcile loop stuck
//!   on something that never completes). It passes whenever a drain has
//!   begun, so kubelet does not kill a pod that is shutting down on purpose,
//!   and it never depends on the API server: a request that fails is
//!   progress too.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Shared health state; cheap to clone, every clone sees the same state.
#[derive(Clone, Debug, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// When the drain began, once it has.
    drain_started: OnceLock<Instant>,
    checks: Mutex<BTreeMap<&'static str, Arc<AtomicBool>>>,
    liveness: Mutex<BTreeMap<&'static str, LivenessCheck>>,
}

/// What a liveness check watches.
#[derive(Clone, Debug)]
enum LivenessCheck {
    Heartbeat(Arc<HeartbeatState>),
    Watchdog(Arc<WatchdogState>),
}

#[derive(Debug)]
struct HeartbeatState {
    last: Mutex<Instant>,
    max_silence: Duration,
}

#[derive(Debug)]
struct WatchdogState {
    in_flight: AtomicUsize,
    last_progress: Mutex<Instant>,
    allowance: Duration,
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

/// A liveness check for a loop that works in bursts (a reconcile loop):
/// it fails only while work is in flight and none of it has progressed for
/// longer than the allowance. An idle loop is alive, however long it idles.
///
/// The loop holds a [`Busy`] guard per unit of work and calls
/// [`Watchdog::progress`] whenever something finishes (an API call, with
/// any result); what counts is that *something* moves, so work waiting its
/// turn behind other work that moves is not a wedge.
#[derive(Clone, Debug)]
pub struct Watchdog {
    state: Arc<WatchdogState>,
}

/// One unit of work in flight for a [`Watchdog`]; ends when dropped.
#[derive(Debug)]
#[must_use = "the work counts as in flight only while the guard lives"]
pub struct Busy {
    state: Arc<WatchdogState>,
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
        lock(&self.inner.liveness).insert(name, LivenessCheck::Heartbeat(state.clone()));
        Heartbeat { state }
    }

    /// Registers a [`Watchdog`] named `name` that fails `/livez` when work
    /// in flight makes no progress for longer than `allowance`.
    pub fn watchdog(&self, name: &'static str, allowance: Duration) -> Watchdog {
        let state = Arc::new(WatchdogState {
            in_flight: AtomicUsize::new(0),
            last_progress: Mutex::new(Instant::now()),
            allowance,
        });
        lock(&self.inner.liveness).insert(name, LivenessCheck::Watchdog(state.clone()));
        Watchdog { state }
    }

    /// Marks the process as draining: readiness fails from now on, for
    /// good. Returns whether this call began it (only the first does).
    pub fn begin_drain(&self) -> bool {
        self.inner.drain_started.set(Instant::now()).is_ok()
    }

    /// Whether a drain has begun.
    pub fn is_draining(&self) -> bool {
        self.inner.drain_started.get().is_some()
    }

    /// Time since the drain began, if it has.
    pub fn drain_elapsed(&self) -> Option<Duration> {
        self.inner.drain_started.get().map(Instant::elapsed)
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

    /// Evaluates liveness: every heartbeat beat within its allowance and
    /// every watchdog's work moved within its own. Once a drain has begun
    /// every check passes: the process is stopping on purpose.
    pub fn liveness(&self) -> Report {
        let now = Instant::now();
        let draining = self.is_draining();
        let checks: Vec<CheckResult> = lock(&self.inner.liveness)
            .iter()
            .map(|(name, check)| CheckResult {
                name: (*name).to_owned(),
                ok: draining || check.alive(now),
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

impl LivenessCheck {
    fn alive(&self, now: Instant) -> bool {
        match self {
            Self::Heartbeat(hb) => now.saturating_duration_since(*lock(&hb.last)) <= hb.max_silence,
            Self::Watchdog(dog) => {
                dog.in_flight.load(Ordering::SeqCst) == 0
                    || now.saturating_duration_since(*lock(&dog.last_progress)) <= dog.allowance
            }
        }
    }
}

impl Watchdog {
    /// Marks one unit of work in flight until the guard is dropped. Starting
    /// work from idle counts as progress: the idle time before it does not.
    pub fn busy(&self) -> Busy {
        if self.state.in_flight.fetch_add(1, Ordering::SeqCst) == 0 {
            self.progress();
        }
        Busy {
            state: self.state.clone(),
        }
    }

    /// Records that work in flight moved just now.
    pub fn progress(&self) {
        *lock(&self.state.last_progress) = Instant::now();
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
        // Finishing is progress for whatever is still in flight.
        *lock(&self.state.last_progress) = Instant::now();
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
    async fn a_watchdog_fails_only_for_work_in_flight_that_stopped_moving() {
        let health = Health::new();
        let dog = health.watchdog("reconciles", Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(health.liveness().ok, "idle for an hour is alive");
        let stuck = dog.busy();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(health.liveness().ok);
        let other = dog.busy();
        dog.progress();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(health.liveness().ok, "progress by any work counts");
        drop(other);
        tokio::time::advance(Duration::from_secs(61)).await;
        let report = health.liveness();
        assert!(!report.ok, "work in flight, nothing moved for 61s");
        assert_eq!(
            report.checks,
            [CheckResult {
                name: "reconciles".into(),
                ok: false
            }]
        );
        health.begin_drain();
        assert!(health.liveness().ok, "never during a drain");
        drop(stuck);
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_fails_only_when_a_heartbeat_goes_silent() {
        let health = Health::new();
        let hb = health.heartbeat("loop", Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(health.liveness().ok);
        hb.beat();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(health.liveness().ok);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!health.liveness().ok, "11s of silence > 10s allowance");
        hb.beat();
        assert!(health.liveness().ok);
        tokio::time::advance(Duration::from_secs(11)).await;
        health.begin_drain();
        assert!(health.liveness().ok, "a drain never fails liveness");
    }
}
