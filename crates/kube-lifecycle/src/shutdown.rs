//! Signals → drain → deadline: the process' shutdown sequence.
//!
//! The order is written down once, here, and [`crate::Builder::run`]
//! carries it out:
//!
//! 1. First SIGTERM or SIGINT: readiness turns 503 at once ([`Phase::Draining`])
//!    and the `drain` token fires, so no new reconcile starts, the queue stops
//!    dispatching and batches stop launching items. In-flight writes finish,
//!    each bounded by its own timeout.
//! 2. The controller writes a final ordered status for every interrupted
//!    object and returns ([`Phase::WorkDrained`]).
//! 3. The leader lease is released so a successor takes over at once
//!    ([`Phase::LeaseReleased`]).
//! 4. The admin server stops last ([`Phase::AdminStopped`]); exit code 0.
//!
//! If the drain outlives `--shutdown-timeout` (kept under the pod's grace
//! period), the `abort` token fires ([`Phase::Aborted`]): what is still running
//! is dropped and named in the log, and the exit code is 1. A second signal
//! exits at once with [`SECOND_SIGNAL_EXIT_CODE`]: the operator asked twice.

use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::health::Health;
use super::metrics::RuntimeMetrics;

/// Exit code when a second signal forces the exit (128 + SIGINT, as shells do).
pub const SECOND_SIGNAL_EXIT_CODE: i32 = 130;

/// A step of the process' lifecycle, logged and exported as a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Serving and reconciling.
    Running,
    /// A signal arrived: readiness is off, intake has stopped.
    Draining,
    /// In-flight work finished and final statuses are written.
    WorkDrained,
    /// The leader lease was released for a successor.
    LeaseReleased,
    /// The admin server has stopped; the process is about to exit.
    AdminStopped,
    /// The drain deadline passed; remaining work was abandoned.
    Aborted,
}

impl Phase {
    /// Every phase, for exporting a one-hot gauge.
    pub const ALL: [Phase; 6] = [
        Phase::Running,
        Phase::Draining,
        Phase::WorkDrained,
        Phase::LeaseReleased,
        Phase::AdminStopped,
        Phase::Aborted,
    ];

    /// The phase's name in logs and the `phase` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Draining => "draining",
            Phase::WorkDrained => "work_drained",
            Phase::LeaseReleased => "lease_released",
            Phase::AdminStopped => "admin_stopped",
            Phase::Aborted => "aborted",
        }
    }
}

/// The shutdown state shared by every component; cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown {
    drain: CancellationToken,
    abort: CancellationToken,
    health: Health,
    metrics: RuntimeMetrics,
}

impl Shutdown {
    /// A shutdown that has not begun.
    pub fn new(health: Health, metrics: RuntimeMetrics) -> Self {
        Self {
            drain: CancellationToken::new(),
            abort: CancellationToken::new(),
            health,
            metrics,
        }
    }

    /// Fires when the drain begins: stop taking new work.
    pub fn drain_token(&self) -> CancellationToken {
        self.drain.clone()
    }

    /// Fires when the drain deadline passes: drop in-flight work now.
    pub fn abort_token(&self) -> CancellationToken {
        self.abort.clone()
    }

    /// Whether the deadline passed and work was abandoned.
    pub fn aborted(&self) -> bool {
        self.abort.is_cancelled()
    }

    /// Begins the drain: readiness off first (so traffic and the rollout see
    /// it before anything else), then the drain token. Idempotent.
    pub fn begin_drain(&self, reason: &str) {
        if !self.health.begin_drain() {
            return;
        }
        self.drain.cancel();
        self.enter(Phase::Draining);
        info!(
            reason,
            "drain started: readiness is off, no new work starts"
        );
    }

    /// Records and logs that the process entered `phase`.
    pub fn enter(&self, phase: Phase) {
        let elapsed = self.elapsed().as_secs_f64();
        self.metrics.set_phase(phase, elapsed);
        info!(
            phase = phase.as_str(),
            drain_seconds = elapsed,
            "shutdown phase"
        );
    }

