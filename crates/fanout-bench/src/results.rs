//! Everything a run measured, saved as `results.json` in the work directory
//! so that the report can be written again without measuring
//! (`--from-results`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::machine::{Machine, Versions};
use crate::options::{Limits, Shape};

/// The whole run.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Results {
    /// What was run.
    pub shape: Shape,
    /// Where.
    pub machine: Machine,
    /// With what.
    pub versions: Versions,
    /// When it started (UTC, RFC 3339).
    pub date: String,
    /// Wall time of the whole run, seconds.
    pub wall_seconds: f64,
    /// The command that reproduces it.
    pub command: String,
    /// Fan-out runs (section 1 and 2).
    pub throughput: Vec<ThroughputRun>,
    /// Fan-out runs without a client-side limit (the API server's own limit).
    #[serde(default)]
    pub throughput_unlimited: Vec<ThroughputRun>,
    /// Section 3.
    pub memory: Option<MemoryResult>,
    /// Section 4.
    pub startup: Option<StartupResult>,
    /// Section 5.
    pub drain: Vec<DrainRun>,
    /// Section 6.
    pub handover: Vec<HandoverRun>,
    /// Section 7: control-plane CPU, Fanout against the baseline at fixed limits.
    #[serde(default)]
    pub cpu: Vec<CpuSeries>,
    /// Section 8: a converged controller with nothing changing.
    #[serde(default)]
    pub idle: Option<IdleResult>,
    /// Section 9: the reconcile-all of a standby that takes over from a killed leader.
    #[serde(default)]
    pub failover: Option<FailoverResult>,
    /// Section 10: targets blocked by objects the Fanout did not make.
    #[serde(default)]
    pub blocked: Option<BlockedResult>,
    /// Section 11: fan-out as a default install runs it.
    #[serde(default)]
    pub default_install: Vec<InstallRun>,
    /// Section 12: start to ready and to converged at scale.
    #[serde(default)]
    pub scale: Option<ScaleResult>,
}

/// API requests counted by the API server, by verb and resource.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RequestCount {
    /// HTTP verb as the API server labels it (`POST`, `LIST`, `WATCH`, ...).
    pub verb: String,
    /// Resource, with `/subresource` when there is one.
    pub resource: String,
    /// How many.
    pub count: u64,
}

/// Request counts from a map keyed by (verb, resource).
pub fn request_counts(map: &BTreeMap<(String, String), u64>) -> Vec<RequestCount> {
    map.iter()
        .map(|((verb, resource), count)| RequestCount {
            verb: verb.clone(),
            resource: resource.clone(),
            count: *count,
        })
        .collect()
}

/// One size, one repeat: the baseline and the Fanout back to back.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ThroughputRun {
    /// Target namespaces.
    pub n: usize,
    /// Which repeat.
    pub repeat: usize,
    /// Baseline: first create sent to last create answered.
    pub baseline_seconds: f64,
    /// Fanout: created to status `synced == n` seen through a watch.
    pub fanout_seconds: f64,
    /// CPU time of the bench process during the baseline (the client loop; the
    /// bench does nothing else meanwhile), seconds.
    #[serde(default)]
    pub baseline_cpu_seconds: f64,
    /// CPU time of the controller process during the fan-out, seconds.
    #[serde(default)]
    pub fanout_cpu_seconds: f64,
    /// CPU time of kube-apiserver + etcd during the baseline, seconds.
    #[serde(default)]
    pub baseline_control_plane_cpu_seconds: Option<f64>,
    /// CPU time of kube-apiserver + etcd during the fan-out (created to synced), seconds.
    #[serde(default)]
    pub fanout_control_plane_cpu_seconds: Option<f64>,
    /// Status versions seen through the watch on the Fanout (each one a status write).
    pub status_changes: usize,
    /// PATCH/PUT requests on `fanouts/status` counted by the API server during the fan-out.
    pub status_requests: u64,
    /// Peak RSS of the controller process that did the fan-out.
    pub peak_rss_kib: u64,
    /// API requests during the Fanout's fan-out (created to synced).
    pub fanout_requests: Vec<RequestCount>,
    /// API requests during the baseline.
    pub baseline_requests: Vec<RequestCount>,
}

