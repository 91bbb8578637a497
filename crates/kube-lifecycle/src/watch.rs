//! Readiness that waits for watches: a [`SyncGate`] holds one readiness
//! check (say `caches-synced`) failing until every watch registered with it
//! has completed its first list.
//!
//! A controller whose caches are half-filled makes wrong decisions (a copy
//! missing from a cache looks deleted), so it must not report ready, and
//! must not reconcile, before they are filled. Each watch is registered
//! when its stream is built ([`SyncGate::track`] wraps a watcher stream, or
//! [`SyncGate::register`] returns a handle for a pipeline that applies
//! events itself), before anything polls it: the gate cannot pass while a
//! watch it will have is not even started.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use super::health::ReadinessCheck;

/// A readiness check that passes once every registered watch has listed.
/// Cheap to clone; every clone is the same gate.
#[derive(Clone, Debug)]
pub struct SyncGate {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    check: ReadinessCheck,
    /// Each registered watch, and whether it has listed.
    watches: Mutex<BTreeMap<&'static str, bool>>,
    /// `true` once every registered watch has listed.
    synced: watch::Sender<bool>,
}

/// One watch registered with a [`SyncGate`]; call [`Tracker::listed`] when
/// its first list is complete (and applied to its cache).
#[derive(Clone, Debug)]
pub struct Tracker {
    gate: SyncGate,
    name: &'static str,
}

impl SyncGate {
    /// A gate over `check`, which it keeps failing until watches are
    /// registered and have all listed.
    pub fn new(check: ReadinessCheck) -> Self {
        check.set_ready(false);
        Self {
            inner: Arc::new(Inner {
                check,
                watches: Mutex::default(),
                synced: watch::channel(false).0,
            }),
        }
    }

    /// Registers the watch `name`, not yet listed.
    pub fn register(&self, name: &'static str) -> Tracker {
        self.lock().insert(name, false);
        self.update();
        Tracker {
            gate: self.clone(),
            name,
        }
    }

    /// Registers the watch `name` and passes its events through, marking it
    /// listed at its first `InitDone`. Put it after whatever applies the
    /// events to a cache (`.reflect(writer)`), so "listed" means the cache
    /// holds the list.
    pub fn track<S, K>(
        &self,
        name: &'static str,
        events: S,
    ) -> impl Stream<Item = S::Item> + use<S, K>
    where
        S: Stream<Item = Result<Event<K>, watcher::Error>>,
    {
        let tracker = self.register(name);
        events.inspect(move |event| {
            if matches!(event, Ok(Event::InitDone)) {
                tracker.listed();
            }
        })
    }

    /// Whether the watch `name` has listed.
    pub fn has_listed(&self, name: &str) -> bool {
        self.lock().get(name).copied().unwrap_or(false)
    }

    /// Whether every registered watch has listed.
    pub fn is_synced(&self) -> bool {
        *self.inner.synced.borrow()
    }

    /// Waits until every registered watch has listed.
    pub async fn synced(&self) {
        let mut synced = self.inner.synced.subscribe();
        // The sender lives as long as the gate, which `self` keeps alive.
        let _ = synced.wait_for(|synced| *synced).await;
    }

    fn update(&self) {
        let synced = {
            let watches = self.lock();
            !watches.is_empty() && watches.values().all(|listed| *listed)
        };
        self.inner.check.set_ready(synced);
        self.inner.synced.send_if_modified(|was| {
            let changed = *was != synced;
            *was = synced;
            changed
        });
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, bool>> {
        self.inner
            .watches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Tracker {
    /// Records that the watch's first list is complete.
    pub fn listed(&self) {
        self.gate.lock().insert(self.name, true);
        self.gate.update();
    }
}

/// A reconcile request for every object in `cache` each time `leader`
/// turns `true` (and at once, if it already is): a standby lets every
/// change pass without acting, so the moment it leads it must look at
/// everything again. Merge it with a controller's other requests.
pub fn requests_on_election<K>(
    leader: watch::Receiver<bool>,
    cache: Store<K>,
) -> impl Stream<Item = ObjectRef<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash + Default,
{
    futures::stream::unfold((leader, true), |(mut leader, first)| async move {
        if !first {
            leader.changed().await.ok()?;
        }
        let leads = *leader.borrow_and_update();
        Some((leads, (leader, false)))
    })
    .filter(|leads| std::future::ready(*leads))
    .flat_map(move |_| {
        let all: Vec<ObjectRef<K>> = cache
            .state()
            .iter()
            .map(|o| ObjectRef::from_obj(&**o))
            .collect();
        futures::stream::iter(all)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;
    use futures::stream;

    #[tokio::test]
    async fn the_gate_passes_once_every_watch_has_listed() {
        let health = Health::new();
        let gate = SyncGate::new(health.readiness_check("caches-synced"));
        assert!(!health.readiness().ok, "no watch yet is not synced");
        let events = stream::iter(vec![
            Ok::<_, watcher::Error>(Event::<()>::Init),
            Ok(Event::InitApply(())),
            Ok(Event::InitDone),
        ]);
        let mut tracked = std::pin::pin!(gate.track("things", events));
        let other = gate.register("others");
        tracked.next().await;
        tracked.next().await;
        assert!(
            !gate.has_listed("things"),
            "InitApply is not the end of the list"
        );
        tracked.next().await;
        assert!(gate.has_listed("things") && !gate.is_synced());
        assert!(!health.readiness().ok);
        other.listed();
        gate.synced().await;
        assert!(gate.is_synced() && health.readiness().ok);
    }
}
