//! The real `fanout` binary, as a child process, against a real API server:
//! probes, the SIGTERM drain and its deadline, a second signal, leader
//! handover, faults of the API server (a fault proxy, and the real
//! kube-apiserver frozen, killed and restarted), a drain under load,
//! Prometheus scraping it, the chart's alerts reaching a real Alertmanager,
//! the dashboard's queries, and what `kubectl wait` and `kubectl explain`
//! make of a Fanout. Every process runs as the chart's own
//! ServiceAccount unless a test says otherwise.

mod alerting;
mod dashboard;
mod drain;
mod faults;
mod kubectl;
mod lifecycle;
mod prometheus;

use testkit::process::Binary;

/// The `fanout` binary this crate builds.
pub fn fanout() -> Binary {
    Binary {
        path: env!("CARGO_BIN_EXE_fanout").into(),
        metrics_prefix: fanout::app::METRICS_PREFIX,
    }
}
