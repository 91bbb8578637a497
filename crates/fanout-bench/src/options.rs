//! What a bench run measures and with which limits: the command line, and
//! the two shapes it selects (`--quick` for a smoke run, full for the report).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

/// Benchmarks of the `fanout` binary against a real API server (run by
/// `scripts/bench`, which starts a private testbed and passes its kubeconfig).
#[derive(Parser, Debug, Clone)]
#[command(name = "fanout-bench")]
pub struct Options {
    /// Smoke run: fewer sizes and repeats, smaller memory and start shapes.
    #[arg(long)]
    pub quick: bool,
    /// Runs of each fan-out size (and of drain and handover); medians are reported.
    #[arg(long)]
    pub repeats: Option<usize>,
    /// Fan-out sizes, comma-separated (default 100,1000,5000; quick 100,1000).
    #[arg(long, value_delimiter = ',')]
    pub sizes: Option<Vec<usize>>,
    /// Client-side QPS limit, for the controller (`--kube-qps`) and the baseline alike.
    #[arg(long, default_value_t = 200)]
    pub kube_qps: u32,
    /// Client-side burst, for the controller (`--kube-burst`) and the baseline alike.
    #[arg(long, default_value_t = 200)]
    pub kube_burst: u32,
    /// Writes in flight at once, for the controller (`--fanout-concurrency`) and the baseline alike.
    #[arg(long, default_value_t = 32)]
    pub fanout_concurrency: usize,
    /// The controller's status coalescing interval (`--status-interval`).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub status_interval: Duration,
    /// Sections to run (default: all).
    #[arg(long, value_delimiter = ',')]
    pub only: Option<Vec<Section>>,
    /// The release `fanout` binary under test.
    #[arg(
        long,
        env = "FANOUT_BENCH_BIN",
        required_unless_present = "from_results"
    )]
    pub fanout_bin: Option<PathBuf>,
    /// Admin kubeconfig of a disposable cluster. Deliberately not $KUBECONFIG:
    /// the bench creates thousands of namespaces it never deletes.
    #[arg(
        long,
        env = "FANOUT_BENCH_KUBECONFIG",
        required_unless_present = "from_results"
    )]
    pub kubeconfig: Option<PathBuf>,
    /// Where controller logs and results.json go.
    #[arg(
        long,
        env = "FANOUT_BENCH_WORK_DIR",
        default_value = "target/bench-fanout"
    )]
    pub work_dir: PathBuf,
    /// Markdown report to write.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// SVG chart of the fan-out series to write.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// The command that reproduces this run, quoted in the report.
    #[arg(long, env = "FANOUT_BENCH_COMMAND")]
    pub command: Option<String>,
    /// Write the report and chart from a results.json of an earlier run, measuring nothing.
    #[arg(long)]
    pub from_results: Option<PathBuf>,
}

/// One section of the report.
#[derive(ValueEnum, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    /// Fan-out throughput against the baseline, and status writes.
    Throughput,
    /// Peak RSS with many Fanouts and unrelated Secrets.
    Memory,
    /// Start to ready with converged Fanouts.
    Startup,
    /// SIGTERM in the middle of a fan-out.
    Drain,
    /// Leader SIGTERM to the standby's first reconcile.
    Handover,
}

/// A client-side QPS/burst limit, applied alike to the controller and the baseline.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Requests per second.
    pub qps: u32,
    /// Burst.
    pub burst: u32,
}

impl Limits {
    /// So high that only the API server limits: its own limit is measured.
    pub const NONE: Limits = Limits {
        qps: 1_000_000,
        burst: 1_000_000,
    };
}

/// The sizes of everything a run does, from `--quick` and the overrides.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Shape {
    /// Whether this is the smoke shape.
    pub quick: bool,
    /// Runs per measurement.
    pub repeats: usize,
    /// Fan-out sizes.
    pub sizes: Vec<usize>,
    /// Fan-out sizes also run without any client-side limit (the API server's own limit).
    #[serde(default)]
    pub unlimited_sizes: Vec<usize>,
    /// Fan-out size whose status writes are counted (the largest size up to 1,000).
    pub status_size: usize,
    /// Fanouts in the memory section.
    pub memory_fanouts: usize,
    /// Namespaces each of them selects (by a group label).
    pub memory_group: usize,
    /// Namespaces the memory section spreads over.
    pub memory_namespaces: usize,
    /// Unrelated 1 KiB Secrets in the cluster, in ascending steps.
    pub unrelated: Vec<usize>,
    /// Converged Fanouts (one namespace each) when the start is timed.
    pub startup_fanouts: usize,
    /// Fan-out size interrupted by SIGTERM in the drain section.
    pub drain_size: usize,
    /// Converged Fanouts the standby takes over in the handover section.
    pub handover_fanouts: usize,
    /// Client-side QPS limit (controller and baseline).
    pub kube_qps: u32,
    /// Client-side burst (controller and baseline).
    pub kube_burst: u32,
    /// Write concurrency (controller and baseline).
    pub fanout_concurrency: usize,
    /// Status coalescing interval, in milliseconds.
    pub status_interval_ms: u64,
}

impl Shape {
    /// The shape `options` ask for.
    pub fn from_options(options: &Options) -> Shape {
        let quick = options.quick;
        let sizes = options.sizes.clone().unwrap_or_else(|| {
            if quick {
                vec![100, 1_000]
            } else {
                vec![100, 1_000, 5_000]
            }
        });
        let status_size = sizes
            .iter()
            .copied()
            .filter(|&n| n <= 1_000)
            .max()
            .unwrap_or(sizes[0]);
        let unlimited_sizes = if quick {
            vec![1_000]
        } else {
            vec![1_000, 5_000]
        };
        Shape {
            unlimited_sizes: unlimited_sizes
                .into_iter()
                .filter(|n| sizes.contains(n))
                .collect(),
            quick,
            repeats: options.repeats.unwrap_or(if quick { 1 } else { 3 }),
            status_size,
            sizes,
            memory_fanouts: if quick { 10 } else { 100 },
            memory_group: 100,
            memory_namespaces: 1_000,
            unrelated: if quick {
                vec![500, 2_000]
            } else {
                vec![1_000, 10_000]
            },
            startup_fanouts: if quick { 100 } else { 1_000 },
            drain_size: 1_000,
            handover_fanouts: 10,
            kube_qps: options.kube_qps,
            kube_burst: options.kube_burst,
            fanout_concurrency: options.fanout_concurrency,
            status_interval_ms: u64::try_from(options.status_interval.as_millis())
                .unwrap_or(u64::MAX),
        }
    }

    /// How many target namespaces the run needs.
    pub fn namespaces(&self) -> usize {
        let largest = self.sizes.iter().copied().max().unwrap_or(0);
        largest
            .max(self.memory_namespaces)
            .max(self.startup_fanouts)
            .max(self.drain_size)
            .max(self.handover_fanouts)
    }

    /// The client-side limit of the report's main figures.
    pub fn limits(&self) -> Limits {
        Limits {
            qps: self.kube_qps,
            burst: self.kube_burst,
        }
    }

    /// The controller flags every measured process gets, with `limits`.
    pub fn controller_flags(&self, limits: Limits) -> Vec<String> {
        vec![
            "--kube-qps".into(),
            limits.qps.to_string(),
            "--kube-burst".into(),
            limits.burst.to_string(),
            "--fanout-concurrency".into(),
            self.fanout_concurrency.to_string(),
            "--status-interval".into(),
            format!("{}ms", self.status_interval_ms),
        ]
    }
}
