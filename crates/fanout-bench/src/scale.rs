//! Section 12: start to ready and to converged at scale: many Fanouts, each
//! with its own source and an explicit list of many target namespaces
//! (spread over the target namespaces, so each holds many copies). First a
//! fresh controller converges them from nothing (created to all Synced: the
//! figure of a first install), then a fresh process starts with everything
//! converged (spawn to `/readyz` 200, to leader, to every Fanout reconciled:
//! the figure of a restart or an upgrade), with its peak RSS, its requests
//! from the audit log and its writes (none should be needed).

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use fanout::controller::READINESS_CHECKS;

use crate::audit;
use crate::bench::{Bench, wait_reconciled};
use crate::counters;
use crate::results::{ControllerDelta, ScaleResult, StartupRun};
use crate::world::{self, RUN_LABEL, SOURCE_NAMESPACE, target};

const RUN: &str = "scale";
const LEASE: &str = "bench-scale";
/// Pause after convergence before counting: trailing writes land.
const SETTLE: Duration = Duration::from_secs(3);

/// The whole section.
pub async fn run(bench: &Bench) -> Result<ScaleResult> {
    let shape = &bench.shape;
    let (fanouts, targets) = (shape.scale_fanouts, shape.scale_targets);
    let copies = fanouts * targets;
    let names: Vec<String> = (0..fanouts).map(|j| format!("fo-{RUN}-{j}")).collect();
    let sources = (0..fanouts)
        .map(|j| world::source_secret(&format!("src-{RUN}-{j}"), RUN))
        .collect();
    bench.cluster.create_secrets(sources).await?;
    let spread = shape.spread();
    let objects = (0..fanouts)
        .map(|j| {
            let namespaces: Vec<String> = (0..targets)
                .map(|k| target((j * targets + k) % spread))
                .collect();
            world::fanout(
                &names[j],
                RUN,
                &format!("src-{RUN}-{j}"),
                &format!("cp-{RUN}-{j}"),
                json!({ "namespaces": namespaces }),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let settle = SETTLE + Duration::from_millis(shape.status_interval_ms);

    // From nothing.
    let flags = shape.controller_flags(shape.limits());
    let (controller, identity) = bench.leader_with(RUN, LEASE, None, flags.clone()).await?;
    let counters_before = bench.counters(&controller).await?;
    let mark = bench.audit.mark()?;
    let started = std::time::Instant::now();
    bench.create_fanouts(objects).await?;
    let timeout = Duration::from_secs(300)
        + Duration::from_secs_f64(10.0 * copies as f64 / shape.limits().expected_rate());
    // Listing 1,000 Fanouts with their statuses every 2 s would load the API
    // server during the measurement: wait on the controller's own gauge first.
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        let metrics = controller.try_metrics().await?;
        let synced = metrics.sum_where("fanout_targets", |l| l.contains(r#"state="Synced""#));
        if synced.is_none_or(|s| s >= copies as f64) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bench.wait_all_synced(RUN, copies as u64, timeout).await?;
    let converge_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let to = Timestamp::now();
    let converge_controller =
        counters::since(&bench.counters(&controller).await?, &counters_before);
    let converge_peak_rss_kib = controller.peak_rss_kib()?;
    controller.try_stop().await?;
    let converge_audit = bench.audit.requests(&mark, to, &identity).await?;
    eprintln!(
        "scale: {fanouts} Fanouts x {targets} targets converged from nothing in {converge_seconds:.1}s, peak RSS {} KiB",
        converge_peak_rss_kib
    );

    // A restart with everything converged.
    let mark = bench.audit.mark()?;
    let (controller, identity) = bench.spawn_with(RUN, LEASE, None, flags).await?;
    let spawned = controller.spawned();
    let ready = controller
        .try_wait_ready(
            &READINESS_CHECKS,
            Duration::from_millis(5),
            Duration::from_secs(300),
        )
        .await?;
    let reconciled = wait_reconciled(&controller, fanouts, 0.0, timeout).await?;
    tokio::time::sleep(settle).await;
    let to = Timestamp::now();
    let restart_controller = counters::since(
        &bench.counters(&controller).await?,
        &ControllerDelta::default(),
    );
    let restart_peak_rss_kib = controller.peak_rss_kib()?;
    let restart_rss_kib = controller.rss_kib()?;
    controller.try_stop().await?;
    let restart_audit = bench.audit.requests(&mark, to, &identity).await?;
    let restart = StartupRun {
        to_ready_seconds: (ready.ready - spawned).as_secs_f64(),
        to_leader_seconds: (reconciled.led - spawned).as_secs_f64(),
        to_reconciled_seconds: (reconciled.at - spawned).as_secs_f64(),
        api_answering_to_ready_seconds: None,
        premature_200_seconds: (ready.first_200 < ready.ready)
            .then(|| (ready.first_200 - spawned).as_secs_f64()),
    };
    eprintln!(
        "scale restart: ready {:.2}s, leader {:.2}s, {} reconciles done {:.2}s after spawn, peak RSS {} KiB",
        restart.to_ready_seconds,
        restart.to_leader_seconds,
        reconciled.reconciles,
        restart.to_reconciled_seconds,
        restart_peak_rss_kib
    );

    bench.remove_fanouts(&names).await?;
    let mut namespaces: Vec<String> = (0..spread).map(target).collect();
    namespaces.push(SOURCE_NAMESPACE.to_owned());
    bench
        .cluster
        .delete_collection_labelled(&namespaces, &format!("{RUN_LABEL}={RUN}"))
        .await?;
    Ok(ScaleResult {
        fanouts,
        per_fanout: targets,
        converge_seconds,
        converge_peak_rss_kib,
        converge_audit,
        converge_controller,
        restart,
        restart_complete: reconciled.complete,
        restart_peak_rss_kib,
        restart_rss_kib,
        restart_writes: audit::writes(&restart_audit),
        restart_audit,
        restart_controller,
    })
}
