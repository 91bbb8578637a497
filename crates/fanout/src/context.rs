//! What every reconcile shares ([`Context`]): the client, the caches, the
//! global write cap, metrics, the event recorder, the running reconciles
//! (each with its own cancellation token, so an event elsewhere can stop one
//! mid-way: a deleted source cancels its Fanout's pass, a lost lease cancels
//! them all), the queue depth, the failure backoffs, and the runtime's
//! leader, drain and abort signals; and the controller's [`Settings`].
//!
//! The queue depth is approximate: kube-runtime's scheduler does not expose
//! its length, so the controller counts what it can see, the distinct
//! Fanouts for which a watch event requested a reconcile that has not
//! started yet. Retries the scheduler arms itself are not seen until they
//! start, so the gauge is a lower bound.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube_lifecycle::health::Watchdog;
use kube_lifecycle::watch::SyncGate;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::api::{Caller, Failures};
use crate::blocked::Blockers;
use crate::cache::CopyCache;
use crate::copy::{CopyKind, Owner};
use crate::crd::Fanout;
use crate::index::{FanoutIndex, SourceVersions};
use crate::metrics::FanoutMetrics;
use crate::namespaces::NamespaceCache;
use crate::status::DEFAULT_MAX_TARGETS;
use crate::targets::{ConsentRule, InvalidSelector, resolve};

/// The controller's caches. Memory is bounded by what the controller owns or
/// needs, never by the cluster's unrelated Secrets: Fanouts, namespace
/// *metadata*, and what it knows of the objects selected by the
/// `fanout.dev/managed-by` label (never their data).
#[derive(Clone)]
pub struct Stores {
    /// Fanouts (within the optional selector).
    pub fanouts: Store<Fanout>,
    /// The Fanouts by the sources and namespaces they name.
    pub fanout_index: FanoutIndex,
    /// Each source's resourceVersion as a pass last read it.
    pub source_versions: SourceVersions,
    /// What resolution and consent read of every namespace.
    pub namespaces: NamespaceCache,
    /// Secrets made by any Fanout.
    pub secrets: CopyCache,
    /// ConfigMaps made by any Fanout.
    pub config_maps: CopyCache,
    /// Which of their watches have listed once (the `caches-synced` check).
    pub synced: SyncGate,
}

impl Stores {
    /// Waits until every cache has listed once; `false` if `stop` fires first.
    pub async fn ready(&self, stop: &CancellationToken) -> bool {
        tokio::select! {
            () = self.synced.synced() => true,
            () = stop.cancelled() => false,
        }
    }
}

/// A copyable kind whose copies are cached.
pub trait Cached: CopyKind {
    /// The cache of this kind's copies.
    fn cache(stores: &Stores) -> &CopyCache;
}

impl Cached for Secret {
    fn cache(stores: &Stores) -> &CopyCache {
        &stores.secrets
    }
}

impl Cached for ConfigMap {
    fn cache(stores: &Stores) -> &CopyCache {
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
    /// Targets blocked by objects the Fanouts may not touch, and the
    /// watches on those objects.
    pub blockers: Blockers,
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
        let namespaces = self.stores.namespaces.all();
        let views = namespaces.iter().map(|ns| ns.view());
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

/// Each running reconcile's token, with an id telling registrations apart.
type Tokens = HashMap<ObjectRef<Fanout>, (u64, CancellationToken)>;

/// Registry of running reconciles; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Running {
    tokens: Arc<Mutex<Tokens>>,
    next_id: Arc<AtomicU64>,
}

/// A running reconcile's registration; deregisters when dropped.
#[derive(Debug)]
pub struct RunningGuard {
    running: Running,
    key: ObjectRef<Fanout>,
    id: u64,
    token: CancellationToken,
}

impl Running {
    /// Registers a reconcile of `key`, cancelled when `parent` is (the
    /// runtime's abort token) or when [`Running::cancel`] names it.
    pub fn start(&self, key: ObjectRef<Fanout>, parent: &CancellationToken) -> RunningGuard {
        let token = parent.child_token();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key.clone(), (id, token.clone()));
        RunningGuard {
            running: self.clone(),
            key,
            id,
            token,
        }
    }

    /// Cancels the running reconcile of `key`; whether one was running.
    pub fn cancel(&self, key: &ObjectRef<Fanout>) -> bool {
        self.lock()
            .get(key)
            .map(|(_, token)| token.cancel())
            .is_some()
    }

    /// The Fanouts whose reconciles are running, for the log.
    pub fn keys(&self) -> Vec<ObjectRef<Fanout>> {
        self.lock().keys().cloned().collect()
    }

    /// Cancels every running reconcile.
    pub fn cancel_all(&self) {
        self.lock().values().for_each(|(_, token)| token.cancel());
    }

    fn lock(&self) -> MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RunningGuard {
    /// The token this reconcile must obey.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        let mut tokens = self.running.lock();
        // Only remove our own entry: the runner never runs two reconciles of
        // one object at once, but a late drop must not remove a successor's.
        if tokens.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            tokens.remove(&self.key);
        }
    }
}

