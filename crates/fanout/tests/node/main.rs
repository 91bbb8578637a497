//! Fanout on a real node (`scripts/node`): kubelet, containerd and runc run
//! the pods that `helm install` of the chart creates, from an image built of
//! the test's own `fanout` binary in the Dockerfile's runtime layout.
//!
//! What it proves, in one test (the node takes seconds to start and is one
//! per machine, so the steps share it):
//! - the chart's two pods become Ready through the real readiness probe;
//! - `kubectl rollout restart`: kubelet sends each old pod SIGTERM, the pod
//!   logs the drain phases and exits 0 within its grace period; the new pods
//!   become Ready; the Lease moves to a new pod (the handover time is printed);
//! - a Fanout created while the leader drains still ends all Synced, its
//!   status listing every target once, in order, and one created before the
//!   rollout stays Synced;
//! - Debian's Prometheus scrapes every pod behind the metrics Service.
//!
//! And `helm upgrade` from the previous chart release to this one
//! (`upgrade.rs`): copies untouched, old pods drain and exit 0, new pods
//! Ready, a Fanout created during the upgrade converges.
//!
//! The tests take turns, each on a fresh node (one node per machine).
//!
//! It needs root and Debian's containerd, runc and CNI plugins (scripts/node
//! installs what is missing). If the node cannot start, the test FAILS with
//! scripts/node's reason; set FANOUT_NODE_E2E=0 to opt out explicitly.

mod node;
mod observers;
mod prometheus;
mod upgrade;

use std::path::Path;
use std::time::{Duration, Instant};

use node::Node;
use observers::{LeaseRecorder, LogFollower, PodRecorder};
use serde_json::json;

const NAMESPACE: &str = "fanout-system";
const RELEASE: &str = "fanout";
const LEASE: &str = "fanout-leader";
const IMAGE_REPOSITORY: &str = "fanout.local/fanout";
const IMAGE_TAG: &str = "e2e";
const SELECTOR: &str = "app.kubernetes.io/name=fanout";
/// The chart's default: shutdownTimeoutSeconds 25 + gracePeriodMarginSeconds 5.
const GRACE_PERIOD: Duration = Duration::from_secs(30);
const SOURCE_NAMESPACE: &str = "e2e-source";
const CONSENT_LABEL: &str = "fanout.dev/accept-from-all";

#[tokio::test(flavor = "multi_thread")]
async fn helm_install_runs_ready_pods_and_rollout_restart_drains_them() {
    if node::opted_out() {
        eprintln!(
            "NOT RUN: {}=0 opts out of the real-node test",
            node::OPT_OUT_ENV
        );
        return;
    }
    let _turn = node::turn().await;
    let node = Node::up("rollout").unwrap_or_else(|reason| panic!("no real node: {reason}"));
    node.load_image(
        &format!("{IMAGE_REPOSITORY}:{IMAGE_TAG}"),
        Path::new(env!("CARGO_BIN_EXE_fanout")),
    );
    let client = node.client().await;

    // helm install: two pods, Ready through the chart's readiness probe.
    let installing = Instant::now();
    let chart = testkit::repo_root().join("charts/fanout");
    node.run(
        "helm",
        &[
            "install",
            RELEASE,
            chart.to_str().unwrap(),
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--set",
            &format!("image.repository={IMAGE_REPOSITORY}"),
            "--set",
            &format!("image.tag={IMAGE_TAG}"),
            "--set",
            "image.pullPolicy=Never",
            "--set",
            "logFormat=json",
            "--wait",
            "--timeout=180s",
        ],
        NAMESPACE,
    );
    println!(
        "helm install --wait: {} ms to two Ready pods",
        installing.elapsed().as_millis()
    );
    let old_pods = ready_pods(&node);
    assert_eq!(old_pods.len(), 2, "{}", node.diagnostics(NAMESPACE));

    let leases = LeaseRecorder::start(client.clone(), NAMESPACE, LEASE);
    let old_leader = testkit::eventually("a leader", Duration::from_secs(30), || async {
        leases.holder()
    })
    .await;
    assert!(
        old_pods.contains(&old_leader),
        "the Lease is held by {old_leader}, not one of {old_pods:?}"
    );

    // A Fanout reconciled by the in-cluster leader before the rollout.
    source_with_secret(&node);
    let before = create_fanout(&node, "before-rollout", 5);
    wait_all_synced(&node, &before).await;

    // The rollout, watched from every side.
    let pods = PodRecorder::start(client.clone(), NAMESPACE);
    let logs_dir = tempfile::tempdir().unwrap();
    let followers = LogFollower::each(&node, NAMESPACE, &old_pods, logs_dir.path());
    let restarted = Instant::now();
    node.run(
        "kubectl",
        &["rollout", "restart", "deployment/fanout", "-n", NAMESPACE],
        NAMESPACE,
    );

    let (during, new_pods) = ride_rollout(
        &node,
        Rollout {
            pods: &pods,
            old_pods: &old_pods,
            followers: &followers,
            started: restarted,
            what: "rollout restart",
        },
        ("during-rollout", 20),
    )
    .await;
    let new_leader = testkit::eventually("a new leader", Duration::from_secs(30), || async {
        leases.holder().filter(|h| new_pods.contains(h))
    })
    .await;
    report_handover(&leases, &pods, &old_leader, &new_leader);

    // Nothing lost or reordered across the handover.
    wait_all_synced(&node, &during).await;
    wait_all_synced(&node, &before).await;

    // Prometheus scrapes both new pods behind the metrics Service.
    let prometheus = prometheus::scraping_service(client.clone(), NAMESPACE, RELEASE).await;
    let ready = testkit::eventually(
        "Prometheus to scrape fanout_ready from both pods",
        Duration::from_secs(30),
        || async {
            let samples = prometheus.query("fanout_ready").await;
            (samples.len() == 2).then_some(samples)
        },
    )
    .await;
    assert!(
        ready.iter().all(|(_, v)| *v == 1.0),
        "fanout_ready per pod: {ready:?}\n{}",
        prometheus.log()
    );
    let leaders = prometheus.query("fanout_leader").await;
    assert_eq!(
        leaders.iter().map(|(_, v)| *v).collect::<Vec<_>>().len(),
        2,
        "fanout_leader from both pods: {leaders:?}"
    );
    assert_eq!(
        leaders.iter().map(|(_, v)| *v).sum::<f64>(),
        1.0,
        "exactly one pod reports fanout_leader 1: {leaders:?}"
    );

    node.run(
        "helm",
        &["uninstall", RELEASE, "-n", NAMESPACE, "--wait"],
        NAMESPACE,
    );
}

