//! The watches that feed the caches and turn cluster events into reconcile
//! requests for Fanouts.
//!
//! | watch | cached | requests a reconcile of |
//! |---|---|---|
//! | Fanouts (optionally label-selected) | yes | itself, when its generation, finalizers or deletion change (not on our own status writes) |
//! | Namespaces, metadata only | yes | Fanouts that name or select it, before or after the change |
//! | Secrets/ConfigMaps labelled `fanout.dev/managed-by=fanout` | yes | the owner, when a copy is deleted or its content no longer matches its hash annotation |
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
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use futures::channel::mpsc::UnboundedSender;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use kube_lifecycle::watch::{SyncGate, Tracker};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::context::{Cached, Running, Stores};
use crate::copy::{CONTENT_HASH, COPIES_SELECTOR, CopyKind, FIELD_MANAGER, Owner};
use crate::crd::{Fanout, SourceKind};
use crate::metrics::FanoutMetrics;
use crate::targets;

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
    /// Builds every watch. `sources` is kept in step with the Fanout cache;
    /// the Fanout cache itself is made by the caller (the source watches need
    /// its reader before the watches exist).
    pub fn new(
        client: &Client,
        fanout_selector: Option<&str>,
        sources: SourceWatches,
        metrics: FanoutMetrics,
        fanouts: (Store<Fanout>, Writer<Fanout>),
        synced: SyncGate,
    ) -> Self {
        let (fanout_store, fanout_writer) = fanouts;
        let (namespace_store, namespace_writer) = reflector::store();
        let (secret_store, secret_writer) = reflector::store();
        let (config_map_store, config_map_writer) = reflector::store();
        let stores = Stores {
            fanouts: fanout_store.clone(),
            namespaces: namespace_store.clone(),
            secrets: secret_store,
            config_maps: config_map_store,
            synced: synced.clone(),
        };
        Self {
            fanouts: fanout_requests(
                client,
                fanout_selector,
                fanout_writer,
                sources,
                metrics,
                synced.register(FANOUTS),
            ),
            namespaces: namespace_requests(
                client,
                namespace_store,
                namespace_writer,
                fanout_store.clone(),
                synced.register(NAMESPACES),
            ),
            secrets: copy_requests(
                client,
                secret_writer,
                fanout_store.clone(),
                synced.register(SECRET_COPIES),
            ),
            config_maps: copy_requests(
                client,
                config_map_writer,
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

fn fanout_requests(
    client: &Client,
    selector: Option<&str>,
    writer: Writer<Fanout>,
    sources: SourceWatches,
    metrics: FanoutMetrics,
    listed: Tracker,
) -> BoxStream<'static, ObjectRef<Fanout>> {
    let mut config = watcher::Config::default();
    if let Some(selector) = selector {
        config = config.labels(selector);
    }
    watcher(Api::<Fanout>::all(client.clone()), config)
        .default_backoff()
        .modify(|f| f.managed_fields_mut().clear())
        .reflect(writer)
        .inspect(move |event| match event {
            Ok(Event::Delete(fanout)) => {
                metrics.set_summary(&fanout.uid().unwrap_or_default(), None);
                sources.sync();
            }
            Ok(Event::InitDone) => {
                listed.listed();
                sources.sync();
            }
            Ok(Event::Apply(_)) => sources.sync(),
            Ok(Event::Init | Event::InitApply(_)) => {}
            Err(error) => warn!(%error, "Fanout watch failed; retrying with backoff"),
        })
        .applied_objects()
        .predicate_filter(fanout_changed, PredicateConfig::default())
        .filter_map(|fanout| future::ready(fanout.ok().map(|f| ObjectRef::from_obj(&f))))
        .boxed()
}

fn namespace_requests(
    client: &Client,
    cache: Store<PartialObjectMeta<Namespace>>,
    mut writer: Writer<PartialObjectMeta<Namespace>>,
    fanouts: Store<Fanout>,
    listed: Tracker,
) -> BoxStream<'static, ObjectRef<Fanout>> {
    // The cached namespaces when a relist began: those missing once it ends
    // were deleted while the watch was down.
    let mut before_relist: Vec<Arc<PartialObjectMeta<Namespace>>> = Vec::new();
    watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|ns| ns.managed_fields_mut().clear())
    .filter_map(move |event| {
        let requests = match event {
            Ok(event) => {
                // Compare with the cached (previous) state before updating
                // it: a namespace that stops matching matters as much as
                // one that starts.
                let mut requests = namespace_event_requests(&event, &cache, &fanouts);
                writer.apply_watcher_event(&event);
                match event {
                    Event::Init => before_relist = cache.state(),
                    Event::InitDone => {
                        listed.listed();
                        for gone in std::mem::take(&mut before_relist) {
                            if cache.get(&ObjectRef::from_obj(&*gone)).is_none() {
                                requests.extend(mentioning(
                                    &fanouts,
                                    &gone.name_any(),
                                    gone.labels(),
                                    None,
                                ));
                            }
                        }
                    }
                    _ => {}
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

/// The Fanouts a namespace event may concern.
fn namespace_event_requests(
    event: &Event<PartialObjectMeta<Namespace>>,
    cache: &Store<PartialObjectMeta<Namespace>>,
    fanouts: &Store<Fanout>,
) -> Vec<ObjectRef<Fanout>> {
    let namespace = match event {
        Event::Apply(ns) | Event::InitApply(ns) | Event::Delete(ns) => ns,
        Event::Init | Event::InitDone => return Vec::new(),
    };
    let previous = cache.get(&ObjectRef::from_obj(namespace));
    if !matches!(event, Event::Delete(_))
        && previous
            .as_ref()
            .is_some_and(|p| p.resource_version() == namespace.resource_version())
    {
        return Vec::new();
    }
    mentioning(
        fanouts,
        &namespace.name_any(),
        namespace.labels(),
        previous.as_ref().map(|p| p.labels()),
    )
}

/// The Fanouts that target namespace `name` with these labels, or with the
/// labels it had before (a namespace that stops matching matters too).
fn mentioning(
    fanouts: &Store<Fanout>,
    name: &str,
    labels: &BTreeMap<String, String>,
    previous: Option<&BTreeMap<String, String>>,
) -> Vec<ObjectRef<Fanout>> {
    fanouts
        .state()
        .iter()
        .filter(|f| {
            targets::mentions(&f.spec.targets, name, labels)
                || previous.is_some_and(|p| targets::mentions(&f.spec.targets, name, p))
        })
        .map(|f| ObjectRef::from_obj(&**f))
        .collect()
}

fn copy_requests<K: Cached>(
    client: &Client,
    writer: Writer<K>,
    fanouts: Store<Fanout>,
    listed: Tracker,
) -> BoxStream<'static, ObjectRef<Fanout>> {
    let copies = writer.as_reader();
    // The cached copies when a relist began (410 Gone, an API server
    // restart): whatever is missing once it ends was deleted while the
    // watch was down, and no Delete event will ever say so.
    let mut before_relist: Vec<Arc<K>> = Vec::new();
    let config = watcher::Config::default().labels(COPIES_SELECTOR);
    watcher(Api::<K>::all(client.clone()), config)
        .default_backoff()
        // Only the controller's own managedFields entry is kept: it tells
        // which labels of a copy are someone else's (see `write.rs`).
        .modify(|copy| {
            copy.managed_fields_mut()
                .retain(|entry| entry.manager.as_deref() == Some(FIELD_MANAGER))
        })
        .reflect(writer)
        .filter_map(move |event| {
            let requests: Vec<ObjectRef<Fanout>> = match event {
                Ok(Event::Apply(copy) | Event::InitApply(copy)) if drifted(&copy) => {
                    owner_of(&copy, &fanouts).into_iter().collect()
                }
                Ok(Event::Delete(copy)) => owner_of(&copy, &fanouts).into_iter().collect(),
                Ok(Event::Init) => {
                    before_relist = copies.state();
                    Vec::new()
                }
                Ok(Event::InitDone) => {
                    listed.listed();
                    std::mem::take(&mut before_relist)
                        .iter()
                        .filter(|copy| copies.get(&ObjectRef::from_obj(&***copy)).is_none())
                        .filter_map(|copy| owner_of(&**copy, &fanouts))
                        .collect()
                }
                Ok(_) => Vec::new(),
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

/// Whether a copy's content no longer matches the hash it was written with:
/// someone edited it. Copies the controller just wrote match, so its own
/// writes do not wake it up again.
fn drifted<K: CopyKind>(copy: &K) -> bool {
    copy.annotations().get(CONTENT_HASH) != Some(&copy.content().hash())
}

/// The (cached) Fanout a copy's labels name.
fn owner_of<K: Resource>(copy: &K, fanouts: &Store<Fanout>) -> Option<ObjectRef<Fanout>> {
    let owner = Owner::from_labels(copy.meta().labels.as_ref()?)?;
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

/// One source object: its kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// Secret or ConfigMap.
    pub kind: SourceKind,
    /// The namespace (the Fanout's).
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl SourceKey {
    /// The source a Fanout names.
    pub fn of(fanout: &Fanout) -> Option<Self> {
        Some(Self {
            kind: fanout.spec.source.kind,
            namespace: fanout.namespace()?,
            name: fanout.spec.source.name.clone(),
        })
    }
}

/// One source watch: a kind in a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct WatchKey {
    kind: SourceKind,
    namespace: String,
}

impl WatchKey {
    fn of(source: &SourceKey) -> Self {
        Self {
            kind: source.kind,
            namespace: source.namespace.clone(),
        }
    }

    fn source(&self, name: String) -> SourceKey {
        SourceKey {
            kind: self.kind,
            namespace: self.namespace.clone(),
            name,
        }
    }
}

/// The set of running source watches, kept equal to the set of source
/// namespaces (and kinds) the cached Fanouts name.
#[derive(Clone)]
pub struct SourceWatches {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    fanouts: Store<Fanout>,
    running: Running,
    triggers: UnboundedSender<ObjectRef<Fanout>>,
    stop: CancellationToken,
    tasks: Mutex<HashMap<WatchKey, AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(PoisonError::into_inner);
        tasks.values().for_each(AbortHandle::abort);
    }
}

impl SourceWatches {
    /// No watches yet; call [`SourceWatches::sync`] as the Fanout cache changes.
    /// Watches end when `stop` fires or this value (every clone) is dropped.
    pub fn new(
        client: Client,
        fanouts: Store<Fanout>,
        running: Running,
        triggers: UnboundedSender<ObjectRef<Fanout>>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                fanouts,
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
        let wanted: HashSet<WatchKey> = self
            .inner
            .fanouts
            .state()
            .iter()
            .filter_map(|f| SourceKey::of(f))
            .map(|source| WatchKey::of(&source))
            .collect();
        let mut tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|key, task| {
            let keep = wanted.contains(key);
            if !keep {
                debug!(
                    ?key,
                    "no Fanout names a source here any more; stopping the watch"
                );
                task.abort();
            }
            keep
        });
        for key in wanted {
            if let Entry::Vacant(slot) = tasks.entry(key) {
                let key = slot.key().clone();
                let span = info_span!("source_watch", kind = key.kind.as_str(), namespace = %key.namespace);
                let task = tokio::spawn(watch_source(self.inner.clone(), key).instrument(span));
                slot.insert(task.abort_handle());
            }
        }
    }
}

/// Watches one source namespace until stopped, turning the events of named
/// sources into reconcile requests for the Fanouts that name them.
async fn watch_source(inner: Arc<Inner>, key: WatchKey) {
    let watch = async {
        match key.kind {
            SourceKind::Secret => follow::<Secret>(&inner, &key).await,
            SourceKind::ConfigMap => follow::<ConfigMap>(&inner, &key).await,
        }
    };
    tokio::select! {
        () = watch => {}
        () = inner.stop.cancelled() => {}
    }
}

async fn follow<K: CopyKind>(inner: &Inner, key: &WatchKey) {
    let api: Api<PartialObjectMeta<K>> = Api::namespaced(inner.client.clone(), &key.namespace);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    // The named sources that showed up in the current (re)list, and whether
    // a list finished before: the first list only matters for sources that
    // are absent (the Fanout's own event already asked for a reconcile).
    let mut named = HashSet::new();
    let mut seen_in_list = HashSet::new();
    let mut listed_before = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => {
                named = named_in(inner, key);
                seen_in_list.clear();
            }
            Ok(Event::InitApply(object)) => {
                let source = key.source(object.name_any());
                if named.contains(&source) {
                    seen_in_list.insert(source);
                }
            }
            Ok(Event::InitDone) => {
                for source in named_in(inner, key) {
                    if !seen_in_list.contains(&source) {
                        notify(inner, &source, true);
                    } else if listed_before {
                        notify(inner, &source, false);
                    }
                }
                seen_in_list.clear();
                listed_before = true;
            }
            Ok(Event::Apply(object)) => notify(inner, &key.source(object.name_any()), false),
            Ok(Event::Delete(object)) => notify(inner, &key.source(object.name_any()), true),
            Err(error) => warn!(%error, "source watch failed; retrying with backoff"),
        }
    }
}

/// The sources the cached Fanouts name in `key`'s namespace.
fn named_in(inner: &Inner, key: &WatchKey) -> HashSet<SourceKey> {
    inner
        .fanouts
        .state()
        .iter()
        .filter_map(|f| SourceKey::of(f))
        .filter(|source| WatchKey::of(source) == *key)
        .collect()
}

/// Requests a reconcile of every Fanout naming `key`; when the source is
/// gone, first cancels their running passes. Objects nobody names are
/// ignored.
fn notify(inner: &Inner, key: &SourceKey, gone: bool) {
    for fanout in inner.fanouts.state() {
        if !names(&fanout, key) {
            continue;
        }
        let fanout_ref = ObjectRef::from_obj(&*fanout);
        if gone && inner.running.cancel(&fanout_ref) {
            info!(fanout = %fanout_ref, "source is gone: cancelled the running reconcile");
        }
        // The receiver lives as long as the controller; after that nobody
        // needs the request.
        let _ = inner.triggers.unbounded_send(fanout_ref);
    }
}

/// Whether `fanout` names `source` (compared in place: this runs for every
/// event of the source namespaces, most of them about other objects).
fn names(fanout: &Fanout, source: &SourceKey) -> bool {
    fanout.spec.source.kind == source.kind
        && fanout.spec.source.name == source.name
        && fanout.metadata.namespace.as_deref() == Some(source.namespace.as_str())
}
