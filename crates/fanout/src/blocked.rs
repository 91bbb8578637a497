//! Targets blocked by an object a Fanout may not touch ([`Blockers`]):
//! remembered, and watched instead of polled.
//!
//! A blocker is an object under the copy's name that the Fanout did not
//! make and may not take over (conflict policy Skip, Adopt with other
//! content), another live Fanout's copy, or a protected object. Polling it
//! cost a POST (409) and a GET per blocked target on every retry: 5,000
//! blocked targets retried every 30 s would be ~330 requests/s, forever.
//!
//! Instead, once a pass finds a target blocked, the target is remembered
//! with the blocker's resourceVersion, and later passes report it
//! `Conflict` without a request. One metadata-only watch per kind and copy
//! name (field-selected on `metadata.name`, every namespace; it runs only
//! while some target of that name is blocked) follows the blockers:
//! - deleted (or gone from a relist): the blocked Fanouts are woken, and
//!   their next pass writes the copy;
//! - changed (a new resourceVersion, e.g. relabelled, or its content now
//!   matches for Adopt): the blocked Fanouts are woken and the next pass
//!   looks again. A blocker that keeps changing is looked at no more often
//!   than a per-target backoff allows (1 s, doubling, up to the retry
//!   interval), so a tenant flapping an object cannot make the controller
//!   spin.
//!
//! The watch streams the metadata of every object of that name (copies
//! included) but keeps nothing but the remembered targets.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::copy::CopyKind;
use crate::crd::{Fanout, SourceKind};

/// The first wait before a changed blocker is looked at again.
const FIRST_RECHECK: Duration = Duration::from_secs(1);

/// One target object: kind, namespace, name.
type Target = (SourceKind, String, String);
/// One watch: kind and name.
type Watched = (SourceKind, String);

/// How a pass judged a blocked target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    /// The blocker's resourceVersion.
    pub resource_version: Option<String>,
    /// Why it blocks (the status message).
    pub message: String,
}

/// Remembered blocked targets and the watches on their blockers; cheap to
/// clone, every clone is the same registry.
#[derive(Clone)]
pub struct Blockers {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    triggers: UnboundedSender<ObjectRef<Fanout>>,
    stop: CancellationToken,
    /// Ceiling of the per-target backoff.
    max_recheck: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    targets: HashMap<Target, Blocked>,
    watches: HashMap<Watched, AbortHandle>,
    /// Targets whose blocker the watch saw go, until a pass judges them:
    /// the next pass creates the copy at once, without reading first. Each
    /// with the [`Epoch`] it was cleared in.
    cleared: HashMap<Target, Epoch>,
    /// Counts the blockers seen go; see [`Blockers::epoch`].
    epoch: Epoch,
}

/// A point in the sequence of blockers seen go: a pass notes it before it
/// judges its targets, and at its end forgets only what was cleared before
/// it, not what a watch reported while it ran (that needs the next pass).
pub type Epoch = u64;

struct Blocked {
    /// The blocker's resourceVersion when it was last judged.
    resource_version: Option<String>,
    /// The Fanouts blocked here, with their messages.
    fanouts: HashMap<ObjectRef<Fanout>, String>,
    /// The blocker changed since it was judged.
    changed: bool,
    /// Times it was judged again and still blocked.
    rechecks: u32,
    /// Not looked at again before this.
    not_before: Instant,
    /// A wake-up at `not_before` is already scheduled.
    wake_scheduled: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        state.watches.values().for_each(AbortHandle::abort);
    }
}