/// Each old pod: SIGTERM, the drain phases in order, exit 0 within its
/// grace period.
/// A rollout in progress, and what watches it.
struct Rollout<'a> {
    pods: &'a PodRecorder,
    old_pods: &'a [String],
    followers: &'a [(String, LogFollower)],
    started: Instant,
    /// How the log names it (`rollout restart`, `helm upgrade`).
    what: &'a str,
}

/// Rides out a rollout: the moment the first old pod is told to stop, a
/// Fanout named `during` over `targets` new namespaces is created; then it
/// waits for the rollout to finish and every old pod to exit, checks each
/// drained, and returns that Fanout and the new pods (two, Ready, none of
/// them old).
async fn ride_rollout(
    node: &Node,
    rollout: Rollout<'_>,
    (during, targets): (&str, usize),
) -> ((String, Vec<String>), Vec<String>) {
    let Rollout {
        pods,
        old_pods,
        followers,
        started,
        what,
    } = rollout;
    testkit::eventually(
        "an old pod being deleted",
        Duration::from_secs(120),
        || async {
            old_pods
                .iter()
                .any(|p| pods.get(p).deletion_seen.is_some())
                .then_some(())
        },
    )
    .await;
    let during = create_fanout(node, during, targets);
    node.run(
        "kubectl",
        &[
            "rollout",
            "status",
            "deployment/fanout",
            "-n",
            NAMESPACE,
            "--timeout=180s",
        ],
        NAMESPACE,
    );
    wait_exited(pods, old_pods).await;
    println!(
        "{what}: {} ms until both old pods had exited",
        started.elapsed().as_millis()
    );
    assert_drained(pods, followers);
    let new_pods = ready_pods(node);
    assert_eq!(new_pods.len(), 2, "{}", node.diagnostics(NAMESPACE));
    for pod in &new_pods {
        assert!(!old_pods.contains(pod), "{pod} survived the {what}");
    }
    (during, new_pods)
}

fn assert_drained(pods: &PodRecorder, followers: &[(String, LogFollower)]) {
    for (pod, follower) in followers {
        let record = pods.get(pod);
        let (Some(deleted), Some(exited)) = (record.deletion_seen, record.exit_seen) else {
            panic!("{pod}: deletion or exit not seen: {record:?}");
        };
        let drain = exited.duration_since(deleted);
        println!(
            "{pod}: exit code {:?} {} ms after its deletion (grace period {:?}s)",
            record.exit_code,
            drain.as_millis(),
            record.grace_seconds
        );
        assert_eq!(
            record.exit_code,
            Some(0),
            "{pod} did not exit 0:\n{}",
            follower.log()
        );
        assert!(
            drain < GRACE_PERIOD,
            "{pod} took {drain:?}, past its grace period"
        );
        let phases: Vec<String> = follower
            .phases()
            .into_iter()
            .filter(|p| p != "running")
            .collect();
        assert_eq!(
            phases,
            [
                "draining",
                "work_drained",
                "lease_released",
                "admin_stopped"
            ]
            .map(String::from),
            "{pod}'s drain phases:\n{}",
            follower.log()
        );
    }
}

