//! `stamp-configmaps`: a second controller on `kube-lifecycle`, to show what
//! the runtime gives any controller. It keeps, on every ConfigMap labelled
//! `stamp.example.dev/enabled=true`, the annotation
//! `stamp.example.dev/checksum` equal to a hash of the ConfigMap's data, so
//! a Deployment can copy it into its pod template and roll when the
//! configuration changes.
//!
//! The domain is the 40 lines of `reconcile`; probes, the drain on SIGTERM,
//! leader election, API deadlines, metrics (`stamp_*`) and the exit code
//! are the runtime's.

use std::convert::Infallible;
use std::future::ready;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::utils::CancelableJoinHandle;
use kube::runtime::{WatchStreamExt, applier, watcher};
use kube::{Api, ResourceExt};
use kube_lifecycle::lease::LeaseSettings;
use kube_lifecycle::watch::requests_on_election;
use kube_lifecycle::{Handles, Runtime};
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;

const LABEL: &str = "stamp.example.dev/enabled=true";
const CHECKSUM: &str = "stamp.example.dev/checksum";

#[derive(Parser)]
struct Flags {
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
    #[arg(long, default_value = "0.0.0.0:8080")]
    admin_addr: std::net::SocketAddr,
    #[arg(long, default_value = "info")]
    log_filter: String,
    #[arg(long, default_value = "text")]
    log_format: String,
    /// Compete for a Lease in this namespace (leader election); none: always lead.
    #[arg(long)]
    lease_namespace: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot stamp ConfigMap {0}")]
struct StampError(String, #[source] kube::Error);

/// Makes the checksum annotation of one ConfigMap true, while leading.
async fn reconcile(cm: Arc<ConfigMap>, handles: Arc<Handles>) -> Result<Action, StampError> {
    let mut hasher = Sha256::new();
    for (key, value) in cm.data.iter().flatten() {
        hasher.update(format!("{}:{key}={}:{value};", key.len(), value.len()));
    }
    let checksum = hex::encode(hasher.finalize());
    if !*handles.leader.borrow() || cm.annotations().get(CHECKSUM) == Some(&checksum) {
        return Ok(Action::await_change());
    }
    let api: Api<ConfigMap> =
        Api::namespaced(handles.client.clone(), &cm.namespace().unwrap_or_default());
    let patch = serde_json::json!({"metadata": {"annotations": {CHECKSUM: checksum}}});
    api.patch(
        &cm.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| StampError(cm.name_any(), e))?;
    tracing::info!(configmap = %cm.name_any(), %checksum, "stamped");
    Ok(Action::await_change())
}

/// The controller: one label-selected watch, gating readiness until it
/// has listed; reconciles until the drain stops the requests and the
/// running reconciles have finished.
async fn run(handles: Handles) -> Result<(), Infallible> {
    let gate = handles.sync_gate("caches-synced");
    let (reader, writer) = reflector::store();
    let api: Api<ConfigMap> = Api::all(handles.client.clone());
    let events = watcher(api, watcher::Config::default().labels(LABEL));
    let changed = gate
        .track("configmaps", events.default_backoff().reflect(writer))
        .applied_objects()
        .filter_map(|cm| ready(cm.ok().map(|cm| ObjectRef::from_obj(&cm))));
    let requests = futures::stream::select(
        changed,
        requests_on_election(handles.leader.clone(), reader.clone()),
    )
    .map(Ok::<_, Infallible>)
    .take_until(handles.drain.clone().cancelled_owned());
    let retry = |_: Arc<ConfigMap>, _: &StampError, _: Arc<Handles>| {
        Action::requeue(Duration::from_secs(5))
    };
    applier(
        |cm, handles| CancelableJoinHandle::spawn(reconcile(cm, handles), &Handle::current()),
        retry,
        Arc::new(handles),
        reader,
        requests,
        controller::Config::default(),
    )
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::warn!(%error, "reconcile failed");
        }
    })
    .await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let flags = Flags::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(flags.log_filter.as_str())
        .with_writer(std::io::stderr);
    if flags.log_format == "json" {
        logs.json().flatten_event(true).init()
    } else {
        logs.init()
    }
    let config = match &flags.kubeconfig {
        Some(path) => {
            kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::read_from(path)?,
                &Default::default(),
            )
            .await?
        }
        None => kube::Config::infer().await?,
    };
    let identity = format!("stamp-{}", std::process::id());
    let lease = flags.lease_namespace.map(|namespace| LeaseSettings {
        name: "stamp-configmaps".into(),
        namespace,
        identity,
        duration: Duration::from_secs(15),
    });
    let exit = Runtime::new("stamp", env!("CARGO_PKG_VERSION"))
        .admin_addr(flags.admin_addr)
        .readiness_checks(&["caches-synced"])
        .leader_election(lease)
        .run(config, run)
        .await?;
    Ok(std::process::ExitCode::from(exit.code()))
}
