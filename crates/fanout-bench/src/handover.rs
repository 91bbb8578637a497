//! Section 6: two processes on one Lease. The leader gets SIGTERM (its
//! drain releases the Lease); timed from the signal to the standby's
//! `fanout_leader` 1 and to its first reconcile that did work (every
//! Fanout is reconciled when leadership is gained). Each repeat starts a
//! new standby behind the previous winner.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use nix::sys::signal::Signal;
use serde_json::json;

use fanout::controller::READINESS_CHECKS;

use crate::bench::{Bench, reconciles_done};
use crate::results::HandoverRun;
use crate::world::{self, target};

const RUN: &str = "handover";
const LEASE: &str = "bench-handover";
/// Scrape period of the standby's metrics while timing.
const POLL: Duration = Duration::from_millis(2);

/// Converges a few Fanouts, then hands over `repeats` times.
pub async fn run(bench: &Bench) -> Result<Vec<HandoverRun>> {
    let count = bench.shape.handover_fanouts;
    let names: Vec<String> = (0..count).map(|j| format!("fo-{RUN}-{j}")).collect();
    let sources = (0..count)
        .map(|j| world::source_secret(&format!("src-{RUN}-{j}"), RUN))
        .collect();
    bench.cluster.create_secrets(sources).await?;
    let mut leader = bench.leader(RUN, LEASE).await?;
    let fanouts = (0..count)
        .map(|j| {
            world::fanout(
                &names[j],
                RUN,
                &format!("src-{RUN}-{j}"),
                &format!("cp-{RUN}"),
                json!({"namespaces": [target(j)]}),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    bench.create_fanouts(fanouts).await?;
    bench
        .wait_all_synced(RUN, count as u64, Duration::from_secs(120))
        .await?;

    let mut runs = Vec::new();
    for _ in 0..bench.shape.repeats {
        let standby = bench.spawn(RUN, LEASE, None).await?;
        standby
            .try_wait_ready(
                &READINESS_CHECKS,
                Duration::from_millis(20),
                Duration::from_secs(60),
            )
            .await?;
        // Let the standby's start-up (skipped reconciles) settle.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let metrics = standby.try_metrics().await?;
        if metrics.get("fanout_leader") != Some(0.0) {
            bail!("the standby leads before the handover");
        }
        let done_before = reconciles_done(&metrics);

        let signalled = Instant::now();
        leader.try_signal(Signal::SIGTERM)?;
        let (mut exited, mut led, mut reconciled) = (None, None, None);
        let deadline = signalled + Duration::from_secs(60);
        while exited.is_none() || reconciled.is_none() {
            if exited.is_none() && leader.try_exit_status()?.is_some() {
                exited = Some(Instant::now());
            }
            let metrics = standby.try_metrics().await?;
            let now = Instant::now();
            if led.is_none() && metrics.leader() {
                led = Some(now);
            }
            if reconciled.is_none() && reconciles_done(&metrics) > done_before {
                reconciled = Some(now);
            }
            if now > deadline {
                bail!(
                    "no handover within a minute; log {}",
                    standby.log_path().display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        let since = |t: Option<Instant>| t.map_or(f64::NAN, |t| (t - signalled).as_secs_f64());
        let run = HandoverRun {
            leader_exit_seconds: since(exited),
            to_leader_seconds: since(led),
            to_first_reconcile_seconds: since(reconciled),
        };
        eprintln!(
            "handover: leader exited {:.3}s, standby leader {:.3}s, first reconcile {:.3}s after SIGTERM",
            run.leader_exit_seconds, run.to_leader_seconds, run.to_first_reconcile_seconds
        );
        runs.push(run);
        leader = standby;
    }
    leader.try_stop().await?;
    world::clean_up(&bench.cluster, RUN, &names).await?;
    Ok(runs)
}
