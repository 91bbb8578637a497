//! Watches on the sources the Fanouts name, one per distinct source.
//!
//! Why not one watch on all Secrets? That caches (or at least streams) every
//! Secret in the cluster, and memory and traffic would grow with objects the
//! controller has nothing to do with. Instead each distinct source named by
//! some Fanout gets its own watch, field-selected by name
//! (`metadata.name=<name>` in the source namespace) and metadata-only: the
//! watch carries one tiny object, holds no cache, and only says *that* the
//! source changed; the reconcile then reads it by name. The cost is one watch
//! connection per distinct source, which grows with the number of Fanouts,
//! not with the cluster.
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

/// The set of running source watches, kept equal to the set of sources the
/// cached Fanouts name.
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
    tasks: Mutex<HashMap<SourceKey, AbortHandle>>,
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

    /// Starts a watch for every source a cached Fanout names and stops the
    /// watches nobody names any more.
    pub fn sync(&self) {
        let wanted: HashSet<SourceKey> = self
            .inner
            .fanouts
            .state()
            .iter()
            .filter_map(|f| SourceKey::of(f))
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
                    "source no longer named by any Fanout; stopping its watch"
                );
                task.abort();
            }
            keep
        });
        for key in wanted {
            if let Entry::Vacant(slot) = tasks.entry(key) {
                let key = slot.key().clone();
                let span = info_span!("source_watch", kind = key.kind.as_str(), namespace = %key.namespace, name = %key.name);
                let task = tokio::spawn(watch_source(self.inner.clone(), key).instrument(span));
                slot.insert(task.abort_handle());
            }
        }
    }
}

/// Watches one source until stopped, turning its events into reconcile
/// requests for the Fanouts that name it.
async fn watch_source(inner: Arc<Inner>, key: SourceKey) {
    let config = watcher::Config::default().fields(&format!("metadata.name={}", key.name));
    let watch = async {
        match key.kind {
            SourceKind::Secret => follow::<Secret>(&inner, &key, config).await,
            SourceKind::ConfigMap => follow::<ConfigMap>(&inner, &key, config).await,
        }
    };
    tokio::select! {
        () = watch => {}
        () = inner.stop.cancelled() => {}
    }
}

async fn follow<K: CopyKind>(inner: &Inner, key: &SourceKey, config: watcher::Config) {
    let api: Api<PartialObjectMeta<K>> = Api::namespaced(inner.client.clone(), &key.namespace);
    let mut events = watcher(api, config).default_backoff().boxed();
    // Whether the source showed up in the current (re)list, and whether a
    // list finished before: the first list only matters if the source is
    // absent (the Fanout's own event already asked for a reconcile).
    let mut seen_in_list = false;
    let mut listed_before = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => seen_in_list = false,
            Ok(Event::InitApply(_)) => seen_in_list = true,
            Ok(Event::InitDone) => {
                if !seen_in_list {
                    notify(inner, key, true);
                } else if listed_before {
                    notify(inner, key, false);
                }
                listed_before = true;
            }
            Ok(Event::Apply(_)) => notify(inner, key, false),
            Ok(Event::Delete(_)) => notify(inner, key, true),
            Err(error) => warn!(%error, "source watch failed; retrying with backoff"),
        }
    }
}

/// Requests a reconcile of every Fanout naming `key`; when the source is
/// gone, first cancels their running passes.
fn notify(inner: &Inner, key: &SourceKey, gone: bool) {
    for fanout in inner.fanouts.state() {
        if SourceKey::of(&fanout).as_ref() != Some(key) {
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