impl Blockers {
    /// An empty registry. Wake-ups are sent to `triggers`; watches end
    /// when `stop` fires or every clone is dropped.
    pub fn new(
        client: Client,
        triggers: UnboundedSender<ObjectRef<Fanout>>,
        stop: CancellationToken,
        max_recheck: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                triggers,
                stop,
                max_recheck: max_recheck.max(FIRST_RECHECK),
                state: Mutex::default(),
            }),
        }
    }

    /// The message of `fanout`'s blocked target `kind namespace/name`, if
    /// it is remembered and its blocker has not changed since (or changed,
    /// but its backoff has not passed): report it without a request.
    pub fn remembered(
        &self,
        fanout: &ObjectRef<Fanout>,
        kind: SourceKind,
        namespace: &str,
        name: &str,
    ) -> Option<String> {
        let state = self.inner.lock();
        let blocked = state
            .targets
            .get(&(kind, namespace.to_owned(), name.to_owned()))?;
        let message = blocked.fanouts.get(fanout)?;
        let look_again = blocked.changed && Instant::now() >= blocked.not_before;
        (!look_again).then(|| message.clone())
    }

    /// Remembers that `fanout`'s target `kind namespace/name` is blocked by
    /// an object at `resource_version`, as a pass just judged it. Recorded
    /// as soon as it is judged, so a blocker deleted right after is seen
    /// by the watch (which starts now if it is the first of its name).
    pub fn block(
        &self,
        fanout: &ObjectRef<Fanout>,
        kind: SourceKind,
        namespace: &str,
        name: &str,
        judged: Judged,
    ) {
        let now = Instant::now();
        let mut state = self.inner.lock();
        let key = (kind, namespace.to_owned(), name.to_owned());
        state.cleared.remove(&key);
        let entry = state.targets.entry(key).or_insert_with(|| Blocked {
            resource_version: None,
            fanouts: HashMap::new(),
            changed: false,
            rechecks: 0,
            not_before: now,
            wake_scheduled: false,
        });
        // Judged again after a change: the next change is answered after a
        // longer wait.
        if entry.changed {
            entry.rechecks += 1;
            let backoff = FIRST_RECHECK.saturating_mul(2u32.saturating_pow(entry.rechecks - 1));
            entry.not_before = now + backoff.min(self.inner.max_recheck);
        }
        entry.changed = false;
        entry.resource_version = judged.resource_version;
        entry.fanouts.insert(fanout.clone(), judged.message);
        self.sync_watches(&mut state);
    }

    /// Whether the watch saw the blocker of `kind namespace/name` go since a
    /// pass last judged it.
    pub fn cleared(&self, kind: SourceKind, namespace: &str, name: &str) -> bool {
        self.inner
            .lock()
            .cleared
            .contains_key(&(kind, namespace.to_owned(), name.to_owned()))
    }

    /// Now, in the sequence of blockers seen go: a pass notes it before it
    /// judges its targets and hands it to [`Blockers::settle`].
    pub fn epoch(&self) -> Epoch {
        self.inner.lock().epoch
    }

    /// Forgets `fanout`'s blocked targets other than `kind`/`name` in
    /// `namespaces` (a pass that began judging at `judged_from` ended with
    /// exactly these blocked).
    pub fn settle(
        &self,
        fanout: &ObjectRef<Fanout>,
        kind: SourceKind,
        name: &str,
        namespaces: &HashSet<&str>,
        judged_from: Epoch,
    ) {
        let mut state = self.inner.lock();
        state.targets.retain(|(k, namespace, n), entry| {
            let still = *k == kind && n == name && namespaces.contains(namespace.as_str());
            if !still {
                entry.fanouts.remove(fanout);
            }
            !entry.fanouts.is_empty()
        });
        // The pass judged every target of this name that was cleared
        // before it began; one cleared since is for the next pass (which
        // the watch woke) to create without reading first.
        state
            .cleared
            .retain(|(k, _, n), at| *k != kind || n != name || *at > judged_from);
        self.sync_watches(&mut state);
    }

    /// Forgets every target `fanout` has blocked (it is gone).
    pub fn forget(&self, fanout: &ObjectRef<Fanout>) {
        let mut state = self.inner.lock();
        state.targets.retain(|_, entry| {
            entry.fanouts.remove(fanout);
            !entry.fanouts.is_empty()
        });
        self.sync_watches(&mut state);
    }

    /// How many targets are remembered blocked.
    pub fn len(&self) -> usize {
        self.inner.lock().targets.len()
    }

    /// Whether no target is remembered blocked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One watch per kind and name with a blocked target, no other.
    fn sync_watches(&self, state: &mut State) {
        let wanted: HashSet<Watched> = state
            .targets
            .keys()
            .map(|(kind, _, name)| (*kind, name.clone()))
            .collect();
        state.watches.retain(|watched, task| {
            let keep = wanted.contains(watched);
            if !keep {
                task.abort();
            }
            keep
        });
        for watched in wanted {
            if state.watches.contains_key(&watched) {
                continue;
            }
            let span = info_span!("blocker_watch", kind = watched.0.as_str(), name = %watched.1);
            let inner = self.inner.clone();
            let key = watched.clone();
            let task = tokio::spawn(
                async move {
                    let watch = async {
                        match key.0 {
                            SourceKind::Secret => follow::<Secret>(&inner, &key).await,
                            SourceKind::ConfigMap => follow::<ConfigMap>(&inner, &key).await,
                        }
                    };
                    tokio::select! {
                        () = watch => {}
                        () = inner.stop.cancelled() => {}
                    }
                }
                .instrument(span),
            );
            state.watches.insert(watched, task.abort_handle());
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The blocker of `target` is gone: forget it, wake its Fanouts.
    fn gone(self: &Arc<Self>, target: &Target) {
        let removed = {
            let mut state = self.lock();
            let removed = state.targets.remove(target);
            if removed.is_some() {
                state.epoch += 1;
                let epoch = state.epoch;
                state.cleared.insert(target.clone(), epoch);
            }
            removed
        };
        if let Some(blocked) = removed {
            debug!(namespace = %target.1, "blocker gone; waking the blocked Fanouts");
            self.wake(blocked.fanouts.into_keys());
        }
    }

    /// The blocker of `target` is at `version` now: if that is not what
    /// was judged, wake its Fanouts (after their backoff).
    fn seen(self: &Arc<Self>, target: &Target, version: Option<String>) {
        let mut state = self.lock();
        let Some(blocked) = state.targets.get_mut(target) else {
            return;
        };
        if blocked.resource_version == version || blocked.wake_scheduled {
            return;
        }
        blocked.changed = true;
        let fanouts: Vec<ObjectRef<Fanout>> = blocked.fanouts.keys().cloned().collect();
        let not_before = blocked.not_before;
        if Instant::now() >= not_before {
            drop(state);
            self.wake(fanouts);
            return;
        }
        blocked.wake_scheduled = true;
        drop(state);
        let inner = self.clone();
        let target = target.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep_until(not_before) => {}
                () = inner.stop.cancelled() => return,
            }
            if let Some(blocked) = inner.lock().targets.get_mut(&target) {
                blocked.wake_scheduled = false;
            }
            inner.wake(fanouts);
        });
    }

    fn wake(&self, fanouts: impl IntoIterator<Item = ObjectRef<Fanout>>) {
        for fanout in fanouts {
            // The receiver lives as long as the controller.
            let _ = self.triggers.unbounded_send(fanout);
        }
    }
}

