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
    /// The idle section's measured window (default 12m: through the
    /// controller's periodic resync; quick 20s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle_window: Option<Duration>,
    /// The blocked section's measured window (default 60s; quick 35s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub blocked_window: Option<Duration>,
    /// Sections to run, comma-separated (default: all).
    #[arg(long, visible_alias = "sections", value_delimiter = ',')]
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
    /// Control-plane CPU per copy, Fanout against the baseline, at 5 and 200 QPS.
    Cpu,
    /// API requests of a converged controller with nothing changing.
    Idle,
    /// The reconcile-all of a standby after the leader is killed (converges the idle world if idle did not run).
    Failover,
    /// Requests while targets are blocked, and time to converge once unblocked.
    Blocked,
    /// Fan-out with the chart's identity and the default flags.
    DefaultInstall,
    /// Start to ready and to converged with many Fanouts of many targets.
    Scale,
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
    /// No client-side limit: `--kube-qps 0` for the controller (its client
    /// then has no rate-limit layer), no rate-limit layer for the baseline.
    /// Only the API server limits: its own limit is measured.
    pub const NONE: Limits = Limits { qps: 0, burst: 1 };

    /// Whether this is no limit at all.
    pub fn is_off(self) -> bool {
        self.qps == 0
    }

    /// The rate the requests of a run are expected to go at, for timeouts:
    /// the QPS, or a rate the API server sustains when there is no limit.
    pub fn expected_rate(self) -> f64 {
        if self.is_off() {
            100.0
        } else {
            f64::from(self.qps)
        }
    }
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
    /// Section 7: the fixed limits and the fan-out size at each (5 and 200 QPS).
    #[serde(default)]
    pub cpu_series: Vec<(Limits, usize)>,
    /// Section 8 (and 9): converged Fanouts, each with its own source.
    #[serde(default)]
    pub idle_fanouts: usize,
    /// Target namespaces of each.
    #[serde(default)]
    pub idle_targets: usize,
    /// The measured idle window, seconds.
    #[serde(default)]
    pub idle_window_seconds: u64,
    /// Section 10: blocked targets (one Fanout).
    #[serde(default)]
    pub blocked_targets: usize,
    /// The measured window while blocked, seconds (longer than a 30 s poll).
    #[serde(default)]
    pub blocked_window_seconds: u64,
    /// Section 11: fan-out sizes with the chart's identity and default flags.
    #[serde(default)]
    pub install_sizes: Vec<usize>,
    /// Runs per size there.
    #[serde(default)]
    pub install_repeats: usize,
    /// Section 12: Fanouts, each with its own source.
    #[serde(default)]
    pub scale_fanouts: usize,
    /// Target namespaces of each.
    #[serde(default)]
    pub scale_targets: usize,
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
            cpu_series: vec![
                (Limits { qps: 5, burst: 5 }, if quick { 50 } else { 300 }),
                (
                    Limits {
                        qps: 200,
                        burst: 200,
                    },
                    if quick { 500 } else { 2_000 },
                ),
            ],
            idle_fanouts: if quick { 100 } else { 1_000 },
            idle_targets: 10,
            idle_window_seconds: options
                .idle_window
                .map_or(if quick { 20 } else { 720 }, |w| w.as_secs()),
            blocked_targets: if quick { 200 } else { 1_000 },
            blocked_window_seconds: options
                .blocked_window
                .map_or(if quick { 35 } else { 60 }, |w| w.as_secs()),
            install_sizes: if quick { vec![200] } else { vec![1_000, 5_000] },
            install_repeats: 1,
            scale_fanouts: if quick { 100 } else { 1_000 },
            scale_targets: if quick { 10 } else { 100 },
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
            .max(self.blocked_targets)
            .max(self.spread())
            .max(self.first_sizes().into_iter().max().unwrap_or(0))
    }

    /// The target namespaces the idle and scale worlds spread their
    /// explicit target lists over (each namespace holds several copies).
    pub fn spread(&self) -> usize {
        self.memory_namespaces
            .max(self.idle_targets)
            .max(self.scale_targets)
    }

    /// Every N for which the first N target namespaces carry a label.
    pub fn first_sizes(&self) -> Vec<usize> {
        let mut sizes = self.sizes.clone();
        sizes.extend([
            self.drain_size,
            self.startup_fanouts,
            self.handover_fanouts,
            self.blocked_targets,
        ]);
        sizes.extend(self.cpu_series.iter().map(|(_, n)| *n));
        sizes.extend(&self.install_sizes);
        sizes.retain(|&n| n > 0);
        sizes.sort_unstable();
        sizes.dedup();
        sizes
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
