//! Everything a run measured, saved as `results.json` in the work directory
//! so that the report can be written again without measuring
//! (`--from-results`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::machine::{Machine, Versions};
use crate::options::Shape;

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