    /// Time since the drain began (zero before it).
    pub fn elapsed(&self) -> Duration {
        self.health.drain_elapsed().unwrap_or(Duration::ZERO)
    }

    /// Fires the abort token once `timeout` has passed since the drain began.
    async fn enforce_deadline(&self, timeout: Duration) {
        tokio::time::sleep(timeout.saturating_sub(self.elapsed())).await;
        self.abort.cancel();
        self.enter(Phase::Aborted);
        warn!(
            timeout_seconds = timeout.as_secs_f64(),
            "drain deadline passed: abandoning the work still running"
        );
    }
}

/// Errors installing the signal handlers.
#[derive(Debug, thiserror::Error)]
#[error("cannot install a handler for {signal}")]
pub struct SignalError {
    signal: &'static str,
    #[source]
    source: std::io::Error,
}

/// SIGTERM (kubelet, `kill`) and SIGINT (Ctrl-C), received as one stream.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> Result<Self, SignalError> {
        let install = |kind: SignalKind, name| {
            signal(kind).map_err(|source| SignalError {
                signal: name,
                source,
            })
        };
        Ok(Self {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Installs the SIGTERM/SIGINT handlers now (so a signal that arrives during
/// start-up is not lost to the default action) and spawns the task that turns
/// signals into the drain: the first begins it and arms the deadline, a
/// second exits the process at once.
pub fn spawn_signal_handler(
    shutdown: Shutdown,
    timeout: Duration,
) -> Result<JoinHandle<()>, SignalError> {
    let mut signals = Signals::install()?;
    Ok(tokio::spawn(async move {
        let first = signals.next().await;
        shutdown.begin_drain(first);
        let deadline = shutdown.enforce_deadline(timeout);
        tokio::pin!(deadline);
        let mut deadline_passed = false;
        let second = loop {
            tokio::select! {
                second = signals.next() => break second,
                () = &mut deadline, if !deadline_passed => deadline_passed = true,
            }
        };
        error!(
            signal = second,
            "second signal: exiting now without finishing the drain"
        );
        std::process::exit(SECOND_SIGNAL_EXIT_CODE);
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Registry;

    fn shutdown() -> (Shutdown, Health, Registry) {
        let registry = Registry::new();
        let health = Health::new();
        let metrics = RuntimeMetrics::register(&registry, "test", "0.0.0").unwrap();
        (Shutdown::new(health.clone(), metrics), health, registry)
    }

    fn phase_gauge(registry: &Registry, phase: &str) -> f64 {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == "test_shutdown_phase")
            .and_then(|f| {
                f.get_metric()
                    .iter()
                    .find(|m| m.get_label().iter().any(|l| l.value() == phase))
                    .map(|m| m.get_gauge().get_value())
            })
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn drain_turns_readiness_off_before_the_token_and_only_once() {
        let (shutdown, health, registry) = shutdown();
        let drain = shutdown.drain_token();
        assert!(!drain.is_cancelled());
        shutdown.begin_drain("test");
        assert!(health.is_draining());
        assert!(drain.is_cancelled());
        assert_eq!(phase_gauge(&registry, "draining"), 1.0);
        assert_eq!(phase_gauge(&registry, "running"), 0.0);
        tokio::time::advance(Duration::from_secs(3)).await;
        shutdown.begin_drain("again");
        assert_eq!(shutdown.elapsed(), Duration::from_secs(3), "start kept");
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_fires_abort_after_the_timeout_from_drain_start() {
        let (shutdown, _, registry) = shutdown();
        shutdown.begin_drain("test");
        tokio::time::advance(Duration::from_secs(2)).await;
        let task = tokio::spawn({
            let s = shutdown.clone();
            async move { s.enforce_deadline(Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(2_900)).await;
        assert!(!shutdown.aborted(), "4.9s after the drain began");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(shutdown.aborted(), "5.1s after the drain began");
        task.await.unwrap();
        assert_eq!(phase_gauge(&registry, "aborted"), 1.0);
    }
}
