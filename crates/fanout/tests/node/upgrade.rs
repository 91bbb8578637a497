//! `helm upgrade` from the previous chart release to this one, on the real
//! node, with Fanouts converged, done the way the README tells users: the
//! CRD first (`kubectl apply --server-side --force-conflicts -f
//! charts/fanout/crds/`: Helm never upgrades `crds/`), then `helm upgrade`
//! with the same values.
//!
//! The previous release is the chart as it was just before the last commit
//! that changed its `version:` (found in this repository's history with
//! `git log -G`, extracted with `git archive`), run with the current image:
//! a chart upgrade, not an image upgrade. What it proves:
//! - the copies of a Fanout converged under the old release are untouched
//!   (same uid and resourceVersion) once the new release leads;
//! - every old pod gets SIGTERM, logs the drain phases and exits 0 within
//!   its grace period; two new pods of the new chart become Ready and one
//!   of them takes the Lease;
//! - a Fanout created while the old leader drains converges.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::node::{self, Node};
use crate::observers::{LeaseRecorder, LogFollower, PodRecorder};
use crate::{
    IMAGE_REPOSITORY, IMAGE_TAG, LEASE, NAMESPACE, RELEASE, Rollout, create_fanout, ready_pods,
    report_handover, ride_rollout, source_with_secret, wait_all_synced,
};

const CHART: &str = "charts/fanout";

/// The values both releases are installed with (the same, so the upgrade
/// changes the chart and nothing else).
fn values() -> Vec<String> {
    [
        format!("image.repository={IMAGE_REPOSITORY}"),
        format!("image.tag={IMAGE_TAG}"),
        "image.pullPolicy=Never".to_owned(),
        "logFormat=json".to_owned(),
    ]
    .into_iter()
    .flat_map(|value| ["--set".to_owned(), value])
    .collect()
}

