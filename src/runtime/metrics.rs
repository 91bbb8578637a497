//! The runtime's own Prometheus series: readiness, leadership, the shutdown
//! phase and drain duration, build info and the process' CPU, memory and fds.
//!
//! Everything is registered once, in [`RuntimeMetrics::register`], on the
//! registry that `/metrics` serves; controllers register theirs on the same
//! registry. No series carries a per-object label.

use prometheus::core::Collector;
use prometheus::{Gauge, IntGauge, IntGaugeVec, Opts, Registry};

use super::shutdown::Phase;

/// Handles to the runtime's series; cheap to clone.
#[derive(Clone, Debug)]
pub struct RuntimeMetrics {
    ready: IntGauge,
    leader: IntGauge,
    shutdown_phase: IntGaugeVec,
    drain_seconds: Gauge,
}

impl RuntimeMetrics {
    /// Registers the runtime's series (and the process collector) on `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            ready: IntGauge::new("fanout_ready", "1 while /readyz would answer 200, else 0.")?,
            leader: IntGauge::new(
                "fanout_leader",
                "1 while this process holds the leader lease, else 0.",
            )?,
            shutdown_phase: IntGaugeVec::new(
                Opts::new(
                    "fanout_shutdown_phase",
                    "1 for the lifecycle phase the process is in, 0 for the others.",
                ),
                &["phase"],
            )?,
            drain_seconds: Gauge::new(
                "fanout_drain_duration_seconds",
                "Seconds since the drain began, updated at each shutdown phase; 0 before a drain.",
            )?,
        };
        let build_info = IntGaugeVec::new(
            Opts::new(
                "fanout_build_info",
                "Build information; the value is always 1.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let collectors: [Box<dyn Collector>; 6] = [
            Box::new(metrics.ready.clone()),
            Box::new(metrics.leader.clone()),
            Box::new(metrics.shutdown_phase.clone()),
            Box::new(metrics.drain_seconds.clone()),
            Box::new(build_info),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for collector in collectors {
            registry.register(collector)?;
        }
        metrics.set_phase(Phase::Running, 0.0);
        Ok(metrics)
    }

    /// Records whether the process is ready (refreshed on every scrape).
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Records whether the process holds the leader lease.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
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
}
