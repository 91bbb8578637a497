//! Sections 1 and 2: one Secret into N consenting namespaces, the Fanout
//! against the baseline, back to back in each repeat (alternating which goes
//! first, so a drift of the shared machine does not favour either), each run
//! into namespaces that hold no copy yet (the previous run's are deleted).
//! The Fanout's status versions are counted through the same watch that
//! times it.

use std::time::{Duration, Instant};

use anyhow::Result;
use nix::unistd::Pid;
use testkit::process::cpu_seconds;

use crate::baseline;
use crate::bench::Bench;
use crate::cluster::ApiserverMetrics;
use crate::observer::Observer;
use crate::options::Limits;
use crate::results::{RequestCount, ThroughputRun, request_counts};
use crate::world::{self, first};

/// What one Fanout run measured.
struct FanoutRun {
    seconds: f64,
    cpu_seconds: f64,
    control_plane_cpu_seconds: Option<f64>,
    status_changes: usize,
    status_requests: u64,
    peak_rss_kib: u64,
    requests: Vec<RequestCount>,
}

/// Every size in `sizes`, every repeat, both sides under `limits`; `tag`
/// keeps the names of this series apart from another's.
pub async fn run(
    bench: &Bench,
    sizes: &[usize],
    limits: Limits,
    tag: &str,
) -> Result<Vec<ThroughputRun>> {
    let mut runs = Vec::new();
    for repeat in 0..bench.shape.repeats {
        for &n in sizes {
            let run = Run {
                n,
                repeat,
                limits,
                tag,
            };
            let (baseline, fanout) = if repeat % 2 == 0 {
                let b = baseline_run(bench, &run).await?;
                (b, fanout_run(bench, &run).await?)
            } else {
                let f = fanout_run(bench, &run).await?;
                (baseline_run(bench, &run).await?, f)
            };
            let run = ThroughputRun {
                n,
                repeat,
                baseline_seconds: baseline.seconds,
                fanout_seconds: fanout.seconds,
                baseline_cpu_seconds: baseline.cpu_seconds,
                fanout_cpu_seconds: fanout.cpu_seconds,
                baseline_control_plane_cpu_seconds: baseline.control_plane_cpu_seconds,
                fanout_control_plane_cpu_seconds: fanout.control_plane_cpu_seconds,
                status_changes: fanout.status_changes,
                status_requests: fanout.status_requests,
                peak_rss_kib: fanout.peak_rss_kib,
                fanout_requests: fanout.requests,
                baseline_requests: baseline.requests,
            };
            eprintln!(
                "throughput{} n={n} repeat={repeat}: baseline {:.2}s, fanout {:.2}s, ratio {:.3}, {} status writes",
                if limits == Limits::NONE {
                    " (no client limit)".to_owned()
                } else if tag.is_empty() {
                    String::new()
                } else {
                    format!(" (qps {})", limits.qps)
                },
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

/// One size, one repeat, one limit.
struct Run<'a> {
    n: usize,
    repeat: usize,
    limits: Limits,
    tag: &'a str,
}

impl Run<'_> {
    /// The run label of one side (`bl` or `fo`).
    fn label(&self, side: &str) -> String {
        format!("{side}{}{}-r{}", self.n, self.tag, self.repeat)
    }
}

/// What one baseline run measured.
struct BaselineRun {
    seconds: f64,
    cpu_seconds: f64,
    control_plane_cpu_seconds: Option<f64>,
    requests: Vec<RequestCount>,
}

async fn baseline_run(bench: &Bench, spec: &Run<'_>) -> Result<BaselineRun> {
    let (n, run) = (spec.n, spec.label("bl"));
    // A fresh client: its bucket starts full, like a fresh controller's.
    let client = bench
        .cluster
        .limited_client(spec.limits.qps, spec.limits.burst)?;
    let before = bench.cluster.apiserver_metrics()?;
    let cpu_before = cpu_seconds(Pid::this())?;
    let control_plane_before = bench.cluster.control_plane_cpu_seconds();
    let took = baseline::create_copies(
        &client,
        n,
        bench.shape.fanout_concurrency,
        &format!("cp-{run}"),
        &run,
    )
    .await?;
    let cpu = cpu_seconds(Pid::this())? - cpu_before;
    let control_plane = since(
        bench.cluster.control_plane_cpu_seconds(),
        control_plane_before,
    );
    let after = bench.cluster.apiserver_metrics()?;
    world::clean_up(&bench.cluster, &run, &[]).await?;
    Ok(BaselineRun {
        seconds: took.as_secs_f64(),
        cpu_seconds: cpu,
        control_plane_cpu_seconds: control_plane,
        requests: request_counts(&after.requests_since(&before)),
    })
}

async fn fanout_run(bench: &Bench, spec: &Run<'_>) -> Result<FanoutRun> {
    let (n, run) = (spec.n, spec.label("fo"));
    let name = format!("fo-{run}");
    let source = format!("src-{run}");
    bench
        .cluster
        .create_secrets(vec![world::source_secret(&source, &run)])
        .await?;
    let controller = bench
        .leader_limited(&run, "bench-throughput", spec.limits)
        .await?;
    let observer = Observer::start(&bench.cluster.client, &name).await?;
    let fanout = world::fanout(&name, &run, &source, &format!("cp-{run}"), first(n))?;
    let before = bench.cluster.apiserver_metrics()?;
    let cpu_before = controller.cpu_seconds()?;
    let control_plane_before = bench.cluster.control_plane_cpu_seconds();

    let started = Instant::now();
    world::create_fanout(&bench.cluster.client, &fanout).await?;
    let n32 = u32::try_from(n)?;
    let done = observer
        .first(
            |s| s.desired == n32 && s.synced == n32,
            sync_timeout(n, spec.limits),
        )
        .await?;
    let seconds = (done - started).as_secs_f64();
    let cpu_seconds = controller.cpu_seconds()? - cpu_before;
    let control_plane_cpu_seconds = since(
        bench.cluster.control_plane_cpu_seconds(),
        control_plane_before,
    );

    // Writes after the last target (a trailing coalesced write) still count.
    tokio::time::sleep(
        Duration::from_millis(bench.shape.status_interval_ms) + Duration::from_secs(1),
    )
    .await;
    let after = bench.cluster.apiserver_metrics()?;
    let peak_rss_kib = controller.peak_rss_kib()?;
    controller.try_stop().await?;
    world::clean_up(&bench.cluster, &run, &[name]).await?;
    Ok(FanoutRun {
        seconds,
        cpu_seconds,
        control_plane_cpu_seconds,
        status_changes: observer.changes().len(),
        status_requests: status_writes(&after, &before),
        peak_rss_kib,
        requests: request_counts(&after.requests_since(&before)),
    })
}

/// `now - before` when both were read.
fn since(now: Option<f64>, before: Option<f64>) -> Option<f64> {
    Some(now? - before?)
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
pub fn sync_timeout(n: usize, limits: Limits) -> Duration {
    Duration::from_secs(60) + Duration::from_secs_f64(10.0 * n as f64 / limits.expected_rate())
}
