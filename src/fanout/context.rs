//! What every reconcile shares: the client, the caches, the global write
//! cap, metrics, the event recorder, and the runtime's leader and drain
//! signals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::runtime::health::Watchdog;

use super::api::Caller;
use super::consent::ConsentRule;
use super::copy::{CopyKind, Owner};
use super::crd::Fanout;
use super::metrics::FanoutMetrics;
use super::queue::QueueDepth;
use super::retry::Failures;
use super::running::Running;
use super::settings::Settings;
use super::targets::{InvalidSelector, NamespaceView, resolve};

/// The controller's caches. Memory is bounded by what the controller owns or
/// needs, never by the cluster's unrelated Secrets: Fanouts, namespace
/// *metadata*, and copies selected by the `fanout.dev/managed-by` label.
#[derive(Clone)]
pub struct Stores {
    /// Fanouts (within the optional selector).
    pub fanouts: Store<Fanout>,
    /// Namespace metadata (labels for selectors and consent).
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Secrets made by any Fanout.
    pub secrets: Store<Secret>,
    /// ConfigMaps made by any Fanout.
    pub config_maps: Store<ConfigMap>,
    /// Which of them have listed once.
    pub listed: Listed,
}

impl Stores {
    /// Waits until every cache has listed once; `false` if `stop` fires first.
    pub async fn ready(&self, stop: &CancellationToken) -> bool {
        loop {
            if self.listed.all() {
                return true;
            }
            tokio::select! {
                () = tokio::time::sleep(READY_POLL) => {}
                () = stop.cancelled() => return false,
            }
        }
    }
}

/// How often [`Stores::ready`] looks again.
const READY_POLL: Duration = Duration::from_millis(50);

/// One of the controller's caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cache {
    /// Fanouts.
    Fanouts = 0,
    /// Namespace metadata.
    Namespaces = 1,
    /// Secret copies.
    Secrets = 2,
    /// ConfigMap copies.
    ConfigMaps = 3,
}

/// Which caches have completed their first list, set by the watch streams.
///
/// Tracked here rather than asked of `Store::wait_until_ready`: that future
/// sits on a oneshot receiver that keeps a single waker, so a second waiter
/// (or a poll) would steal the wake-up kube-runtime's applier is waiting for.
#[derive(Clone, Debug, Default)]
pub struct Listed(Arc<[AtomicBool; 4]>);

impl Listed {
    /// Records that `cache` has listed.
    pub fn mark(&self, cache: Cache) {
        self.0[cache as usize].store(true, Ordering::Release);
    }

    /// Whether `cache` has listed.
    pub fn has(&self, cache: Cache) -> bool {
        self.0[cache as usize].load(Ordering::Acquire)
    }

    /// Whether every cache has listed.
    pub fn all(&self) -> bool {
        self.0.iter().all(|listed| listed.load(Ordering::Acquire))
    }
}

/// A copyable kind whose copies are cached.
pub trait Cached: CopyKind {
    /// The cache of this kind's copies.
    fn cache(stores: &Stores) -> &Store<Self>;
}

impl Cached for Secret {
    fn cache(stores: &Stores) -> &Store<Self> {
        &stores.secrets
    }
}

impl Cached for ConfigMap {
    fn cache(stores: &Stores) -> &Store<Self> {
        &stores.config_maps
    }
}

/// Shared by every reconcile.
pub struct Context {
    /// Rate-limited client from the runtime.
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// Caches.
    pub stores: Stores,
    /// Global cap on writes in flight (`--fanout-concurrency`), shared by
    /// every reconcile so concurrent Fanouts cannot multiply it.
    pub writes: Semaphore,
    /// Metrics.
    pub metrics: FanoutMetrics,
    /// Publishes Events on Fanouts.
    pub recorder: Recorder,
    /// Running reconciles, to cancel one.
    pub running: Running,
    /// `true` while this process holds the lease.
    pub leader: watch::Receiver<bool>,
    /// First signal: stop launching work.
    pub drain: CancellationToken,
    /// Drain deadline: drop running work.
    pub abort: CancellationToken,
    /// Queue depth bookkeeping.
    pub queue: QueueDepth,
    /// Consecutive failed passes per Fanout, for the retry backoff.
    pub failures: Failures,
    /// The reconcile loop's liveness watchdog: every running reconcile
    /// holds it busy, every API call that ends moves it.
    pub watchdog: Watchdog,
}

impl Context {
    /// Whether this process may write now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Makes API calls for work cancelled by `cancel` (see [`Caller`]).
    pub fn caller<'a>(&'a self, cancel: &'a CancellationToken) -> Caller<'a> {
        Caller {
            cancel,
            watchdog: &self.watchdog,
        }
    }

    /// `fanout`'s targets in resolution order, against the cached namespaces.
    pub fn resolve(&self, fanout: &Fanout) -> Result<Vec<String>, InvalidSelector> {
        let namespaces = self.stores.namespaces.state();
        let views = namespaces.iter().map(|ns| NamespaceView {
            name: ns.metadata.name.as_deref().unwrap_or_default(),
            labels: ns.labels(),
            terminating: ns.metadata.deletion_timestamp.is_some(),
        });
        let own = fanout.metadata.namespace.as_deref().unwrap_or_default();
        resolve(&fanout.spec.targets, own, views)
    }

    /// The consent rule in force.
    pub fn consent(&self) -> ConsentRule {
        if self.settings.require_consent {
            ConsentRule::Required
        } else {
            ConsentRule::NotRequired
        }
    }

    /// Whether the Fanout named in a copy's labels still exists (with that uid).
    ///
    /// Only Fanouts this instance watches are known; one outside its selector
    /// counts as gone, so shards must not target the same copies.
    pub fn fanout_exists(&self, owner: &Owner) -> bool {
        self.stores
            .fanouts
            .get(&ObjectRef::new(&owner.name).within(&owner.namespace))
            .is_some_and(|f| f.metadata.uid.as_deref() == Some(owner.uid.as_str()))
    }
}