impl ThroughputRun {
    /// Fanout time over baseline time.
    pub fn ratio(&self) -> f64 {
        self.fanout_seconds / self.baseline_seconds
    }
}

/// Section 3.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct MemoryResult {
    /// Fanouts.
    pub fanouts: usize,
    /// Namespaces each selects.
    pub per_fanout: usize,
    /// Namespaces they spread over.
    pub namespaces: usize,
    /// Namespaces in the cluster (all cached, metadata only, by the controller).
    pub namespaces_in_cluster: usize,
    /// One fresh controller per step.
    pub steps: Vec<MemoryStep>,
    /// The converged controller of the first step, before and after the
    /// unrelated Secrets of the next step were added.
    pub idle: Option<IdleGrowth>,
}

/// A fresh controller fanning out every Fanout with `unrelated` Secrets in the cluster.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct MemoryStep {
    /// Unrelated 1 KiB Secrets in the cluster.
    pub unrelated: usize,
    /// Copies written.
    pub copies: usize,
    /// Created to all Synced.
    pub seconds: f64,
    /// VmHWM after all were Synced.
    pub peak_rss_kib: u64,
    /// VmRSS then.
    pub rss_kib: u64,
}

/// A converged controller's RSS before and after unrelated Secrets were added.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct IdleGrowth {
    /// Secrets added.
    pub added: usize,
    /// VmRSS before.
    pub before_kib: u64,
    /// VmRSS after (and a settling pause).
    pub after_kib: u64,
    /// VmHWM after.
    pub peak_after_kib: u64,
}

/// Section 4.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct StartupResult {
    /// Converged Fanouts (each its own source, one target namespace).
    pub fanouts: usize,
    /// One fresh process each.
    pub runs: Vec<StartupRun>,
    /// API requests from spawn until every Fanout was reconciled (first run).
    pub requests: Vec<RequestCount>,
    /// Watches it held open then.
    pub watches: Vec<RequestCount>,
}

/// One start.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct StartupRun {
    /// Spawn to `/readyz` 200.
    pub to_ready_seconds: f64,
    /// Spawn to `fanout_leader` 1.
    pub to_leader_seconds: f64,
    /// Spawn to `fanout_reconciles_total` >= fanouts.
    pub to_reconciled_seconds: f64,
    /// When the API server was held unreachable at first: from the moment it
    /// answered to `/readyz` 200 (the process itself was already up).
    pub api_answering_to_ready_seconds: Option<f64>,
    /// Spawn to a `/readyz` 200 that came before the controller's own
    /// checks were registered (a 200 that does not mean ready), if one was seen.
    #[serde(default)]
    pub premature_200_seconds: Option<f64>,
}

/// Section 5: one SIGTERM mid-fan-out.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct DrainRun {
    /// Target namespaces.
    pub n: usize,
    /// Fanout created to SIGTERM.
    pub signal_after_seconds: f64,
    /// SIGTERM to process exit.
    pub to_exit_seconds: f64,
    /// Exit code.
    pub exit_code: Option<i32>,
    /// Final status: Synced.
    pub synced: u32,
    /// Final status: Pending.
    pub pending: u32,
    /// Final status: any other state.
    pub other: u32,
    /// Copies that exist after the exit.
    pub copies: usize,
}

/// Section 6: one handover.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct HandoverRun {
    /// Leader's SIGTERM to its exit.
    pub leader_exit_seconds: f64,
    /// Leader's SIGTERM to the standby's `fanout_leader` 1.
    pub to_leader_seconds: f64,
    /// Leader's SIGTERM to the standby's first completed reconcile.
    pub to_first_reconcile_seconds: f64,
}

