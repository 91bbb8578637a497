//! Section 8: what a converged controller asks of the API server when
//! nothing changes. The leader of the steady world (many Fanouts, each a
//! few targets, all Synced) is left alone for a settling pause, then for the
//! measured window ([`crate::quiet`]): ideally only its Lease renewals.

use std::time::Duration;

use anyhow::Result;

use crate::bench::Bench;
use crate::quiet;
use crate::results::IdleResult;
use crate::steady::Steady;

/// Pause between convergence and the window: trailing status writes land.
const SETTLE: Duration = Duration::from_secs(5);

/// Measures the idle window of `steady`'s leader.
pub async fn run(bench: &Bench, steady: &Steady) -> Result<IdleResult> {
    tokio::time::sleep(SETTLE + Duration::from_millis(bench.shape.status_interval_ms)).await;
    let length = Duration::from_secs(bench.shape.idle_window_seconds);
    let window = quiet::measure(bench, &steady.leader, &steady.identity, length).await?;
    let result = IdleResult {
        fanouts: steady.fanouts,
        targets_per_fanout: steady.targets,
        converge_seconds: steady.converge_seconds,
        rss_kib: steady.leader.rss_kib()?,
        window,
    };
    let audited: u64 = result.window.audit.iter().map(|r| r.count).sum();
    eprintln!(
        "idle: {} requests in {:.0}s by the controller's own count, {audited} in the audit log, {:.2}s of its CPU",
        result.window.controller.requests(),
        result.window.seconds,
        result.window.controller_cpu_seconds
    );
    Ok(result)
}
