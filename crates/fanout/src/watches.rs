//! The watches that feed the caches and turn cluster events into reconcile
//! requests for Fanouts.
//!
//! | watch | cached | requests a reconcile of |
//! |---|---|---|
//! | Fanouts (optionally label-selected) | yes, and indexed by source and target namespaces | itself, when its generation, finalizers or deletion change (not on our own status writes) |
//! | Namespaces, metadata only | yes (labels and the consent annotation) | Fanouts that name or select it, before or after the change; only when its labels, consent or deletion change |
//! | Secrets/ConfigMaps labelled `fanout.dev/managed-by=fanout` | what decisions need, not the data ([`crate::found`]) | the owner, when a copy is deleted or its content no longer matches its hash annotation |
//! | each source by name, metadata only (see below) | no | the Fanouts that name it |
//! | leadership | — | every Fanout, when this process becomes leader |
//!
//! Requests are plain [`ObjectRef`]s merged into one stream; kube-runtime's
//! scheduler deduplicates them. Only Fanouts in the local cache are
//! requested, so instances with different selectors ignore each other's
//! copies.
//!
//! # Sources
//!
//! Watches on the sources the Fanouts name: one per source namespace and kind.
//!
//! Why not one watch on all Secrets? That streams every Secret in the
//! cluster, and a cache of them would grow with objects the controller has
//! nothing to do with. Why not one watch per source, field-selected by name?
//! That was the first design: it costs one watch connection (HTTP/1, with
//! its TLS state) per distinct source, and at 1,000 Fanouts the benchmark
//! measured 65 MiB and 9 s to start, most of it in a thousand watches.
//! Instead each namespace that holds a source gets one metadata-only watch
//! of that kind, with no cache: an event only says *that* an object changed,
//! and is dropped unless a Fanout names it; the reconcile then reads the
//! source by name. The cost grows with the number of source namespaces
//! (usually a handful), and the unrelated objects of those namespaces are
//! streamed as metadata, never kept.
//!
//! A deleted source cancels the running reconcile of every Fanout that names
//! it before requesting a new one, so a pass in progress stops writing copies
//! of an object that no longer exists.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use futures::channel::mpsc::UnboundedSender;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use kube_lifecycle::watch::{SyncGate, Tracker};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::api::{FANOUT_PAGE, LIST_PAGE};
use crate::cache::CopyCache;
use crate::context::{Cached, Running, Stores};
use crate::copy::{COPIES_SELECTOR, CopyKind, Owner};
use crate::crd::{Fanout, SourceKind};
use crate::found::Found;
use crate::index::{FanoutIndex, SourceKey, SourceScope, SourceVersions};
use crate::metrics::FanoutMetrics;
use crate::namespaces::{NamespaceCache, NamespaceRecord};
use crate::targets::Labels;

/// The watch of Fanouts, by its name in the `caches-synced` gate.
pub const FANOUTS: &str = "fanouts";
/// The watch of namespace metadata.
pub const NAMESPACES: &str = "namespaces";
/// The watch of Secret copies.
pub const SECRET_COPIES: &str = "secret-copies";
/// The watch of ConfigMap copies.
pub const CONFIG_MAP_COPIES: &str = "configmap-copies";

/// The watch streams, not yet polled, and the caches they fill.
pub struct Watches {
    /// Caches, filled as the streams are polled.
    pub stores: Stores,
    fanouts: BoxStream<'static, ObjectRef<Fanout>>,
    namespaces: BoxStream<'static, ObjectRef<Fanout>>,
    secrets: BoxStream<'static, ObjectRef<Fanout>>,
    config_maps: BoxStream<'static, ObjectRef<Fanout>>,
}