/// Tracks requested-but-not-started reconciles; cheap to clone.
#[derive(Clone, Debug)]
pub struct QueueDepth {
    waiting: Arc<Mutex<HashSet<ObjectRef<Fanout>>>>,
    metrics: FanoutMetrics,
}

impl QueueDepth {
    /// An empty queue reporting to `metrics`.
    pub fn new(metrics: FanoutMetrics) -> Self {
        Self {
            waiting: Arc::default(),
            metrics,
        }
    }

    /// A reconcile of `key` was requested.
    pub fn requested(&self, key: &ObjectRef<Fanout>) {
        self.update(|waiting| {
            waiting.insert(key.clone());
        });
    }

    /// A reconcile of `key` started.
    pub fn started(&self, key: &ObjectRef<Fanout>) {
        self.update(|waiting| {
            waiting.remove(key);
        });
    }

    fn update(&self, change: impl FnOnce(&mut HashSet<ObjectRef<Fanout>>)) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut waiting);
        self.metrics.set_queue_depth(waiting.len());
    }
}

/// How the Fanout controller behaves. [`Settings::default`] matches the
/// documented flag defaults.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Copy only into namespaces that consent by label (`--require-consent`).
    pub require_consent: bool,
    /// Fanouts reconciled at once (`--concurrency`).
    pub concurrency: NonZeroUsize,
    /// Target writes in flight at once across all Fanouts (`--fanout-concurrency`).
    pub fanout_concurrency: NonZeroUsize,
    /// Deadline of each single API write (`--write-timeout`).
    pub write_timeout: Duration,
    /// Least time between two status writes of one Fanout (`--status-interval`).
    pub status_interval: Duration,
    /// Sets the ceilings of two backoffs: a third of it for retrying a
    /// failed pass (10 s by default: a Fanout failing while the API server
    /// is down is retried within 10 s of its return), all of it for looking
    /// again at a blocker that keeps changing.
    pub retry_interval: Duration,
    /// How often every Fanout is reconciled even without events: a safety
    /// net for events lost while a watch was down.
    pub resync_interval: Duration,
    /// Most target entries written to one status (see `FanoutStatus`).
    pub max_status_targets: usize,
    /// Reconcile only Fanouts matching this label selector
    /// (`--fanout-selector`): lets several controller instances share one
    /// cluster (shards, or tests running side by side), each owning its own
    /// Fanouts.
    pub fanout_selector: Option<String>,
    /// Name of this instance in Events (`reportingInstance`), e.g. the pod name.
    pub instance: Option<String>,
    /// The source-access admission policy to watch for
    /// (`--source-access-policy`; see [`crate::guard`]).
    pub source_access_policy: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            require_consent: true,
            concurrency: NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN),
            fanout_concurrency: NonZeroUsize::new(32).unwrap_or(NonZeroUsize::MIN),
            write_timeout: Duration::from_secs(10),
            status_interval: Duration::from_secs(1),
            retry_interval: Duration::from_secs(30),
            resync_interval: Duration::from_secs(600),
            max_status_targets: DEFAULT_MAX_TARGETS,
            fanout_selector: None,
            instance: None,
            source_access_policy: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_reaches_only_the_named_reconcile_and_guards_deregister() {
        let running = Running::default();
        let root = CancellationToken::new();
        let a = running.start(ObjectRef::new("a").within("ns"), &root);
        let b = running.start(ObjectRef::new("b").within("ns"), &root);
        assert!(running.cancel(&ObjectRef::new("a").within("ns")));
        assert!(a.token().is_cancelled());
        assert!(!b.token().is_cancelled());
        drop(a);
        assert!(
            !running.cancel(&ObjectRef::new("a").within("ns")),
            "deregistered"
        );
        root.cancel();
        assert!(
            b.token().is_cancelled(),
            "the parent reaches every reconcile"
        );
    }

    #[test]
    fn cancel_all_reaches_every_reconcile() {
        let running = Running::default();
        let root = CancellationToken::new();
        let guards: Vec<_> = ["a", "b"]
            .iter()
            .map(|n| running.start(ObjectRef::new(n).within("ns"), &root))
            .collect();
        running.cancel_all();
        assert!(guards.iter().all(|g| g.token().is_cancelled()));
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;
    use prometheus::Registry;

    #[test]
    fn counts_distinct_waiting_fanouts() {
        let registry = Registry::new();
        let queue = QueueDepth::new(FanoutMetrics::register(&registry).unwrap());
        let a = ObjectRef::new("a").within("ns");
        let b = ObjectRef::new("b").within("ns");
        queue.requested(&a);
        queue.requested(&a);
        queue.requested(&b);
        let depth = || {
            registry
                .gather()
                .iter()
                .find(|f| f.name() == "fanout_queue_depth")
                .unwrap()
                .get_metric()[0]
                .get_gauge()
                .get_value()
        };
        assert_eq!(depth(), 2.0);
        queue.started(&a);
        assert_eq!(depth(), 1.0);
    }
}
