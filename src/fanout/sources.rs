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
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::copy::CopyKind;
use super::crd::{Fanout, SourceKind};
use super::running::Running;

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