impl Watches {
    /// Builds every watch. `sources` is kept in step with the Fanout index;
    /// the Fanout cache and its index are made by the caller (the source
    /// watches need them before the watches exist).
    pub fn new(
        client: &Client,
        fanout_selector: Option<&str>,
        sources: SourceWatches,
        metrics: FanoutMetrics,
        fanouts: (Store<Fanout>, Writer<Fanout>, FanoutIndex),
        (synced, fanout_watch_failed): (SyncGate, Arc<Notify>),
    ) -> Self {
        let (fanout_store, fanout_writer, fanout_index) = fanouts;
        let stores = Stores {
            fanouts: fanout_store.clone(),
            fanout_index: fanout_index.clone(),
            source_versions: sources.inner.versions.clone(),
            namespaces: NamespaceCache::default(),
            secrets: CopyCache::default(),
            config_maps: CopyCache::default(),
            synced: synced.clone(),
        };
        Self {
            fanouts: fanout_requests(
                client,
                fanout_selector,
                fanout_writer,
                FanoutFollowers {
                    index: fanout_index.clone(),
                    sources,
                    metrics,
                    failed: fanout_watch_failed,
                },
                synced.register(FANOUTS),
            ),
            namespaces: namespace_requests(
                client,
                stores.namespaces.clone(),
                fanout_index,
                synced.register(NAMESPACES),
            ),
            secrets: copy_requests::<Secret>(
                client,
                stores.secrets.clone(),
                fanout_store.clone(),
                synced.register(SECRET_COPIES),
            ),
            config_maps: copy_requests::<ConfigMap>(
                client,
                stores.config_maps.clone(),
                fanout_store,
                synced.register(CONFIG_MAP_COPIES),
            ),
            stores,
        }
    }

    /// Every request stream merged, plus `extra` (source and leadership
    /// requests). The caches only fill while this stream is polled.
    pub fn requests(
        self,
        extra: impl IntoIterator<Item = BoxStream<'static, ObjectRef<Fanout>>>,
    ) -> BoxStream<'static, ObjectRef<Fanout>> {
        let streams = [
            self.fanouts,
            self.namespaces,
            self.secrets,
            self.config_maps,
        ]
        .into_iter()
        .chain(extra);
        stream::select_all(streams).boxed()
    }
}

/// A Fanout changed in a way that needs a reconcile: spec (generation),
/// finalizers, or deletion. Status writes change none of them, so the
/// controller's own status writes do not wake it up again.
fn fanout_changed(fanout: &Fanout) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    fanout.metadata.generation.hash(&mut hasher);
    fanout.finalizers().hash(&mut hasher);
    fanout
        .metadata
        .deletion_timestamp
        .is_some()
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// What follows the Fanout watch besides its cache.
struct FanoutFollowers {
    index: FanoutIndex,
    sources: SourceWatches,
    metrics: FanoutMetrics,
    /// Told when the watch fails (a deleted CRD, say).
    failed: Arc<Notify>,
}

impl FanoutFollowers {
    /// Keeps the index, the source watches and the metrics in step with
    /// one event. The source watches change only when the set of source
    /// namespaces does, not on every event (a status write is one).
    fn follow(&self, event: &Event<Fanout>, cache: &Store<Fanout>) {
        let scopes_changed = match event {
            Event::Apply(fanout) => self.index.insert(fanout),
            Event::Delete(fanout) => {
                self.metrics
                    .set_summary(&fanout.uid().unwrap_or_default(), None);
                self.index.remove(&ObjectRef::from_obj(fanout))
            }
            Event::InitDone => {
                let fanouts = cache.state();
                self.index.rebuild(fanouts.iter().map(|f| &**f))
            }
            Event::Init | Event::InitApply(_) => false,
        };
        if scopes_changed {
            self.sources.sync();
        }
    }
}

fn fanout_requests(
    client: &Client,
    selector: Option<&str>,
    writer: Writer<Fanout>,
    followers: FanoutFollowers,
    listed: Tracker,
) -> BoxStream<'static, ObjectRef<Fanout>> {
    let mut config = watcher::Config::default().page_size(FANOUT_PAGE);
    if let Some(selector) = selector {
        config = config.labels(selector);
    }
    let cache = writer.as_reader();
    watcher(Api::<Fanout>::all(client.clone()), config)
        .default_backoff()
        .modify(|f| f.managed_fields_mut().clear())
        .reflect(writer)
        .inspect(move |event| match event {
            Ok(event) => {
                followers.follow(event, &cache);
                if matches!(event, Event::InitDone) {
                    listed.listed();
                }
            }
            Err(error) => {
                warn!(%error, "Fanout watch failed; retrying with backoff");
                followers.failed.notify_one();
            }
        })
        .applied_objects()
        .predicate_filter(fanout_changed, PredicateConfig::default())
        .filter_map(|fanout| future::ready(fanout.ok().map(|f| ObjectRef::from_obj(&f))))
        .boxed()
}

