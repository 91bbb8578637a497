//! The watches that feed the caches and turn cluster events into reconcile
//! requests for Fanouts.
//!
//! | watch | cached | requests a reconcile of |
//! |---|---|---|
//! | Fanouts (optionally label-selected) | yes | itself, when its generation, finalizers or deletion change (not on our own status writes) |
//! | Namespaces, metadata only | yes | Fanouts that name or select it, before or after the change |
//! | Secrets/ConfigMaps labelled `fanout.dev/managed-by=fanout` | yes | the owner, when a copy is deleted or its content no longer matches its hash annotation |
//! | each source by name, metadata only ([`super::sources`]) | no | the Fanouts that name it |
//! | leadership | — | every Fanout, when this process becomes leader |
//!
//! Requests are plain [`ObjectRef`]s merged into one stream; kube-runtime's
//! scheduler deduplicates them. Only Fanouts in the local cache are
//! requested, so instances with different selectors ignore each other's
//! copies.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use futures::stream::{self, BoxStream};
use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tracing::{info, warn};

use super::context::{Cache, Cached, Listed, Stores};
use super::copy::{CONTENT_HASH, COPIES_SELECTOR, CopyKind, FIELD_MANAGER, Owner};
use super::crd::Fanout;
use super::metrics::FanoutMetrics;
use super::running::Running;
use super::sources::SourceWatches;
use super::targets;

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
    ) -> Self {
        let (fanout_store, fanout_writer) = fanouts;
        let (namespace_store, namespace_writer) = reflector::store();
        let (secret_store, secret_writer) = reflector::store();
        let (config_map_store, config_map_writer) = reflector::store();
        let listed = Listed::default();
        let stores = Stores {
            fanouts: fanout_store.clone(),
            namespaces: namespace_store.clone(),
            secrets: secret_store,
            config_maps: config_map_store,
            listed: listed.clone(),
        };
        Self {
            fanouts: fanout_requests(
                client,
                fanout_selector,
                fanout_writer,
                sources,
                metrics,
                listed.clone(),
            ),
            namespaces: namespace_requests(
                client,
                namespace_store,
                namespace_writer,
                fanout_store.clone(),
                listed.clone(),
            ),
            secrets: copy_requests(
                client,
                secret_writer,
                fanout_store.clone(),
                listed.clone(),
                Cache::Secrets,
            ),
            config_maps: copy_requests(
                client,
                config_map_writer,
                fanout_store,
                listed,
                Cache::ConfigMaps,
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
    listed: Listed,
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
                listed.mark(Cache::Fanouts);
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
    listed: Listed,
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
                        listed.mark(Cache::Namespaces);
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
    listed: Listed,
    cache: Cache,
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
                    listed.mark(cache);
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
