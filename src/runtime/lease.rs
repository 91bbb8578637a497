//! Leader election on a `coordination.k8s.io/v1` Lease, released on drain.
//!
//! The locking itself is `kube-lease-manager`'s (server-side apply with
//! conflict detection, renewal before expiry, release). What it lacks is a
//! prompt handover: a standby trusts its last reading of the Lease until the
//! holder's term would expire, so a released lease sits free for up to a
//! lease duration. We add a watch on the one Lease object: when a standby
//! sees it released, it starts a fresh manager, whose first step re-reads the
//! Lease and takes it. A `kubectl rollout restart` therefore hands over in
//! well under a second; a SIGKILLed leader, which cannot release, is replaced
//! once its lease expires, as it must be.
//!
//! The election runs in one task owned by [`Leadership`]; losing the lease
//! or failing to renew it publishes `false`, so the controller stops
//! reconciling rather than acting without the lock.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::metrics::RuntimeMetrics;

/// Where the Lease lives and who we are.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// The Lease's name.
    pub name: String,
    /// The Lease's namespace.
    pub namespace: String,
    /// This process' identity as holder (the pod name in a cluster).
    pub identity: String,
    /// How long the lease is valid after each renewal; a SIGKILLed leader is
    /// replaced after at most this long.
    pub duration: Duration,
}

/// Errors of the leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The lease manager could not read, create or patch the Lease.
    #[error("leader lease {namespace}/{name}")]
    Manager {
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// What the lease manager reported.
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    /// The election task panicked or was cancelled.
    #[error("leader election task ended abnormally")]
    Task(#[source] tokio::task::JoinError),
}

/// This process' view of leadership, and the task that maintains it.
#[derive(Debug)]
pub struct Leadership {
    leader: watch::Receiver<bool>,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), LeaseError>>>,
}

/// Seconds between retries when the API server cannot be reached.
const RETRY_DELAY: Duration = Duration::from_secs(1);

impl Leadership {
    /// For `--leader-election=false`: this process always leads.
    pub fn always() -> Self {
        let (_tx, leader) = watch::channel(true);
        Self {
            leader,
            stop: CancellationToken::new(),
            task: None,
        }
    }

    /// Starts competing for the Lease in a background task.
    pub fn spawn(client: kube::Client, settings: LeaseSettings, metrics: RuntimeMetrics) -> Self {
        let (tx, leader) = watch::channel(false);
        let stop = CancellationToken::new();
        let span = info_span!("lease", lease = %settings.name, namespace = %settings.namespace);
        let task =
            tokio::spawn(elect(client, settings, tx, metrics, stop.clone()).instrument(span));
        Self {
            leader,
            stop,
            task: Some(task),
        }
    }

    /// A receiver that holds `true` while this process leads.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Stops competing and releases the Lease if held, so a standby takes
    /// over now rather than after the lease expires.
    pub async fn release(mut self) -> Result<(), LeaseError> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task.await.map_err(LeaseError::Task)?,
            None => Ok(()),
        }
    }
}

/// The election loop: build the manager, then alternate between the
/// manager's `changed()` and Lease watch events until told to stop.
async fn elect(
    client: kube::Client,
    settings: LeaseSettings,
    tx: watch::Sender<bool>,
    metrics: RuntimeMetrics,
    stop: CancellationToken,
) -> Result<(), LeaseError> {
    let error = |source| LeaseError::Manager {
        namespace: settings.namespace.clone(),
        name: settings.name.clone(),
        source,
    };
    let mut manager = tokio::select! {
        manager = build_manager(&client, &settings) => manager,
        () = stop.cancelled() => return Ok(()),
    };
    let api: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let selector = format!("metadata.name={}", settings.name);
    let mut lease_changes = watcher(api, watcher::Config::default().fields(&selector))
        .applied_objects()
        .boxed();
    let publish = |leader: bool| {
        if *tx.borrow() != leader {
            info!(leader, "leadership changed");
        }
        metrics.set_leader(leader);
        tx.send_replace(leader);
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            changed = manager.changed() => match changed {
                Ok(leader) => publish(leader),
                Err(err) => {
                    warn!(error = %error(err), "leader election failed; standing by");
                    publish(false);
                    tokio::time::sleep(RETRY_DELAY).await;
                }
            },
            event = lease_changes.next() => match event {
                Some(Ok(lease)) if !*tx.borrow() && is_free(&lease) => {
                    debug!("lease released; taking it");
                    manager = tokio::select! {
                        manager = build_manager(&client, &settings) => manager,
                        () = stop.cancelled() => break,
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    debug!(error = %err, "lease watch error; retrying");
                    tokio::time::sleep(RETRY_DELAY).await;
                }
                None => break,
            },
        }
    }
    let was_leader = *tx.borrow();
    publish(false);
    manager.release().await.map_err(error)?;
    if was_leader {
        info!("leader lease released");
    }
    Ok(())
}

/// Whether nobody holds `lease` (its holder released it).
fn is_free(lease: &Lease) -> bool {
    lease
        .spec
        .as_ref()
        .and_then(|spec| spec.holder_identity.as_deref())
        .is_none_or(str::is_empty)
}

/// Builds the lease manager, creating the Lease if needed; retries until the
/// API server answers, since a controller without its lease can still serve
/// probes and keep its caches warm.
async fn build_manager(client: &kube::Client, settings: &LeaseSettings) -> LeaseManager {
    let duration = settings.duration.as_secs().max(2);
    loop {
        let built = LeaseManagerBuilder::new(client.clone(), &settings.name)
            .with_namespace(&settings.namespace)
            .with_identity(&settings.identity)
            .with_duration(duration)
            .with_grace(duration / 3)
            .build()
            .await;
        match built {
            Ok(manager) => return manager,
            Err(err) => {
                warn!(error = %err, "cannot set up the leader lease yet; retrying");
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
    }
}