/// Whether a namespace change can matter to a Fanout: what the cache held
/// before (`None`: nothing) against what it holds now (`None`: deleted).
/// The records hold only labels, consent and deletion, so any difference
/// is one of those.
fn namespace_matters(before: Option<&NamespaceRecord>, now: Option<&NamespaceRecord>) -> bool {
    before != now
}

fn namespace_requests(
    client: &Client,
    cache: NamespaceCache,
    fanouts: FanoutIndex,
    listed: Tracker,
) -> BoxStream<'static, ObjectRef<Fanout>> {
    // The first list requests nothing: every Fanout is reconciled at start
    // anyway. Later relists (after the watch was down) request what changed.
    let mut listed_before = false;
    watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        watcher::Config::default().page_size(LIST_PAGE),
    )
    .default_backoff()
    .filter_map(move |event| {
        let requests = match event {
            Ok(event) => {
                let event = record_event(event);
                let now = match &event {
                    Event::Apply(ns) | Event::InitApply(ns) => Some(ns.clone()),
                    _ => None,
                };
                let deleted = match &event {
                    Event::Delete(ns) => Some(ns.name.clone()),
                    _ => None,
                };
                let relisted = matches!(event, Event::InitApply(_));
                let done = matches!(event, Event::InitDone);
                let change = cache.apply(event);
                let mut requests = Vec::new();
                // A namespace that stops matching matters as much as one
                // that starts: both its labels before and now are asked.
                if (!relisted || listed_before)
                    && (now.is_some() || deleted.is_some())
                    && namespace_matters(change.before.as_deref(), now.as_ref())
                {
                    let name = now
                        .as_ref()
                        .map(|n| n.name.clone())
                        .or(deleted)
                        .unwrap_or_default();
                    let empty = Labels::default();
                    let labels = now.as_ref().map_or(&empty, |n| &n.labels);
                    requests.extend(fanouts.mentioning(
                        &name,
                        labels,
                        change.before.as_ref().map(|b| &b.labels),
                    ));
                }
                // Deleted while the watch was down: no Delete event says so.
                for gone in &change.vanished {
                    requests.extend(fanouts.mentioning(&gone.name, &gone.labels, None));
                }
                if done {
                    listed.listed();
                    listed_before = true;
                }
                requests
            }
            Err(error) => {
                warn!(%error, "namespace watch failed; retrying with backoff");
                Vec::new()
            }
        };
        future::ready(Some(stream::iter(requests)))
    })
    .flatten()
    .boxed()
}

/// A watch event about namespace metadata as one about what is kept of it.
fn record_event(event: Event<PartialObjectMeta<Namespace>>) -> Event<NamespaceRecord> {
    match event {
        Event::Apply(ns) => Event::Apply(NamespaceRecord::of(&ns)),
        Event::Delete(ns) => Event::Delete(NamespaceRecord::of(&ns)),
        Event::Init => Event::Init,
        Event::InitApply(ns) => Event::InitApply(NamespaceRecord::of(&ns)),
        Event::InitDone => Event::InitDone,
    }
}

