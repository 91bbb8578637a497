//! The bench's world on the cluster: the CRD, a source namespace, target
//! namespaces labelled so that a selector picks the first N of them (or a
//! group of them), the Secret that is copied, and Fanouts of it.
//!
//! Every object the bench makes for one run carries [`RUN_LABEL`] (copies
//! inherit it from their source), so a run is cleaned up by one selector.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use fanout::Fanout;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::options::Shape;

/// Namespace of the sources, the Fanouts and the leader Lease.
pub const SOURCE_NAMESPACE: &str = "bench-src";
/// Label on everything one run creates; copies inherit it from the source.
pub const RUN_LABEL: &str = "bench.fanout.dev/run";
/// Label tying a Fanout to the controller started for it (`--fanout-selector`).
pub const SHARD_LABEL: &str = "bench.fanout.dev/shard";
/// Label grouping target namespaces (the memory section selects by group).
pub const GROUP_LABEL: &str = "bench.fanout.dev/group";

/// The name of target namespace `i`.
pub fn target(i: usize) -> String {
    format!("bench-t-{i:05}")
}

/// The label carried by target namespaces 0..n.
pub fn first_label(n: usize) -> String {
    format!("bench.fanout.dev/first-{n}")
}

/// The group of target namespace `i`.
pub fn group(i: usize, group_size: usize) -> String {
    format!("g{:03}", i / group_size)
}

/// Installs the CRD the binary prints and creates every namespace the shape needs.
pub async fn prepare(cluster: &Cluster, bin: &Path, shape: &Shape) -> Result<()> {
    install_crd(cluster, bin)?;
    let sizes = shape.first_sizes();
    let mut namespaces = vec![(SOURCE_NAMESPACE.to_owned(), BTreeMap::new())];
    for i in 0..shape.namespaces() {
        let mut labels =
            BTreeMap::from([("fanout.dev/accept-from-all".to_owned(), "true".to_owned())]);
        for &n in sizes.iter().filter(|&&n| i < n) {
            labels.insert(first_label(n), "true".to_owned());
        }
        if i < shape.memory_namespaces {
            labels.insert(GROUP_LABEL.to_owned(), group(i, shape.memory_group));
        }
        namespaces.push((target(i), labels));
    }
    cluster.ensure_namespaces(namespaces).await
}

fn install_crd(cluster: &Cluster, bin: &Path) -> Result<()> {
    let crd = Command::new(bin)
        .arg("crd")
        .output()
        .with_context(|| format!("running {} crd", bin.display()))?;
    if !crd.status.success() {
        bail!(
            "fanout crd failed: {}",
            String::from_utf8_lossy(&crd.stderr)
        );
    }
    let mut apply = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("running kubectl apply")?;
    apply
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(&crd.stdout)?;
    if !apply.wait()?.success() {
        bail!("kubectl apply of the CRD failed");
    }
    let wait = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args([
            "wait",
            "--for=condition=Established",
            "crd/fanouts.fanout.dev",
        ])
        .args(["--timeout=60s"])
        .stdout(Stdio::null())
        .status()?;
    if !wait.success() {
        bail!("the Fanout CRD was not established");
    }
    Ok(())
}

/// The content every copy holds: a registry credential of a realistic size.
fn payload() -> BTreeMap<String, ByteString> {
    let auth = "YmVuY2g6c2VjcmV0LXRva2VuLTAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVm";
    let config = format!(
        r#"{{"auths":{{"registry.example.com":{{"username":"bench","password":"secret-token-0123456789abcdef","auth":"{auth}"}}}}}}"#
    );
    BTreeMap::from([(
        ".dockerconfigjson".to_owned(),
        ByteString(config.into_bytes()),
    )])
}

/// A source Secret `name` in the source namespace, labelled with `run`.
pub fn source_secret(name: &str, run: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(SOURCE_NAMESPACE.to_owned()),
            labels: Some(BTreeMap::from([(RUN_LABEL.to_owned(), run.to_owned())])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".to_owned()),
        data: Some(payload()),
        ..Secret::default()
    }
}

