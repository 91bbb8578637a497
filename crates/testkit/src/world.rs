//! A test's world on the shared testbed: the CRD, a source namespace with a
//! Secret, consenting target namespaces, a label that ties the test's
//! Fanouts to the test's own controllers (`--fanout-selector`), and the
//! identity those controllers run as: the Helm chart's own ServiceAccount,
//! ClusterRole and leader-election Role, rendered from `charts/fanout` and
//! used through a TokenRequest token. Every binary-level test therefore also
//! proves that the chart's RBAC is enough for what the test exercises.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::testbed as support;

/// The CRD the chart ships (kept equal to what `fanout crd` prints by the
/// packaging tests).
pub fn crd_path() -> PathBuf {
    support::repo_root().join("charts/fanout/crds/fanout.dev_fanouts.yaml")
}

/// Installs the chart's CRD and waits until it is served; once per control
/// plane and test binary (tests run in parallel, and two concurrent creates
/// of one CRD make the second fail).
pub fn install_crd(cluster: &support::Cluster) {
    static INSTALLED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if installed.contains(&cluster.server_url()) {
        return;
    }
    let crd = std::fs::read_to_string(crd_path()).expect("read the chart's CRD");
    cluster.apply_yaml(&crd);
    cluster.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/fanouts.fanout.dev",
        "--timeout=60s",
    ]);
    installed.push(cluster.server_url());
}

/// A test's world: a source namespace with a Secret, `targets` consenting
/// namespaces, and the selector value its Fanouts and controllers share.
pub struct World {
    pub source: support::TestNamespace,
    pub targets: Vec<support::TestNamespace>,
    pub shard: String,
    /// A kubeconfig for the chart's ServiceAccount (token, not admin).
    pub kubeconfig: PathBuf,
    /// The Lease the chart's Role lets that ServiceAccount use.
    pub lease: String,
    _dir: tempfile::TempDir,
}

impl World {
    pub async fn new(cluster: &support::Cluster, targets: usize) -> World {
        install_crd(cluster);
        let source = cluster.namespace("lc-src").await;
        let secrets: Api<Secret> = Api::namespaced(cluster.client(), source.name());
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "creds"},
            "stringData": {"token": "t0k3n"},
        }))
        .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let mut namespaces = Vec::new();
        for _ in 0..targets {
            let ns = cluster.namespace("lc-dst").await;
            let api: Api<Namespace> = Api::all(cluster.client());
            let patch = json!({"metadata": {"labels": {"fanout.dev/accept-from-all": "true"}}});
            api.patch(
                ns.name(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
            namespaces.push(ns);
        }
        let release = support::random_name("fanout");
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            chart_identity(cluster, &release, source.name()).await,
        )
        .unwrap();
        World {
            source,
            targets: namespaces,
            shard: support::random_name("shard"),
            kubeconfig,
            lease: format!("{release}-leader"),
            _dir: dir,
        }
    }

    /// Flags that give a controller this world's Lease and Fanouts, then `extra`.
    pub fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--lease-namespace".into(),
            self.source.name().into(),
            "--lease-name".into(),
            self.lease.clone(),
            "--fanout-selector".into(),
            format!("fanout.dev/test={}", self.shard),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    /// Creates a Fanout of the Secret into every target namespace.
    pub async fn create_fanout(&self, cluster: &support::Cluster) -> String {
        let name = support::random_name("fo");
        let targets: Vec<&str> = self.targets.iter().map(|ns| ns.name()).collect();
        let fanout = json!({
            "apiVersion": "fanout.dev/v1alpha1",
            "kind": "Fanout",
            "metadata": {"name": name, "namespace": self.source.name(),
                         "labels": {"fanout.dev/test": self.shard}},
            "spec": {"source": {"kind": "Secret", "name": "creds"},
                     "targets": {"namespaces": targets}},
        });
        cluster.apply_yaml(&serde_json::to_string(&fanout).unwrap());
        name
    }

    /// The Fanout as `kubectl get -o json` shows it.
    pub fn fanout_json(&self, cluster: &support::Cluster, name: &str) -> serde_json::Value {
        let json = cluster.kubectl(&[
            "get",
            "fanout",
            name,
            "-n",
            self.source.name(),
            "-o",
            "json",
        ]);
        serde_json::from_str(&json).unwrap()
    }

    /// The Fanout's status.targets as (namespace, state) pairs.
    pub fn target_states(&self, cluster: &support::Cluster, name: &str) -> Vec<(String, String)> {
        listed_states(&self.fanout_json(cluster, name))
    }

    /// Waits until at least `n` targets are Synced: for fewer than all, as
    /// counted by the status's summary (a status written in the middle of a
    /// pass lists only the targets needing attention, so its list holds no
    /// Synced entry); for all, until the pass's final status lists them.
    pub async fn wait_synced(&self, cluster: &support::Cluster, name: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let fanout = self.fanout_json(cluster, name);
            let summary = &fanout["status"]["summary"];
            let counted = |field: &str| summary[field].as_u64().unwrap_or(0) as usize;
            let listed = listed_states(&fanout)
                .iter()
                .filter(|(_, s)| s == "Synced")
                .count();
            if listed >= n || (counted("synced") >= n && n < counted("desired")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} targets synced",
                counted("synced")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// status.targets of a Fanout's JSON as (namespace, state) pairs.
fn listed_states(fanout: &serde_json::Value) -> Vec<(String, String)> {
    fanout["status"]["targets"]
        .as_array()
        .map(|targets| {
            targets
                .iter()
                .map(|t| {
                    (
                        t["namespace"].as_str().unwrap_or_default().to_owned(),
                        t["state"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Installs the chart's ServiceAccount, ClusterRole(Binding) and
/// leader-election Role(Binding) as Helm renders them for a release named
/// `release` in `namespace`, and returns a kubeconfig with a token of that
/// ServiceAccount.
pub async fn chart_identity(cluster: &support::Cluster, release: &str, namespace: &str) -> String {
    let chart = support::repo_root().join("charts/fanout");
    let output = cluster
        .command("helm")
        .args(["template", release])
        .arg(&chart)
        .args([
            "--namespace",
            namespace,
            "--set",
            &format!("fullnameOverride={release}"),
        ])
        // Required by the chart (no public image); unused by these templates.
        .args(["--set", "image.repository=fanout.local/fanout"])
        .args(["--show-only", "templates/serviceaccount.yaml"])
        .args(["--show-only", "templates/clusterrole.yaml"])
        .args(["--show-only", "templates/leader-election-role.yaml"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    cluster.apply_yaml(&String::from_utf8(output.stdout).unwrap());
    let token = cluster.service_account_token(namespace, release).await;
    cluster.token_kubeconfig(&token)
}