fn copy_requests<K: Cached>(
    client: &Client,
    cache: CopyCache,
    fanouts: Store<Fanout>,
    listed: Tracker,
) -> BoxStream<'static, ObjectRef<Fanout>> {
    let config = watcher::Config::default()
        .labels(COPIES_SELECTOR)
        .page_size(LIST_PAGE);
    // The whole object arrives (its content is what drift is judged on);
    // only what decisions need is kept (see `crate::found`).
    watcher(Api::<K>::all(client.clone()), config)
        .default_backoff()
        .filter_map(move |event| {
            let requests: Vec<ObjectRef<Fanout>> = match event {
                Ok(event) => {
                    let event = found_event(event);
                    let woken = match &event {
                        // Someone edited it: its content no longer hashes
                        // as recorded. The controller's own writes do, so
                        // they do not wake it up again.
                        Event::Apply(found) | Event::InitApply(found) if !found.intact => {
                            owner_of(found, &fanouts).into_iter().collect()
                        }
                        Event::Delete(found) => owner_of(found, &fanouts).into_iter().collect(),
                        _ => Vec::new(),
                    };
                    let done = matches!(event, Event::InitDone);
                    // Deleted while the watch was down (a 410 Gone, an API
                    // server restart): no Delete event will ever say so.
                    let vanished = cache.apply(event);
                    if done {
                        listed.listed();
                    }
                    woken
                        .into_iter()
                        .chain(vanished.iter().filter_map(|found| owner_of(found, &fanouts)))
                        .collect()
                }
                Err(error) => {
                    warn!(%error, kind = K::KIND.as_str(), "copy watch failed; retrying with backoff");
                    Vec::new()
                }
            };
            future::ready(Some(stream::iter(requests)))
        })
        .flatten()
        .boxed()
}

/// A watch event about whole objects as one about what is kept of them.
fn found_event<K: CopyKind>(event: Event<K>) -> Event<Found> {
    match event {
        Event::Apply(object) => Event::Apply(Found::of(&object)),
        Event::Delete(object) => Event::Delete(Found::of(&object)),
        Event::Init => Event::Init,
        Event::InitApply(object) => Event::InitApply(Found::of(&object)),
        Event::InitDone => Event::InitDone,
    }
}

/// The (cached) Fanout a copy's labels name.
fn owner_of(found: &Found, fanouts: &Store<Fanout>) -> Option<ObjectRef<Fanout>> {
    let owner: &Owner = found.owner.as_ref()?;
    let fanout_ref = ObjectRef::new(&owner.name).within(&owner.namespace);
    fanouts.get(&fanout_ref).map(|_| fanout_ref)
}

/// Requests every cached Fanout when this process becomes leader, and
/// cancels every running reconcile when it stops being leader (a successor
/// is taking over; two writers would undo each other).
pub fn leadership_requests(
    leader: watch::Receiver<bool>,
    fanouts: Store<Fanout>,
    running: Running,
) -> BoxStream<'static, ObjectRef<Fanout>> {
    stream::unfold(
        (leader, false, true),
        move |(mut leader, was_leader, first)| {
            let fanouts = fanouts.clone();
            let running = running.clone();
            async move {
                // A closed channel means the runtime is gone: nothing more to say.
                if !first && leader.changed().await.is_err() {
                    return None;
                }
                let is_leader = *leader.borrow_and_update();
                let requests: Vec<ObjectRef<Fanout>> = match (was_leader, is_leader) {
                    (false, true) => {
                        info!("became leader: reconciling every Fanout");
                        fanouts
                            .state()
                            .iter()
                            .map(|f| ObjectRef::from_obj(&**f))
                            .collect()
                    }
                    (true, false) => {
                        info!("lost leadership: cancelling running reconciles");
                        running.cancel_all();
                        Vec::new()
                    }
                    _ => Vec::new(),
                };
                Some((stream::iter(requests), (leader, is_leader, false)))
            }
        },
    )
    .flatten()
    .boxed()
}

/// The set of running source watches, kept equal to the set of source
/// namespaces (and kinds) the cached Fanouts name.
#[derive(Clone)]
pub struct SourceWatches {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    fanouts: FanoutIndex,
    versions: SourceVersions,
    running: Running,
    triggers: UnboundedSender<ObjectRef<Fanout>>,
    stop: CancellationToken,
    tasks: Mutex<HashMap<SourceScope, AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(PoisonError::into_inner);
        tasks.values().for_each(AbortHandle::abort);
    }
}