/// Section 7: one fan-out series at one client-side limit (both sides).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CpuSeries {
    /// The limit of both sides.
    pub limits: Limits,
    /// CPU seconds per second kube-apiserver + etcd used with nothing
    /// running against them, just before the series (their background).
    pub idle_control_plane_cpu_per_second: Option<f64>,
    /// The runs.
    pub runs: Vec<ThroughputRun>,
}

/// Counters of one controller's `/metrics` between two scrapes.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ControllerDelta {
    /// `fanout_api_requests_total`, by `"METHOD code"`.
    pub api_requests: BTreeMap<String, f64>,
    /// `fanout_client_rate_limit_wait_seconds_total`.
    pub rate_limit_wait_seconds: f64,
    /// `fanout_target_writes_total`, by `"operation result"`.
    pub target_writes: BTreeMap<String, f64>,
    /// `fanout_reconciles_total`, by result.
    pub reconciles: BTreeMap<String, f64>,
}

impl ControllerDelta {
    /// Every API request counted.
    pub fn requests(&self) -> f64 {
        self.api_requests.values().sum::<f64>() + 0.0
    }

    /// API requests of HTTP method `method`.
    pub fn requests_of(&self, method: &str) -> f64 {
        self.api_requests
            .iter()
            .filter(|(key, _)| key.split(' ').next() == Some(method))
            .map(|(_, n)| n)
            .sum::<f64>()
            + 0.0
    }

    /// API requests answered 429 (the API server's Priority and Fairness).
    pub fn throttled(&self) -> f64 {
        self.api_requests
            .iter()
            .filter(|(key, _)| key.ends_with(" 429"))
            .map(|(_, n)| n)
            .sum::<f64>()
            + 0.0
    }

    /// Target writes of every operation and result.
    pub fn writes(&self) -> f64 {
        // + 0.0: the sum of nothing is -0.0.
        self.target_writes.values().sum::<f64>() + 0.0
    }
}

/// A measured window in which nothing the controller watches changes.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct QuietWindow {
    /// Its length.
    pub seconds: f64,
    /// The controller's requests received in it, from the API server's audit
    /// log (Leases, Secrets, ConfigMaps, Fanouts only), matched by its user
    /// agent; lower-case audit verbs.
    pub audit: Vec<RequestCount>,
    /// The controller's own counters.
    pub controller: ControllerDelta,
    /// `apiserver_request_total` in the window, every client (the API
    /// server's own included): what the audit policy leaves out (namespaces, events).
    pub apiserver: Vec<RequestCount>,
    /// CPU time of the controller in the window, seconds.
    pub controller_cpu_seconds: f64,
    /// CPU time of kube-apiserver + etcd in the window, seconds.
    pub control_plane_cpu_seconds: Option<f64>,
    /// The controller's audited requests per minute of the window, in
    /// order (a periodic resync shows as a burst); empty for a window
    /// under two minutes.
    #[serde(default)]
    pub per_minute: Vec<u64>,
}

impl QuietWindow {
    /// Requests per minute at `count` in this window.
    pub fn per_minute(&self, count: f64) -> f64 {
        count * 60.0 / self.seconds
    }
}

/// Section 8.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct IdleResult {
    /// Converged Fanouts, each with its own source.
    pub fanouts: usize,
    /// Target namespaces of each.
    pub targets_per_fanout: usize,
    /// Created to all Synced, seconds.
    pub converge_seconds: f64,
    /// The measured window.
    pub window: QuietWindow,
    /// The controller's RSS at the end of the window.
    pub rss_kib: u64,
}

/// Section 9.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct FailoverResult {
    /// Converged Fanouts the standby takes over.
    pub fanouts: usize,
    /// The signal that ended the leader.
    pub signal: String,
    /// Signal to the standby's `fanout_leader` 1 (after a SIGKILL: the
    /// Lease expiring, at the controller's default `--lease-duration`).
    pub to_leader_seconds: f64,
    /// Leadership to every Fanout reconciled.
    pub leader_to_reconciled_seconds: f64,
    /// Signal to every Fanout reconciled by the new leader.
    pub to_reconciled_seconds: f64,
    /// Whether it reconciled every Fanout (else: its queue drained first).
    pub complete: bool,
    /// Reconciles it did (every result but `skipped`).
    pub reconciles: f64,
    /// Its requests from the signal to a settling pause after the
    /// reconcile-all, from the audit log.
    pub audit: Vec<RequestCount>,
    /// Those that write (create, update, patch, delete) anything but Leases.
    pub writes: Vec<RequestCount>,
    /// Its own counters over the same time.
    pub controller: ControllerDelta,
    /// Its peak RSS at the end.
    pub peak_rss_kib: u64,
}

