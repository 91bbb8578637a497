//! Benchmarks of the `fanout` binary against a real API server: fan-out
//! throughput against a plain client baseline, status writes, memory,
//! start to ready, drain, handover, control-plane CPU per copy, the idle
//! cost of a converged controller, the reconcile-all after a failover,
//! blocked targets, a default install (the chart's identity and default
//! flags), and start to converged at scale. See `scripts/bench`, which builds
//! the release `fanout` and this binary, starts a private testbed, runs
//! `target/release/fanout-bench` against it, and writes
//! `docs/benchmarks.md` and `docs/benchmarks/fanout.svg`.
//!
//! The controller processes are `testkit::process::Controller`s, and the
//! start section holds the API server with `testkit::proxy::FaultProxy`;
//! what is here is the bench's own: its world of thousands of namespaces,
//! the baseline client, the sections (one module each), the results,
//! report and chart. A controller's requests are counted from the API
//! server's audit log by its user agent (each has its own `--identity`).

mod audit;
mod baseline;
mod bench;
mod blocked;
mod chart;
mod cluster;
mod counters;
mod cpu;
mod drain;
mod failover;
mod handover;
mod idle;
mod install;
mod machine;
mod memory;
mod observer;
mod options;
mod quiet;
mod report;
mod results;
mod scale;
mod startup;
mod stats;
mod steady;
mod throughput;
mod world;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result};
use clap::Parser;

use bench::Bench;
use cluster::Cluster;
use machine::{Machine, Versions};
use options::{Limits, Options, Section, Shape};
use results::Results;

/// Hand-written findings included in the report.
const ANALYSIS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/ANALYSIS.md");

fn main() -> Result<()> {
    let options = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let results = match &options.from_results {
        Some(path) => serde_json::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )?,
        None => runtime.block_on(measure(&options))?,
    };
    write_outputs(&options, &results)
}

