//! Section 11: fan-out as a default install runs it. The controller runs as
//! the chart's own ServiceAccount (`testkit::world::chart_identity`: the
//! ServiceAccount, ClusterRole and leader-election Role as Helm renders
//! them, and a TokenRequest token), so API Priority and Fairness treats it
//! as an ordinary workload (priority level `workload-low`), not as the
//! exempt admin of the other sections; and with the default flags: no
//! `--kube-qps`, `--kube-burst`, `--fanout-concurrency` or
//! `--status-interval`. The baseline uses the same identity and the same
//! limits (the defaults, read from `fanout --help`). Which limit bound the
//! fan-out is read from the controller's own counters: time waited in its
//! client-side rate limit (`fanout_client_rate_limit_wait_seconds_total`),
//! 429s from the API server (`fanout_api_requests_total{code="429"}`), and
//! the API server's APF queueing for the priority level.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::baseline;
use crate::bench::{Bench, bucket_refill};
use crate::counters;
use crate::observer::Observer;
use crate::options::Limits;
use crate::results::{ApfDelta, ControllerDelta, InstallRun};
use crate::world::{self, SOURCE_NAMESPACE, first};

/// The Helm release whose identity the controller uses.
const RELEASE: &str = "fanout-bench";

/// The controller's defaults, as `fanout --help` states them.
#[derive(Clone, Copy, Debug)]
pub struct Defaults {
    /// `--kube-qps`.
    pub qps: u32,
    /// `--kube-burst`.
    pub burst: u32,
    /// `--fanout-concurrency`.
    pub concurrency: usize,
}

/// Every size and repeat.
pub async fn run(bench: &Bench) -> Result<Vec<InstallRun>> {
    let defaults = defaults(&bench.bin.path)?;
    let kubeconfig = identity(bench).await?;
    let text = std::fs::read_to_string(&kubeconfig)?;
    let mut runs = Vec::new();
    for repeat in 0..bench.shape.install_repeats {
        for &n in &bench.shape.install_sizes {
            let run = format!("di{n}-r{repeat}");
            let (baseline_seconds, baseline_throttled, baseline_apf) =
                baseline_run(bench, &text, defaults, n, &format!("bl{run}")).await?;
            let fanout = fanout_run(bench, &kubeconfig, defaults, n, &format!("fo{run}")).await?;
            let bound = bound(&fanout.controller, &fanout.apf, fanout.seconds, defaults);
            let run = InstallRun {
                n,
                repeat,
                qps: defaults.qps,
                burst: defaults.burst,
                concurrency: defaults.concurrency,
                fanout_seconds: fanout.seconds,
                baseline_seconds,
                baseline_throttled,
                controller: fanout.controller,
                apf: fanout.apf,
                baseline_apf,
                bound,
            };
            eprintln!(
                "default install n={n}: baseline {:.2}s, fanout {:.2}s, ratio {:.3}; bound by {}",
                run.baseline_seconds,
                run.fanout_seconds,
                run.ratio(),
                run.bound
            );
            runs.push(run);
        }
    }
    Ok(runs)
}

/// Reads the defaults of `--kube-qps`, `--kube-burst` and
/// `--fanout-concurrency` from `bin --help`.
pub fn defaults(bin: &Path) -> Result<Defaults> {
    let output = Command::new(bin)
        .arg("--help")
        .output()
        .with_context(|| format!("running {} --help", bin.display()))?;
    let help = String::from_utf8_lossy(&output.stdout);
    let default_of = |flag: &str| -> Result<String> {
        let start = help
            .find(&format!("{flag} <"))
            .with_context(|| format!("{flag} is not in fanout --help"))?;
        // The option's own text ends where the next option's line starts.
        let text: String = help[start + flag.len()..]
            .lines()
            .enumerate()
            .take_while(|(i, line)| *i == 0 || !line.trim_start().starts_with('-'))
            .map(|(_, line)| line)
            .collect::<Vec<_>>()
            .join("\n");
        let value = text
            .split("[default: ")
            .nth(1)
            .and_then(|v| v.split(']').next())
            .with_context(|| format!("no default for {flag} in fanout --help"))?;
        Ok(value.trim().to_owned())
    };
    Ok(Defaults {
        qps: default_of("--kube-qps")?.parse()?,
        burst: default_of("--kube-burst")?.parse()?,
        concurrency: default_of("--fanout-concurrency")?.parse()?,
    })
}