/// Section 10.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct BlockedResult {
    /// Blocked targets (one Fanout).
    pub targets: usize,
    /// Fanout created to every target reported Conflict, seconds.
    pub to_conflict_seconds: f64,
    /// The window while blocked.
    pub window: QuietWindow,
    /// How long the bench took to delete the blockers.
    pub delete_seconds: f64,
    /// Last blocker deleted to every target Synced (status seen through a watch).
    pub to_synced_seconds: f64,
    /// The controller's requests from the first delete to all Synced, from the audit log.
    pub unblock_audit: Vec<RequestCount>,
    /// Its counters over the same time.
    pub unblock_controller: ControllerDelta,
}

/// APF per priority level between two scrapes of the API server.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ApfDelta {
    /// The priority level (`workload-low` for ServiceAccounts).
    pub priority_level: String,
    /// Requests dispatched or rejected.
    pub requests: u64,
    /// Seconds they waited in its queues, summed.
    pub wait_seconds: f64,
    /// Requests rejected (429).
    pub rejected: u64,
}

/// Section 11: one size, one repeat, with the chart's identity and the
/// controller's default limits on both sides.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct InstallRun {
    /// Target namespaces.
    pub n: usize,
    /// Which repeat.
    pub repeat: usize,
    /// The controller's default `--kube-qps` (read from `fanout --help`).
    pub qps: u32,
    /// Its default `--kube-burst`.
    pub burst: u32,
    /// Its default `--fanout-concurrency`.
    pub concurrency: usize,
    /// Fanout: created to all Synced.
    pub fanout_seconds: f64,
    /// Baseline (same identity, same limits): first create to last answer.
    pub baseline_seconds: f64,
    /// 429s the baseline got (and retried after 1 s).
    pub baseline_throttled: u64,
    /// The controller's counters during its fan-out.
    pub controller: ControllerDelta,
    /// APF during the Fanout's fan-out.
    pub apf: Vec<ApfDelta>,
    /// APF during the baseline.
    pub baseline_apf: Vec<ApfDelta>,
    /// Which limit bound the fan-out.
    pub bound: String,
}

impl InstallRun {
    /// Fanout time over baseline time.
    pub fn ratio(&self) -> f64 {
        self.fanout_seconds / self.baseline_seconds
    }
}

/// Section 12.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ScaleResult {
    /// Fanouts, each with its own source.
    pub fanouts: usize,
    /// Target namespaces of each.
    pub per_fanout: usize,
    /// A fresh controller, the Fanouts created: created to all Synced.
    pub converge_seconds: f64,
    /// Its peak RSS then.
    pub converge_peak_rss_kib: u64,
    /// Its requests meanwhile, from the audit log.
    pub converge_audit: Vec<RequestCount>,
    /// Its counters meanwhile.
    pub converge_controller: ControllerDelta,
    /// A fresh start with everything converged.
    pub restart: StartupRun,
    /// Whether it reconciled every Fanout (else: its queue drained first).
    pub restart_complete: bool,
    /// Peak RSS after that start's reconcile-all.
    pub restart_peak_rss_kib: u64,
    /// RSS then.
    pub restart_rss_kib: u64,
    /// Its requests from spawn to a settling pause after the reconcile-all.
    pub restart_audit: Vec<RequestCount>,
    /// Those that write anything but Leases.
    pub restart_writes: Vec<RequestCount>,
    /// Its counters over the same time.
    pub restart_controller: ControllerDelta,
}
