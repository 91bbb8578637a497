//! The cache of copies of one kind ([`CopyCache`]): what the controller
//! knows of every object labelled `fanout.dev/managed-by=fanout`, by name
//! and by the uid of the Fanout that owns it.
//!
//! It holds a [`Found`] per object, never the object (see
//! [`crate::found`]), and it is filled from the copy watch's events the way
//! kube-runtime's reflector fills its stores: a relist is collected aside
//! and swapped in whole when it ends, so readers never see a half-listed
//! cache, and what the relist no longer holds is reported (deleted while
//! the watch was down: no Delete event will ever say so).
//!
//! The index by owner is what makes a pass cost what its Fanout holds:
//! pruning reads the copies of one Fanout, not every copy of every Fanout.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use kube::runtime::watcher::Event;

use crate::found::Found;

/// A copy's namespace and name.
type Key = (String, String);

/// Copies of one kind; cheap to clone, every clone is the same cache.
#[derive(Clone, Debug, Default)]
pub struct CopyCache {
    state: Arc<RwLock<State>>,
}

#[derive(Debug, Default)]
struct State {
    objects: Objects,
    /// The relist in progress, swapped in when it ends.
    relist: Option<Objects>,
}

#[derive(Debug, Default)]
struct Objects {
    by_name: HashMap<Key, Arc<Found>>,
    by_owner: HashMap<String, HashSet<Key>>,
}

impl Objects {
    fn insert(&mut self, found: Found) {
        let key = (found.namespace.clone(), found.name.clone());
        self.remove(&key);
        if let Some(owner) = &found.owner {
            self.by_owner
                .entry(owner.uid.clone())
                .or_default()
                .insert(key.clone());
        }
        self.by_name.insert(key, Arc::new(found));
    }

    fn remove(&mut self, key: &Key) -> Option<Arc<Found>> {
        let found = self.by_name.remove(key)?;
        if let Some(owner) = &found.owner
            && let Some(copies) = self.by_owner.get_mut(&owner.uid)
        {
            copies.remove(key);
            if copies.is_empty() {
                self.by_owner.remove(&owner.uid);
            }
        }
        Some(found)
    }
}

impl CopyCache {
    /// The object named `name` in `namespace`, if cached.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Found>> {
        self.read()
            .objects
            .by_name
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every object whose labels name the Fanout with this uid.
    pub fn owned_by(&self, uid: &str) -> Vec<Arc<Found>> {
        let state = self.read();
        let objects = &state.objects;
        objects
            .by_owner
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|key| objects.by_name.get(key).cloned())
            .collect()
    }

    /// How many objects are cached.
    pub fn len(&self) -> usize {
        self.read().objects.by_name.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one watch event. Returns the objects it removed: the deleted
    /// one, or, when a relist ends, those it no longer holds.
    pub fn apply(&self, event: Event<Found>) -> Vec<Arc<Found>> {
        let mut state = self.write();
        match event {
            Event::Apply(found) => {
                state.objects.insert(found);
                Vec::new()
            }
            Event::Delete(found) => state
                .objects
                .remove(&(found.namespace, found.name))
                .into_iter()
                .collect(),
            Event::Init => {
                state.relist = Some(Objects::default());
                Vec::new()
            }
            Event::InitApply(found) => {
                state
                    .relist
                    .get_or_insert_with(Objects::default)
                    .insert(found);
                Vec::new()
            }
            Event::InitDone => {
                let listed = state.relist.take().unwrap_or_default();
                let before = std::mem::replace(&mut state.objects, listed);
                before
                    .by_name
                    .into_iter()
                    .filter(|(key, _)| !state.objects.by_name.contains_key(key))
                    .map(|(_, found)| found)
                    .collect()
            }
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::copy::{OWNER_NAME, OWNER_NAMESPACE, OWNER_UID};

    fn copy(namespace: &str, owner_uid: &str) -> Found {
        let labels = [
            (OWNER_NAMESPACE, "platform"),
            (OWNER_NAME, "creds"),
            (OWNER_UID, owner_uid),
        ];
        Found::of(&Secret {
            metadata: ObjectMeta {
                name: Some("creds".into()),
                namespace: Some(namespace.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        })
    }

    fn namespaces(found: &[Arc<Found>]) -> Vec<String> {
        let mut names: Vec<_> = found.iter().map(|f| f.namespace.clone()).collect();
        names.sort();
        names
    }

    #[test]
    fn copies_are_found_by_name_and_by_owner_and_follow_their_label() {
        let cache = CopyCache::default();
        cache.apply(Event::Apply(copy("team-a", "u1")));
        cache.apply(Event::Apply(copy("team-b", "u1")));
        assert!(cache.get("team-a", "creds").is_some());
        assert_eq!(namespaces(&cache.owned_by("u1")), ["team-a", "team-b"]);
        cache.apply(Event::Apply(copy("team-b", "u2")));
        assert_eq!(namespaces(&cache.owned_by("u1")), ["team-a"]);
        assert_eq!(namespaces(&cache.owned_by("u2")), ["team-b"]);
        let removed = cache.apply(Event::Delete(copy("team-a", "u1")));
        assert_eq!(namespaces(&removed), ["team-a"]);
        assert!(cache.owned_by("u1").is_empty());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_relist_is_swapped_in_whole_and_reports_what_vanished() {
        let cache = CopyCache::default();
        cache.apply(Event::Apply(copy("team-a", "u1")));
        cache.apply(Event::Apply(copy("team-b", "u1")));
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(copy("team-b", "u1")));
        cache.apply(Event::InitApply(copy("team-c", "u1")));
        assert_eq!(
            namespaces(&cache.owned_by("u1")),
            ["team-a", "team-b"],
            "readers see the old state until the relist ends"
        );
        let vanished = cache.apply(Event::InitDone);
        assert_eq!(namespaces(&vanished), ["team-a"]);
        assert_eq!(namespaces(&cache.owned_by("u1")), ["team-b", "team-c"]);
    }
}