/// Waits until each of `old_pods` has exited (its container terminated).
async fn wait_exited(pods: &PodRecorder, old_pods: &[String]) {
    for pod in old_pods {
        testkit::eventually(
            &format!("{pod} to exit"),
            GRACE_PERIOD + Duration::from_secs(30),
            || async { pods.get(pod).exit_code.map(|_| ()) },
        )
        .await;
    }
}

/// Names of the chart's pods that are Ready and not being deleted.
fn ready_pods(node: &Node) -> Vec<String> {
    let json = node.run(
        "kubectl",
        &["get", "pods", "-n", NAMESPACE, "-l", SELECTOR, "-o", "json"],
        NAMESPACE,
    );
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|pod| pod["metadata"]["deletionTimestamp"].is_null())
        .filter(|pod| {
            pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .filter_map(|pod| pod["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// The source namespace with the Secret every Fanout copies.
fn source_with_secret(node: &Node) {
    let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SOURCE_NAMESPACE}},
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "creds", "namespace": SOURCE_NAMESPACE},
         "stringData": {"token": "t0k3n"}},
    ]});
    apply(node, &objects);
}

/// A Fanout of the Secret into `targets` new consenting namespaces; returns
/// its name and its targets in spec order.
fn create_fanout(node: &Node, name: &str, targets: usize) -> (String, Vec<String>) {
    let namespaces: Vec<String> = (0..targets).map(|i| format!("{name}-{i:02}")).collect();
    let items: Vec<serde_json::Value> = namespaces
        .iter()
        .map(|ns| {
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": ns, "labels": {CONSENT_LABEL: "true"}}})
        })
        .collect();
    apply(
        node,
        &json!({"apiVersion": "v1", "kind": "List", "items": items}),
    );
    let fanout = json!({
        "apiVersion": "fanout.dev/v1alpha1",
        "kind": "Fanout",
        "metadata": {"name": name, "namespace": SOURCE_NAMESPACE},
        "spec": {"source": {"kind": "Secret", "name": "creds"},
                 "targets": {"namespaces": namespaces}},
    });
    apply(node, &fanout);
    (name.to_owned(), namespaces)
}

fn apply(node: &Node, object: &serde_json::Value) {
    let mut child = node
        .command("kubectl")
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(object.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Waits until the Fanout's status lists exactly its targets, in spec order,
/// all Synced, and every copy exists.
async fn wait_all_synced(node: &Node, (name, targets): &(String, Vec<String>)) {
    let started = Instant::now();
    let mut last = Vec::new();
    while started.elapsed() < Duration::from_secs(90) {
        last = target_states(node, name);
        let listed: Vec<&String> = last.iter().map(|(ns, _)| ns).collect();
        if listed == targets.iter().collect::<Vec<_>>() && last.iter().all(|(_, s)| s == "Synced") {
            for ns in targets {
                node.run("kubectl", &["get", "secret", "creds", "-n", ns], NAMESPACE);
            }
            println!(
                "Fanout {name}: {} targets Synced in order ({} ms after the check began)",
                targets.len(),
                started.elapsed().as_millis()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "Fanout {name} never had all of {targets:?} Synced in order; last status: {last:?}\n{}",
        node.diagnostics(NAMESPACE)
    );
}

fn target_states(node: &Node, name: &str) -> Vec<(String, String)> {
    let json = node.run(
        "kubectl",
        &["get", "fanout", name, "-n", SOURCE_NAMESPACE, "-o", "json"],
        NAMESPACE,
    );
    let fanout: serde_json::Value = serde_json::from_str(&json).unwrap();
    fanout["status"]["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["namespace"].as_str().unwrap_or_default().to_owned(),
                t["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Prints how leadership moved: every holder change, and the time from the
/// old leader's deletion (SIGTERM) to a new pod holding the Lease.
fn report_handover(leases: &LeaseRecorder, pods: &PodRecorder, old_leader: &str, new_leader: &str) {
    let changes = leases.changes();
    let origin = changes
        .first()
        .map(|(t, _)| *t)
        .unwrap_or_else(Instant::now);
    for (at, holder) in &changes {
        println!(
            "lease {LEASE}: +{} ms holder {}",
            at.duration_since(origin).as_millis(),
            holder.as_deref().unwrap_or("(none)")
        );
    }
    let Some(deleted) = pods.get(old_leader).deletion_seen else {
        return;
    };
    // The first pod other than the old leader to hold the Lease after its
    // deletion: the other old pod if the leader was replaced first.
    let successor = changes
        .iter()
        .find(|(at, h)| *at >= deleted && h.as_deref().is_some_and(|h| h != old_leader));
    if let Some((acquired, Some(successor))) = successor {
        println!(
            "leadership handover: {old_leader} -> {successor} {} ms after the old leader's deletion \
             (final leader {new_leader})",
            acquired.duration_since(deleted).as_millis()
        );
    }
}