fn git(args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(testkit::repo_root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run git {args:?}: {e}"));
    assert!(
        output.status.success(),
        "git {args:?} failed (the upgrade test needs this repository's history): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The previous chart release, extracted into a temporary directory.
struct PreviousChart {
    /// The commit it was taken from.
    commit: String,
    /// Its `version:`.
    version: String,
    dir: tempfile::TempDir,
}

impl PreviousChart {
    /// The chart at the parent of the last commit that changed its version.
    fn extract() -> PreviousChart {
        let chart_yaml = format!("{CHART}/Chart.yaml");
        let bump = git(&["log", "-1", "--format=%H", "-G^version:", "--", &chart_yaml]);
        let bump = bump.trim();
        assert!(!bump.is_empty(), "no commit changed {chart_yaml}'s version");
        let commit = git(&["rev-parse", &format!("{bump}^")]).trim().to_owned();
        let dir = tempfile::tempdir().unwrap();
        let archive = Command::new("git")
            .args(["archive", "--format=tar", &commit, CHART])
            .current_dir(testkit::repo_root())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            archive.status.success(),
            "git archive {commit} {CHART}: {}",
            String::from_utf8_lossy(&archive.stderr)
        );
        let mut tar = Command::new("tar")
            .args(["-x", "-C"])
            .arg(dir.path())
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut tar.stdin.take().unwrap(), &archive.stdout).unwrap();
        assert!(
            tar.wait().unwrap().success(),
            "tar -x of the previous chart"
        );
        let version = chart_version(&dir.path().join(&chart_yaml));
        PreviousChart {
            commit,
            version,
            dir,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join(CHART)
    }
}

/// The `version:` of a Chart.yaml.
fn chart_version(chart_yaml: &Path) -> String {
    let text = std::fs::read_to_string(chart_yaml).unwrap();
    let chart: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    chart["version"]
        .as_str()
        .expect("a chart version")
        .to_owned()
}

/// Every copy's (namespace, uid, resourceVersion).
async fn copies(client: &kube::Client, targets: &[String]) -> BTreeMap<String, (String, String)> {
    let mut found = BTreeMap::new();
    for namespace in targets {
        let copy = Api::<Secret>::namespaced(client.clone(), namespace)
            .get("creds")
            .await
            .unwrap();
        found.insert(
            namespace.clone(),
            (
                copy.metadata.uid.unwrap_or_default(),
                copy.metadata.resource_version.unwrap_or_default(),
            ),
        );
    }
    found
}

/// `fanout_targets{state="Synced"}` on `pod`, read through the API
/// server's pod proxy from its admin port: the Synced targets of the
/// Fanouts this process has finished a pass of (each pass sets its
/// Fanout's share; nothing else does).
fn synced_targets(node: &Node, pod: &str) -> Option<f64> {
    let path = format!("/api/v1/namespaces/{NAMESPACE}/pods/{pod}:8080/proxy/metrics");
    let output = node.output("kubectl", &["get", "--raw", &path]);
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|l| l.starts_with(r#"fanout_targets{state="Synced"}"#))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, value)| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_upgrade_from_the_previous_chart_keeps_copies_and_drains_the_old_pods() {
    if node::opted_out() {
        eprintln!(
            "NOT RUN: {}=0 opts out of the real-node test",
            node::OPT_OUT_ENV
        );
        return;
    }
    let previous = PreviousChart::extract();
    let current = testkit::repo_root().join(CHART);
    let current_version = chart_version(&current.join("Chart.yaml"));
    assert_ne!(
        previous.version, current_version,
        "the previous release must be another version"
    );
    println!(
        "upgrading chart {} (commit {}) to {current_version} (this tree), image {IMAGE_REPOSITORY}:{IMAGE_TAG} for both",
        previous.version,
        &previous.commit[..12]
    );

    let _turn = node::turn().await;
    let node = Node::up("upgrade").unwrap_or_else(|reason| panic!("no real node: {reason}"));
    node.load_image(
        &format!("{IMAGE_REPOSITORY}:{IMAGE_TAG}"),
        Path::new(env!("CARGO_BIN_EXE_fanout")),
    );
    let client = node.client().await;

    // The previous release, installed as a user installed it then.
    let mut install = vec![
        "install".to_owned(),
        RELEASE.to_owned(),
        previous.path().to_str().unwrap().to_owned(),
        "--namespace".to_owned(),
        NAMESPACE.to_owned(),
        "--create-namespace".to_owned(),
        "--wait".to_owned(),
        "--timeout=180s".to_owned(),
    ];
    install.extend(values());
    let args: Vec<&str> = install.iter().map(String::as_str).collect();
    node.run("helm", &args, NAMESPACE);
    let old_pods = ready_pods(&node);
    assert_eq!(old_pods.len(), 2, "{}", node.diagnostics(NAMESPACE));
    let leases = LeaseRecorder::start(client.clone(), NAMESPACE, LEASE);
    let old_leader = testkit::eventually("a leader", Duration::from_secs(30), || async {
        leases.holder()
    })
    .await;

    // A Fanout converged under the previous release.
    source_with_secret(&node);
    let before = create_fanout(&node, "before-upgrade", 5);
    wait_all_synced(&node, &before).await;
    let copies_before = copies(&client, &before.1).await;

    let pods = PodRecorder::start(client.clone(), NAMESPACE);
    let logs_dir = tempfile::tempdir().unwrap();
    let followers = LogFollower::each(&node, NAMESPACE, &old_pods, logs_dir.path());

    // The upgrade as the README says: the CRD first, then the release.
    let crds = current.join("crds");
    node.run(
        "kubectl",
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            crds.to_str().unwrap(),
        ],
        NAMESPACE,
    );
    let upgrading = Instant::now();
    let mut upgrade = vec![
        "upgrade".to_owned(),
        RELEASE.to_owned(),
        current.to_str().unwrap().to_owned(),
        "--namespace".to_owned(),
        NAMESPACE.to_owned(),
    ];
    upgrade.extend(values());
    let args: Vec<&str> = upgrade.iter().map(String::as_str).collect();
    node.run("helm", &args, NAMESPACE);

    let (during, new_pods) = ride_rollout(
        &node,
        Rollout {
            pods: &pods,
            old_pods: &old_pods,
            followers: &followers,
            started: upgrading,
            what: "helm upgrade",
        },
        ("during-upgrade", 10),
    )
    .await;
    // The new pods run the new chart; one of them leads.
    for pod in &new_pods {
        let chart_label = node.run(
            "kubectl",
            &[
                "get",
                "pod",
                pod,
                "-n",
                NAMESPACE,
                "-o",
                "jsonpath={.metadata.labels.helm\\.sh/chart}",
            ],
            NAMESPACE,
        );
        assert_eq!(chart_label, format!("fanout-{current_version}"), "{pod}");
    }
    let new_leader = testkit::eventually("a new leader", Duration::from_secs(30), || async {
        leases.holder().filter(|h| new_pods.contains(h))
    })
    .await;
    report_handover(&leases, &pods, &old_leader, &new_leader);

    // The Fanout created during the upgrade converges; the new leader has
    // finished a pass of both Fanouts, and the copies made under the old
    // release are untouched.
    wait_all_synced(&node, &during).await;
    let all = (before.1.len() + during.1.len()) as f64;
    testkit::eventually(
        "the new leader to have finished a pass of both Fanouts",
        Duration::from_secs(60),
        || async { (synced_targets(&node, &new_leader)? == all).then_some(()) },
    )
    .await;
    wait_all_synced(&node, &before).await;
    let copies_after = copies(&client, &before.1).await;
    assert_eq!(
        copies_after, copies_before,
        "copies rewritten by the upgrade"
    );
    println!(
        "the {} copies made under chart {} are untouched (uid and resourceVersion) under {current_version}",
        copies_after.len(),
        previous.version
    );

    drop(followers);
    drop(pods);
    node.run(
        "helm",
        &["uninstall", RELEASE, "-n", NAMESPACE, "--wait"],
        NAMESPACE,
    );
}