/// What the baseline writes into each namespace: the same Secret as a copy
/// the controller writes, with labels and annotations of the same sizes
/// (under keys the controller does not watch, so that an idle controller
/// never sees the baseline's objects).
pub fn baseline_copy(name: &str, run: &str, namespace: &str) -> Secret {
    let labels = BTreeMap::from([
        (RUN_LABEL.to_owned(), run.to_owned()),
        (
            "bench.fanout.dev/managed-by".to_owned(),
            "fanout".to_owned(),
        ),
        (
            "bench.fanout.dev/fanout-namespace".to_owned(),
            SOURCE_NAMESPACE.to_owned(),
        ),
        (
            "bench.fanout.dev/fanout-name".to_owned(),
            format!("fo-{run}"),
        ),
        (
            "bench.fanout.dev/fanout-uid".to_owned(),
            "6f1c2a9e-3d4b-4c5d-9e8f-0a1b2c3d4e5f".to_owned(),
        ),
    ]);
    let annotations = BTreeMap::from([
        (
            "bench.fanout.dev/content-hash".to_owned(),
            format!("sha256:{}", "0123456789abcdef".repeat(4)),
        ),
        (
            "bench.fanout.dev/source".to_owned(),
            format!("{SOURCE_NAMESPACE}/src-{run}"),
        ),
        (
            "bench.fanout.dev/synced-at".to_owned(),
            "2025-01-01T00:00:00Z".to_owned(),
        ),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".to_owned()),
        data: Some(payload()),
        ..Secret::default()
    }
}

/// A Fanout `name` of Secret `source` into `targets` (a `spec.targets`
/// object), copied as `copy_name`, watched by the controller of `shard`.
pub fn fanout(
    name: &str,
    shard: &str,
    source: &str,
    copy_name: &str,
    targets: Value,
) -> Result<Fanout> {
    serde_json::from_value(json!({
        "apiVersion": "fanout.dev/v1alpha1",
        "kind": "Fanout",
        "metadata": {"name": name, "namespace": SOURCE_NAMESPACE, "labels": {SHARD_LABEL: shard}},
        "spec": {"source": {"kind": "Secret", "name": source}, "copyName": copy_name, "targets": targets},
    }))
    .context("building a Fanout")
}

/// `spec.targets` selecting the first `n` target namespaces.
pub fn first(n: usize) -> Value {
    json!({"selector": {"matchLabels": {first_label(n): "true"}}})
}

/// Creates `fanout`.
pub async fn create_fanout(client: &Client, fanout: &Fanout) -> Result<()> {
    Api::<Fanout>::namespaced(client.clone(), SOURCE_NAMESPACE)
        .create(&PostParams::default(), fanout)
        .await
        .context("creating a Fanout")?;
    Ok(())
}

/// Removes Fanout `name` without the controller: its finalizer is dropped
/// (the bench deletes the copies itself, faster than a controller under a QPS limit).
pub async fn remove_fanout(client: &Client, name: &str) -> Result<()> {
    let api: Api<Fanout> = Api::namespaced(client.clone(), SOURCE_NAMESPACE);
    let patch = json!({"metadata": {"finalizers": null}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(e) => return Err(e).context("dropping a Fanout's finalizer"),
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e).context("deleting a Fanout"),
    }
}

/// Deletes everything of run `run`: its Fanouts (finalizers dropped), its
/// sources and copies. Returns how many Secrets were deleted.
pub async fn clean_up(cluster: &Cluster, run: &str, fanouts: &[String]) -> Result<usize> {
    for name in fanouts {
        remove_fanout(&cluster.client, name).await?;
    }
    cluster
        .delete_secrets_labelled(&format!("{RUN_LABEL}={run}"))
        .await
}
