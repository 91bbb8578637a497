//! Section 9: the reconcile-all after a failover. The steady world's
//! converged leader is SIGKILLed (nothing released: the standby waits out
//! the Lease, as after a crash or a lost node); the standby, started
//! beforehand and settled, then reconciles every Fanout. Timed from the
//! signal to its leadership and to every Fanout reconciled (its
//! `fanout_reconciles_total`, skipped ones aside, up by the count; or its
//! queue drained). Its requests from the signal until a settling pause
//! after that come from the audit log (its user agent); writes should be
//! none: nothing changed.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k8s_openapi::jiff::Timestamp;
use nix::sys::signal::Signal;
use testkit::process::Controller;

use fanout::controller::READINESS_CHECKS;

use crate::audit;
use crate::bench::{Bench, reconciles_done, wait_reconciled};
use crate::counters;
use crate::results::FailoverResult;
use crate::steady::{LEASE, RUN, Steady};

/// The standby's start-up settles before the kill.
const SETTLE: Duration = Duration::from_secs(3);
/// Pause after the reconcile-all before counting: trailing writes land.
const AFTER: Duration = Duration::from_secs(3);

/// Kills `steady`'s leader; returns the result and the new leader.
pub async fn run(bench: &Bench, steady: Steady) -> Result<(FailoverResult, Controller)> {
    let flags = bench.shape.controller_flags(bench.shape.limits());
    let (standby, identity) = bench.spawn_with(RUN, LEASE, None, flags).await?;
    standby
        .try_wait_ready(
            &READINESS_CHECKS,
            Duration::from_millis(20),
            Duration::from_secs(120),
        )
        .await?;
    tokio::time::sleep(SETTLE).await;
    let metrics = standby.try_metrics().await?;
    if metrics.leader() {
        bail!("the standby leads before the failover");
    }
    let done_before = reconciles_done(&metrics);
    let counters_before = counters::read(&metrics);
    let mark = bench.audit.mark()?;

    let signalled = Instant::now();
    steady.leader.try_signal(Signal::SIGKILL)?;
    let timeout = Duration::from_secs(60)
        + Duration::from_secs_f64(20.0 * steady.fanouts as f64 / f64::from(bench.shape.kube_qps));
    let reconciled = wait_reconciled(&standby, steady.fanouts, done_before, timeout).await?;
    tokio::time::sleep(AFTER + Duration::from_millis(bench.shape.status_interval_ms)).await;
    let to = Timestamp::now();
    let counters_after = bench.counters(&standby).await?;
    drop(steady.leader);
    let requests = bench.audit.requests(&mark, to, &identity).await?;
    let result = FailoverResult {
        fanouts: steady.fanouts,
        signal: "SIGKILL".into(),
        to_leader_seconds: (reconciled.led - signalled).as_secs_f64(),
        to_reconciled_seconds: (reconciled.at - signalled).as_secs_f64(),
        leader_to_reconciled_seconds: (reconciled.at - reconciled.led).as_secs_f64(),
        complete: reconciled.complete,
        reconciles: reconciled.reconciles,
        writes: audit::writes(&requests),
        audit: requests,
        controller: counters::since(&counters_after, &counters_before),
        peak_rss_kib: standby.peak_rss_kib()?,
    };
    eprintln!(
        "failover: leader after {:.2}s, {} reconciles {:.2}s later, {} writes (audit), {} target writes (metrics)",
        result.to_leader_seconds,
        result.reconciles,
        result.leader_to_reconciled_seconds,
        audit::total(&result.writes, |_| true),
        result.controller.writes()
    );
    Ok((result, standby))
}