/// Installs the chart's identity for [`RELEASE`] in the source namespace
/// and writes a kubeconfig with its token beside the admin kubeconfig
/// (where `scripts/bench` looks for leftover controllers).
async fn identity(bench: &Bench) -> Result<PathBuf> {
    let admin = bench.cluster.kubeconfig().to_owned();
    let helm = which("helm")
        .context("helm is not on PATH (scripts/bench puts the testbed's tools there)")?;
    let tools = helm.parent().context("helm's directory")?.to_owned();
    // chart_identity panics on failure (it is a test helper): in a task, a
    // panic becomes an error.
    let text = tokio::spawn(async move {
        let cluster = testkit::Cluster::attach(&admin, &tools).map_err(anyhow::Error::msg)?;
        Ok::<_, anyhow::Error>(
            testkit::world::chart_identity(&cluster, RELEASE, SOURCE_NAMESPACE).await,
        )
    })
    .await
    .context("installing the chart's identity")??;
    let dir = bench
        .cluster
        .kubeconfig()
        .parent()
        .context("the kubeconfig has no directory")?;
    let path = dir.join("kubeconfig-chart-identity");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// The baseline as the chart's identity: time, 429s, APF.
async fn baseline_run(
    bench: &Bench,
    kubeconfig: &str,
    defaults: Defaults,
    n: usize,
    run: &str,
) -> Result<(f64, u64, Vec<ApfDelta>)> {
    let client = bench
        .cluster
        .limited_client_as(kubeconfig, defaults.qps, defaults.burst)
        .await?;
    let before = bench.cluster.apiserver_metrics()?;
    let (took, throttled) = baseline::create_copies_retrying(
        &client,
        n,
        defaults.concurrency,
        &format!("cp-{run}"),
        run,
    )
    .await?;
    let after = bench.cluster.apiserver_metrics()?;
    world::clean_up(&bench.cluster, run, &[]).await?;
    Ok((took.as_secs_f64(), throttled, after.apf_since(&before)))
}

struct FanoutRun {
    seconds: f64,
    controller: ControllerDelta,
    apf: Vec<ApfDelta>,
}

async fn fanout_run(
    bench: &Bench,
    kubeconfig: &Path,
    defaults: Defaults,
    n: usize,
    run: &str,
) -> Result<FanoutRun> {
    let name = format!("fo-{run}");
    let source = format!("src-{run}");
    bench
        .cluster
        .create_secrets(vec![world::source_secret(&source, run)])
        .await?;
    let lease = format!("{RELEASE}-leader");
    let (controller, _) = bench
        .leader_with(run, &lease, Some(kubeconfig), Vec::new())
        .await?;
    tokio::time::sleep(bucket_refill(Limits {
        qps: defaults.qps,
        burst: defaults.burst,
    }))
    .await;
    let observer = Observer::start(&bench.cluster.client, &name).await?;
    let fanout = world::fanout(&name, run, &source, &format!("cp-{run}"), first(n))?;
    let counters_before = bench.counters(&controller).await?;
    let apiserver_before = bench.cluster.apiserver_metrics()?;
    let started = Instant::now();
    world::create_fanout(&bench.cluster.client, &fanout).await?;
    let n32 = u32::try_from(n)?;
    let timeout = Duration::from_secs(120)
        + Duration::from_secs_f64(
            10.0 * n as f64
                / Limits {
                    qps: defaults.qps,
                    burst: defaults.burst,
                }
                .expected_rate(),
        );
    let done = observer
        .first(|s| s.desired == n32 && s.synced == n32, timeout)
        .await?;
    let counters_after = bench.counters(&controller).await?;
    let apiserver_after = bench.cluster.apiserver_metrics()?;
    controller.try_stop().await?;
    drop(observer);
    world::clean_up(&bench.cluster, run, &[name]).await?;
    Ok(FanoutRun {
        seconds: (done - started).as_secs_f64(),
        controller: counters::since(&counters_after, &counters_before),
        apf: apiserver_after.apf_since(&apiserver_before),
    })
}

/// Which limit bound a fan-out of `seconds`: the API server's APF if it
/// answered 429 or queued requests for long; the client-side limit if
/// requests waited in its token bucket; else neither (request latency).
fn bound(
    controller: &ControllerDelta,
    apf: &[ApfDelta],
    seconds: f64,
    defaults: Defaults,
) -> String {
    let throttled = controller.throttled();
    let waited = controller.rate_limit_wait_seconds;
    let queued: f64 = apf
        .iter()
        .filter(|d| d.priority_level != "exempt")
        .map(|d| d.wait_seconds)
        .sum();
    let mut bounds = Vec::new();
    if throttled > 0.0 {
        bounds.push(format!("the API server's APF ({throttled:.0} answers 429)"));
    }
    if queued > 0.05 * seconds {
        bounds.push(format!(
            "the API server's APF queues ({queued:.1} s waited)"
        ));
    }
    if defaults.qps > 0 && waited > 0.05 * seconds {
        bounds.push(format!(
            "the client-side limit (--kube-qps {}: {waited:.1} s waited in the token bucket)",
            defaults.qps
        ));
    }
    if bounds.is_empty() {
        "neither (request latency)".to_owned()
    } else {
        bounds.join("; ")
    }
}
