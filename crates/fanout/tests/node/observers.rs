//! What the rollout test watches while `kubectl rollout restart` runs: every
//! pod's deletion and exit, the Lease's holder, and each old pod's log.
//!
//! All three record what they see with the local `Instant` it arrived, so the
//! test can order events and print how long each step took. Pod logs must be
//! streamed while the pod exists: kubelet deletes a pod's log directory as
//! soon as the pod object is gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use tokio::task::JoinHandle;

/// One pod as seen through a watch.
#[derive(Clone, Debug, Default)]
pub struct PodRecord {
    /// When the pod was first seen with a deletionTimestamp (kubelet sends
    /// SIGTERM right after).
    pub deletion_seen: Option<Instant>,
    /// The grace period the deletion gave it.
    pub grace_seconds: Option<i64>,
    /// When its container was first seen terminated, and with which code.
    pub exit_seen: Option<Instant>,
    pub exit_code: Option<i32>,
    /// Whether kubelet ever reported it Ready.
    pub was_ready: bool,
}

/// Records every pod of a namespace until dropped.
pub struct PodRecorder {
    records: Arc<Mutex<BTreeMap<String, PodRecord>>>,
    task: JoinHandle<()>,
}

impl PodRecorder {
    pub fn start(client: kube::Client, namespace: &str) -> PodRecorder {
        let records = Arc::new(Mutex::new(BTreeMap::new()));
        let api: Api<Pod> = Api::namespaced(client, namespace);
        let sink = records.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher::watcher(api, watcher::Config::default()).boxed();
            while let Some(event) = events.next().await {
                let pod = match event {
                    Ok(Event::Apply(pod) | Event::InitApply(pod) | Event::Delete(pod)) => pod,
                    _ => continue,
                };
                record(&mut sink.lock().unwrap(), &pod);
            }
        });
        PodRecorder { records, task }
    }

    pub fn get(&self, pod: &str) -> PodRecord {
        self.records
            .lock()
            .unwrap()
            .get(pod)
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for PodRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(records: &mut BTreeMap<String, PodRecord>, pod: &Pod) {
    let now = Instant::now();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let entry = records.entry(name).or_default();
    if pod.metadata.deletion_timestamp.is_some() && entry.deletion_seen.is_none() {
        entry.deletion_seen = Some(now);
        entry.grace_seconds = pod.metadata.deletion_grace_period_seconds;
    }
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    entry.was_ready |= ready;
    let terminated = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "fanout"))
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    if let Some(terminated) = terminated
        && entry.exit_seen.is_none()
    {
        entry.exit_seen = Some(now);
        entry.exit_code = Some(terminated.exit_code);
    }
}

/// When a Lease's holder changed, and to whom (`None`: released).
pub type HolderChanges = Vec<(Instant, Option<String>)>;

/// Every change of a Lease's holder, in order.
pub struct LeaseRecorder {
    changes: Arc<Mutex<HolderChanges>>,
    task: JoinHandle<()>,
}

impl LeaseRecorder {
    pub fn start(client: kube::Client, namespace: &str, name: &str) -> LeaseRecorder {
        let changes: Arc<Mutex<HolderChanges>> = Arc::default();
        let api: Api<Lease> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let sink = changes.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher::watcher(api, config).boxed();
            while let Some(event) = events.next().await {
                let lease = match event {
                    Ok(Event::Apply(lease) | Event::InitApply(lease)) => lease,
                    _ => continue,
                };
                let holder = lease
                    .spec
                    .and_then(|s| s.holder_identity)
                    .filter(|h| !h.is_empty());
                let mut changes = sink.lock().unwrap();
                if changes.last().map(|(_, h)| h) != Some(&holder) {
                    changes.push((Instant::now(), holder));
                }
            }
        });
        LeaseRecorder { changes, task }
    }

    pub fn changes(&self) -> HolderChanges {
        self.changes.lock().unwrap().clone()
    }

    pub fn holder(&self) -> Option<String> {
        self.changes().last().and_then(|(_, h)| h.clone())
    }
}

impl Drop for LeaseRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `kubectl logs -f` of one pod into a file, until the container exits.
pub struct LogFollower {
    child: Child,
    path: PathBuf,
}

impl LogFollower {
    /// One follower per pod of `pods` in `namespace`, each writing to its
    /// own file in `dir`, paired with its pod's name.
    pub fn each(
        node: &crate::node::Node,
        namespace: &str,
        pods: &[String],
        dir: &Path,
    ) -> Vec<(String, LogFollower)> {
        pods.iter()
            .map(|pod| {
                let follower = LogFollower::start(node.command("kubectl"), namespace, pod, dir);
                (pod.clone(), follower)
            })
            .collect()
    }

    pub fn start(mut kubectl: Command, namespace: &str, pod: &str, dir: &Path) -> LogFollower {
        let path = dir.join(format!("{pod}.log"));
        let file = std::fs::File::create(&path).unwrap();
        let child = kubectl
            .args(["logs", "-f", "-n", namespace, pod, "-c", "fanout"])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        LogFollower { child, path }
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// The `phase` fields of the JSON "shutdown phase" lines, in order.
    pub fn phases(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["message"] == "shutdown phase")
            .filter_map(|l| l["phase"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for LogFollower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
