//! Section 5: SIGTERM in the middle of a fan-out. Timed from the signal to
//! the process's exit; then the Fanout's final status (written by the
//! drain: finished targets with their result, the rest Pending) and the
//! copies that really exist are counted.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use fanout::Fanout;
use kube::Api;
use nix::sys::signal::Signal;

use crate::bench::Bench;
use crate::observer::Observer;
use crate::results::DrainRun;
use crate::world::{self, RUN_LABEL, SOURCE_NAMESPACE, first};

/// Every repeat; `fan_out_seconds` (the median time of this size in
/// section 1, if measured) places the signal half-way.
pub async fn run(bench: &Bench, fan_out_seconds: Option<f64>) -> Result<Vec<DrainRun>> {
    let n = bench.shape.drain_size;
    let expected = fan_out_seconds.unwrap_or(n as f64 / f64::from(bench.shape.kube_qps));
    let signal_after = Duration::from_secs_f64((expected / 2.0).max(0.5));
    let mut runs = Vec::new();
    for repeat in 0..bench.shape.repeats {
        let run = once(bench, n, repeat, signal_after).await?;
        eprintln!(
            "drain n={n}: SIGTERM after {:.2}s, exit {:?} after {:.3}s, {} synced, {} pending, {} copies",
            run.signal_after_seconds,
            run.exit_code,
            run.to_exit_seconds,
            run.synced,
            run.pending,
            run.copies
        );
        runs.push(run);
    }
    Ok(runs)
}

async fn once(bench: &Bench, n: usize, repeat: usize, signal_after: Duration) -> Result<DrainRun> {
    let run = format!("drain-r{repeat}");
    let name = format!("fo-{run}");
    let source = format!("src-{run}");
    bench
        .cluster
        .create_secrets(vec![world::source_secret(&source, &run)])
        .await?;
    let controller = bench.leader(&run, "bench-drain").await?;
    let observer = Observer::start(&bench.cluster.client, &name).await?;
    let fanout = world::fanout(&name, &run, &source, &format!("cp-{run}"), first(n))?;

    let started = Instant::now();
    world::create_fanout(&bench.cluster.client, &fanout).await?;
    tokio::time::sleep_until((started + signal_after).into()).await;
    let signalled = Instant::now();
    controller.try_signal(Signal::SIGTERM)?;
    let (status, exited) = controller.try_wait_exit(Duration::from_secs(60)).await?;
    drop(observer);

    let fanout = Api::<Fanout>::namespaced(bench.cluster.client.clone(), SOURCE_NAMESPACE)
        .get(&name)
        .await?;
    let summary = fanout.status.context("no status after the drain")?.summary;
    let copies = bench
        .cluster
        .secrets_labelled(&format!("{RUN_LABEL}={run}"))
        .await?
        .len()
        .saturating_sub(1); // the source carries the label too
    world::clean_up(&bench.cluster, &run, &[name]).await?;
    Ok(DrainRun {
        n,
        signal_after_seconds: (signalled - started).as_secs_f64(),
        to_exit_seconds: (exited - signalled).as_secs_f64(),
        exit_code: status.code(),
        synced: summary.synced,
        pending: summary.pending,
        other: summary.failed + summary.conflict + summary.refused,
        copies,
    })
}