/// Follows every object of kind `K` named `watched.1`, in every namespace.
async fn follow<K: CopyKind>(inner: &Arc<Inner>, watched: &Watched) {
    let (kind, name) = watched;
    let api: Api<PartialObjectMeta<K>> = Api::all(inner.client.clone());
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={name}"))
        .page_size(crate::api::LIST_PAGE);
    let mut events = watcher(api, config).default_backoff().boxed();
    let target = |object: &PartialObjectMeta<K>| -> Target {
        (*kind, object.namespace().unwrap_or_default(), name.clone())
    };
    let mut listed = HashSet::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listed.clear(),
            Ok(Event::InitApply(object)) => {
                let target = target(&object);
                inner.seen(&target, object.resource_version());
                listed.insert(target);
            }
            Ok(Event::InitDone) => {
                let vanished: Vec<Target> = inner
                    .lock()
                    .targets
                    .keys()
                    .filter(|t| t.0 == *kind && t.2 == *name && !listed.contains(*t))
                    .cloned()
                    .collect();
                for target in vanished {
                    inner.gone(&target);
                }
                listed.clear();
            }
            Ok(Event::Apply(object)) => inner.seen(&target(&object), object.resource_version()),
            Ok(Event::Delete(object)) => inner.gone(&target(&object)),
            Err(error) => warn!(%error, "blocker watch failed; retrying with backoff"),
        }
    }
}
