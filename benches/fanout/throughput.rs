//! Sections 1 and 2: one Secret into N consenting namespaces, the Fanout
//! against the baseline, back to back in each repeat (alternating which goes
//! first, so a drift of the shared machine does not favour either), each run
//! into namespaces that hold no copy yet (the previous run's are deleted).
//! The Fanout's status versions are counted through the same watch that
//! times it.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::baseline;
use crate::bench::Bench;
use crate::cluster::ApiserverMetrics;
use crate::observer::Observer;
use crate::results::{RequestCount, ThroughputRun, request_counts};
use crate::world::{self, first};

/// What one Fanout run measured.
struct FanoutRun {
    seconds: f64,
    status_changes: usize,
    status_requests: u64,
    peak_rss_kib: u64,
    requests: Vec<RequestCount>,
}

/// Every size, every repeat.
pub async fn run(bench: &Bench) -> Result<Vec<ThroughputRun>> {
    let mut runs = Vec::new();
    for repeat in 0..bench.shape.repeats {
        for &n in &bench.shape.sizes {
            let (baseline, fanout) = if repeat % 2 == 0 {
                let b = baseline_run(bench, n, repeat).await?;
                (b, fanout_run(bench, n, repeat).await?)
            } else {
                let f = fanout_run(bench, n, repeat).await?;
                (baseline_run(bench, n, repeat).await?, f)
            };
            let run = ThroughputRun {
                n,
                repeat,
                baseline_seconds: baseline.0,
                fanout_seconds: fanout.seconds,
                status_changes: fanout.status_changes,
                status_requests: fanout.status_requests,
                peak_rss_kib: fanout.peak_rss_kib,
                fanout_requests: fanout.requests,
                baseline_requests: baseline.1,
            };
            eprintln!(
                "throughput n={n} repeat={repeat}: baseline {:.2}s, fanout {:.2}s, ratio {:.3}, {} status writes",
                run.baseline_seconds,
                run.fanout_seconds,
                run.ratio(),
                run.status_changes
            );
            runs.push(run);
        }
    }
    Ok(runs)
}

async fn baseline_run(bench: &Bench, n: usize, repeat: usize) -> Result<(f64, Vec<RequestCount>)> {
    let run = format!("bl{n}-r{repeat}");
    // A fresh client: its bucket starts full, like a fresh controller's.
    let client = bench
        .cluster
        .limited_client(bench.shape.kube_qps, bench.shape.kube_burst)?;
    let before = bench.cluster.apiserver_metrics()?;
    let took = baseline::create_copies(
        &client,
        n,
        bench.shape.fanout_concurrency,
        &format!("cp-{run}"),
        &run,
    )
    .await?;
    let after = bench.cluster.apiserver_metrics()?;
    world::clean_up(&bench.cluster, &run, &[]).await?;
    Ok((
        took.as_secs_f64(),
        request_counts(&after.requests_since(&before)),
    ))
}

async fn fanout_run(bench: &Bench, n: usize, repeat: usize) -> Result<FanoutRun> {
    let run = format!("fo{n}-r{repeat}");
    let name = format!("fo-{run}");
    let source = format!("src-{run}");
    bench
        .cluster
        .create_secrets(vec![world::source_secret(&source, &run)])
        .await?;
    let controller = bench.leader(&run, "bench-throughput").await?;
    let observer = Observer::start(&bench.cluster.client, &name).await?;
    let fanout = world::fanout(&name, &run, &source, &format!("cp-{run}"), first(n))?;
    let before = bench.cluster.apiserver_metrics()?;

    let started = Instant::now();
    world::create_fanout(&bench.cluster.client, &fanout).await?;
    let n32 = u32::try_from(n)?;
    let done = observer
        .first(
            |s| s.desired == n32 && s.synced == n32,
            sync_timeout(bench, n),
        )
        .await?;
    let seconds = (done - started).as_secs_f64();

    // Writes after the last target (a trailing coalesced write) still count.
    tokio::time::sleep(
        Duration::from_millis(bench.shape.status_interval_ms) + Duration::from_secs(1),
    )
    .await;
    let after = bench.cluster.apiserver_metrics()?;
    let peak_rss_kib = controller.peak_rss_kib()?;
    controller.stop().await?;
    world::clean_up(&bench.cluster, &run, &[name]).await?;
    Ok(FanoutRun {
        seconds,
        status_changes: observer.changes().len(),
        status_requests: status_writes(&after, &before),
        peak_rss_kib,
        requests: request_counts(&after.requests_since(&before)),
    })
}

/// Writes to `fanouts/status` between two scrapes (PATCH, APPLY or PUT).
fn status_writes(after: &ApiserverMetrics, before: &ApiserverMetrics) -> u64 {
    after
        .requests_since(before)
        .iter()
        .filter(|((verb, resource), _)| resource == "fanouts/status" && verb != "GET")
        .map(|(_, count)| count)
        .sum()
}

/// Ten times what the rate limit alone needs, and at least a minute.
pub fn sync_timeout(bench: &Bench, n: usize) -> Duration {
    Duration::from_secs(60)
        + Duration::from_secs_f64(10.0 * n as f64 / f64::from(bench.shape.kube_qps))
}