async fn measure(options: &Options) -> Result<Results> {
    let started = Instant::now();
    let shape = Shape::from_options(options);
    let repo = &std::fs::canonicalize(testkit::repo_root()).context("the repository root")?;
    let bin = options
        .fanout_bin
        .as_deref()
        .context("--fanout-bin is required")?;
    let bin = std::fs::canonicalize(bin)
        .with_context(|| format!("no fanout binary at {}", bin.display()))?;
    let kubeconfig = options
        .kubeconfig
        .as_deref()
        .context("--kubeconfig is required")?;
    let work_dir = repo.join(&options.work_dir);
    std::fs::create_dir_all(&work_dir)?;
    remove_old_logs(&work_dir)?;
    let cluster = Cluster::connect(kubeconfig).await?;
    let mut results = Results {
        shape: shape.clone(),
        machine: Machine::current(),
        versions: Versions::current(&bin, repo),
        date: k8s_openapi::jiff::Timestamp::now()
            .round(k8s_openapi::jiff::Unit::Second)?
            .to_string(),
        wall_seconds: 0.0,
        command: options
            .command
            .clone()
            .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" ")),
        throughput: Vec::new(),
        throughput_unlimited: Vec::new(),
        memory: None,
        startup: None,
        drain: Vec::new(),
        handover: Vec::new(),
        cpu: Vec::new(),
        idle: None,
        failover: None,
        blocked: None,
        default_install: Vec::new(),
        scale: None,
    };
    eprintln!("preparing {} namespaces", shape.namespaces());
    let bench = Bench::new(cluster, shape, bin, work_dir.clone())?;
    world::prepare(&bench.cluster, &bench.bin.path, &bench.shape).await?;
    let wanted = |section| {
        options
            .only
            .as_ref()
            .is_none_or(|only| only.contains(&section))
    };
    let save = |results: &mut Results| -> Result<()> {
        results.wall_seconds = started.elapsed().as_secs_f64();
        let path = work_dir.join("results.json");
        std::fs::write(&path, serde_json::to_string_pretty(results)?)?;
        eprintln!("results so far in {}", path.display());
        Ok(())
    };

    if wanted(Section::Throughput) {
        let (sizes, limits) = (&bench.shape.sizes, bench.shape.limits());
        results.throughput = throughput::run(&bench, sizes, limits, "").await?;
        save(&mut results)?;
        let sizes = &bench.shape.unlimited_sizes;
        results.throughput_unlimited = throughput::run(&bench, sizes, Limits::NONE, "u").await?;
        save(&mut results)?;
    }
    if wanted(Section::Memory) {
        results.memory = Some(memory::run(&bench).await?);
        save(&mut results)?;
    }
    if wanted(Section::Startup) {
        results.startup = Some(startup::run(&bench).await?);
        save(&mut results)?;
    }
    if wanted(Section::Drain) {
        let n = bench.shape.drain_size;
        let measured = stats::median(
            results
                .throughput
                .iter()
                .filter(|t| t.n == n)
                .map(|t| t.fanout_seconds),
        );
        results.drain = drain::run(&bench, measured).await?;
        save(&mut results)?;
    }
    if wanted(Section::Handover) {
        results.handover = handover::run(&bench).await?;
        save(&mut results)?;
    }
    if wanted(Section::Cpu) {
        results.cpu = cpu::run(&bench).await?;
        save(&mut results)?;
    }
    if wanted(Section::Idle) || wanted(Section::Failover) {
        let steady = steady::converge(&bench).await?;
        if wanted(Section::Idle) {
            results.idle = Some(idle::run(&bench, &steady).await?);
            save(&mut results)?;
        }
        let leader = if wanted(Section::Failover) {
            let (failover, leader) = failover::run(&bench, steady).await?;
            results.failover = Some(failover);
            save(&mut results)?;
            leader
        } else {
            steady.leader
        };
        steady::clean_up(&bench, leader).await?;
    }
    if wanted(Section::Blocked) {
        results.blocked = Some(blocked::run(&bench).await?);
        save(&mut results)?;
    }
    if wanted(Section::DefaultInstall) {
        results.default_install = install::run(&bench).await?;
        save(&mut results)?;
    }
    if wanted(Section::Scale) {
        results.scale = Some(scale::run(&bench).await?);
        save(&mut results)?;
    }
    Ok(results)
}

fn write_outputs(options: &Options, results: &Results) -> Result<()> {
    let chart_link = match (&options.chart, &options.report) {
        (Some(chart), Some(report)) if !results.throughput.is_empty() => {
            Some(relative(chart, report))
        }
        _ => None,
    };
    if let (Some(chart), false) = (&options.chart, results.throughput.is_empty()) {
        if let Some(dir) = chart.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let shape = &results.shape;
        let title = format!(
            "One Secret into N namespaces: Fanout vs baseline (qps {}, burst {}, {} in flight)",
            shape.kube_qps, shape.kube_burst, shape.fanout_concurrency
        );
        let svg = chart::svg(
            &results.throughput,
            &results.throughput_unlimited,
            shape.kube_qps,
            shape.kube_burst,
            &title,
        );
        std::fs::write(chart, svg)?;
        eprintln!("wrote {}", chart.display());
    }
    if let Some(report) = &options.report {
        // The findings were written for a full run; a smoke run does not carry them.
        let analysis = if results.shape.quick {
            None
        } else {
            std::fs::read_to_string(ANALYSIS).ok()
        };
        let text = report::markdown(results, chart_link.as_deref(), analysis.as_deref());
        std::fs::write(report, text)?;
        eprintln!("wrote {}", report.display());
    }
    Ok(())
}

/// The controller logs of an earlier run, which this run's would mix with.
fn remove_old_logs(work_dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(work_dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("fanout-") && name.ends_with(".log") {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// `path` as seen from the directory of `from` (when it lies below it).
fn relative(path: &Path, from: &Path) -> String {
    let base: PathBuf = from.parent().map(Path::to_path_buf).unwrap_or_default();
    path.strip_prefix(&base)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}
