//! The runtime's own Prometheus series: readiness, leadership, the shutdown
//! phase and drain, the API requests the clients made, build info and the
//! process' CPU, memory and fds.
//!
//! Every name starts with the prefix the controller chose
//! ([`crate::Builder::new`]), so two controllers built on this runtime never
//! export the same series. Everything is registered once, in
//! [`RuntimeMetrics::register`], on the registry that `/metrics` serves;
//! controllers register theirs on the same registry. No series carries a
//! per-object label.

use prometheus::core::Collector;
use prometheus::{
    Counter, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::health::Health;
use super::shutdown::Phase;

/// Handles to the runtime's series; cheap to clone.
#[derive(Clone, Debug)]
pub struct RuntimeMetrics {
    ready: IntGauge,
    leader: IntGauge,
    leader_transitions: IntCounter,
    shutdown_phase: IntGaugeVec,
    drain_seconds: Gauge,
    shutdown_timeout: Gauge,
    api_requests: IntCounterVec,
    rate_limit_wait: Counter,
}

impl RuntimeMetrics {
    /// Registers the runtime's series, named `{prefix}_...`, and the process
    /// collector on `registry`. `version` is the controller's, for
    /// `{prefix}_build_info`.
    pub fn register(
        registry: &Registry,
        prefix: &str,
        version: &str,
    ) -> Result<Self, prometheus::Error> {
        let name = |suffix: &str| format!("{prefix}_{suffix}");
        let metrics = Self {
            ready: IntGauge::new(name("ready"), "1 while /readyz would answer 200, else 0.")?,
            leader: IntGauge::new(
                name("leader"),
                "1 while this process holds the leader lease, else 0.",
            )?,
            leader_transitions: IntCounter::new(
                name("leader_transitions_total"),
                "Times this process gained or lost the leader lease.",
            )?,
            shutdown_phase: IntGaugeVec::new(
                Opts::new(
                    name("shutdown_phase"),
                    "1 for the lifecycle phase the process is in, 0 for the others.",
                ),
                &["phase"],
            )?,
            drain_seconds: Gauge::new(
                name("drain_duration_seconds"),
                "Seconds since the drain began (updated at every scrape while it runs); 0 before a drain.",
            )?,
            shutdown_timeout: Gauge::new(
                name("shutdown_timeout_seconds"),
                "The drain deadline: past it, remaining work is abandoned.",
            )?,
            api_requests: IntCounterVec::new(
                Opts::new(
                    name("api_requests_total"),
                    "Kubernetes API requests made, watches included, by method and answer (2xx, 3xx, 4xx, 409, 429, 5xx, or error when none came).",
                ),
                &["method", "code"],
            )?,
            rate_limit_wait: Counter::new(
                name("client_rate_limit_wait_seconds_total"),
                "Seconds API requests spent waiting for the client-side rate limit.",
            )?,
        };
        let build_info = IntGaugeVec::new(
            Opts::new(
                name("build_info"),
                "Build information; the value is always 1.",
            ),
            &["version"],
        )?;
        build_info.with_label_values(&[version]).set(1);
        let collectors: [Box<dyn Collector>; 10] = [
            Box::new(metrics.ready.clone()),
            Box::new(metrics.leader.clone()),
            Box::new(metrics.leader_transitions.clone()),
            Box::new(metrics.shutdown_phase.clone()),
            Box::new(metrics.drain_seconds.clone()),
            Box::new(metrics.shutdown_timeout.clone()),
            Box::new(metrics.api_requests.clone()),
            Box::new(metrics.rate_limit_wait.clone()),
            Box::new(build_info),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for collector in collectors {
            registry.register(collector)?;
        }
        metrics.set_phase(Phase::Running, 0.0);
        Ok(metrics)
    }

    /// Refreshes what is read at scrape time: readiness, and the drain's
    /// elapsed time while one runs.
    pub fn refresh(&self, health: &Health) {
        self.ready.set(i64::from(health.readiness().ok));
        if let Some(elapsed) = health.drain_elapsed() {
            self.drain_seconds.set(elapsed.as_secs_f64());
        }
    }

    /// Records whether the process holds the leader lease, counting changes.
    pub fn set_leader(&self, leader: bool) {
        if self.leader.get() != i64::from(leader) {
            self.leader_transitions.inc();
        }
        self.leader.set(i64::from(leader));
    }

    /// Records the drain deadline.
    pub fn set_shutdown_timeout(&self, seconds: f64) {
        self.shutdown_timeout.set(seconds);
    }

    /// Marks `phase` as the current one and records the drain's elapsed time.
    pub fn set_phase(&self, phase: Phase, drain_seconds: f64) {
        for other in Phase::ALL {
            self.shutdown_phase
                .with_label_values(&[other.as_str()])
                .set(i64::from(other == phase));
        }
        self.drain_seconds.set(drain_seconds);
    }

    /// Counts one API request by its method and answer (see
    /// [`crate::client`]).
    pub fn api_request(&self, method: &str, code: &str) {
        self.api_requests.with_label_values(&[method, code]).inc();
    }

    /// The counter of seconds spent waiting for the client-side rate limit.
    pub fn rate_limit_wait(&self) -> Counter {
        self.rate_limit_wait.clone()
    }
}