impl SourceWatches {
    /// No watches yet; call [`SourceWatches::sync`] when the set of source
    /// scopes in `fanouts` changes. Watches end when `stop` fires or this
    /// value (every clone) is dropped.
    pub fn new(
        client: Client,
        fanouts: FanoutIndex,
        running: Running,
        triggers: UnboundedSender<ObjectRef<Fanout>>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                fanouts,
                versions: SourceVersions::default(),
                running,
                triggers,
                stop,
                tasks: Mutex::default(),
            }),
        }
    }

    /// Starts a watch for every source namespace a cached Fanout names and
    /// stops the watches nobody needs any more.
    pub fn sync(&self) {
        let wanted = self.inner.fanouts.scopes();
        let mut tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|scope, task| {
            let keep = wanted.contains(scope);
            if !keep {
                debug!(
                    ?scope,
                    "no Fanout names a source here any more; stopping the watch"
                );
                task.abort();
            }
            keep
        });
        for scope in wanted {
            if let Entry::Vacant(slot) = tasks.entry(scope) {
                let scope = slot.key().clone();
                let span = info_span!("source_watch", kind = scope.kind.as_str(), namespace = %scope.namespace);
                let task = tokio::spawn(watch_source(self.inner.clone(), scope).instrument(span));
                slot.insert(task.abort_handle());
            }
        }
    }
}

/// Watches one source namespace until stopped, turning the events of named
/// sources into reconcile requests for the Fanouts that name them.
async fn watch_source(inner: Arc<Inner>, scope: SourceScope) {
    let watch = async {
        match scope.kind {
            SourceKind::Secret => follow::<Secret>(&inner, &scope).await,
            SourceKind::ConfigMap => follow::<ConfigMap>(&inner, &scope).await,
        }
    };
    tokio::select! {
        () = watch => {}
        () = inner.stop.cancelled() => {}
    }
}

async fn follow<K: CopyKind>(inner: &Inner, scope: &SourceScope) {
    let api: Api<PartialObjectMeta<K>> = Api::namespaced(inner.client.clone(), &scope.namespace);
    let mut events = watcher(api, watcher::Config::default().page_size(LIST_PAGE))
        .default_backoff()
        .boxed();
    // The named sources that showed up in the current (re)list, those a
    // pass read at another version, and whether a list finished before: the
    // first list matters for sources that are absent, or that changed since
    // a pass read them (the Fanout's own event already asked for a
    // reconcile that reads them).
    let mut named = HashSet::new();
    let mut seen_in_list = HashSet::new();
    let mut changed_in_list = HashSet::new();
    let mut listed_before = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => {
                named = inner.fanouts.sources_in(scope);
                seen_in_list.clear();
            }
            Ok(Event::InitApply(object)) => {
                let source = scope.source(object.name_any());
                if named.contains(&source) {
                    let version = object.resource_version();
                    if inner.versions.differs(&source, version.as_deref()) {
                        changed_in_list.insert(source.clone());
                    }
                    inner.versions.saw(source.clone(), version);
                    seen_in_list.insert(source);
                }
            }
            Ok(Event::InitDone) => {
                for source in inner.fanouts.sources_in(scope) {
                    if !seen_in_list.contains(&source) {
                        notify(inner, &source, true);
                    } else if listed_before || changed_in_list.contains(&source) {
                        notify(inner, &source, false);
                    }
                }
                seen_in_list.clear();
                changed_in_list.clear();
                listed_before = true;
            }
            Ok(Event::Apply(object)) => {
                let source = scope.source(object.name_any());
                if notify(inner, &source, false) {
                    inner.versions.saw(source, object.resource_version());
                }
            }
            Ok(Event::Delete(object)) => {
                let source = scope.source(object.name_any());
                if notify(inner, &source, true) {
                    inner.versions.saw(source, None);
                }
            }
            Err(error) => {
                warn!(%error, "source watch failed; retrying with backoff");
                inner.versions.forget(scope);
            }
        }
    }
}

/// Requests a reconcile of every Fanout naming `source`; when the source is
/// gone, first cancels their running passes. Objects nobody names are
/// ignored (one lookup: most events of a source namespace are about other
/// objects). Whether any Fanout names it.
fn notify(inner: &Inner, source: &SourceKey, gone: bool) -> bool {
    let fanouts = inner.fanouts.naming(source);
    let named = !fanouts.is_empty();
    for fanout_ref in fanouts {
        if gone && inner.running.cancel(&fanout_ref) {
            info!(fanout = %fanout_ref, "source is gone: cancelled the running reconcile");
        }
        // The receiver lives as long as the controller; after that nobody
        // needs the request.
        let _ = inner.triggers.unbounded_send(fanout_ref);
    }
    named
}
