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

use crate::copy::Owner;
use crate::found::Found;

/// A copy's namespace and name.
type Key = (Arc<str>, Arc<str>);

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
    shared: Shared,
}

#[derive(Debug, Default)]
struct Objects {
    /// By namespace, then name: looked up with borrowed strings.
    by_name: HashMap<Arc<str>, HashMap<Arc<str>, Arc<Found>>>,
    by_owner: HashMap<Arc<str>, HashSet<Key>>,
    len: usize,
}

/// One copy of each string and owner many objects share: a namespace holds
/// a copy of each Fanout's, a copy name recurs in every namespace, a
/// Fanout owns thousands of copies.
#[derive(Debug, Default)]
struct Shared {
    strings: HashSet<Arc<str>>,
    owners: HashMap<Arc<str>, Arc<Owner>>,
    /// Removals since the last sweep of what nothing uses any more.
    removed: usize,
}

impl Shared {
    fn string(&mut self, text: &Arc<str>) -> Arc<str> {
        if let Some(shared) = self.strings.get(text) {
            return shared.clone();
        }
        self.strings.insert(text.clone());
        text.clone()
    }

    fn owner(&mut self, owner: &Arc<Owner>) -> Arc<Owner> {
        let uid = self.string(&Arc::from(owner.uid.as_str()));
        match self.owners.get(&uid) {
            Some(shared) if shared == owner => shared.clone(),
            _ => {
                self.owners.insert(uid, owner.clone());
                owner.clone()
            }
        }
    }

    /// `found` with its shared parts replaced by the cache's copies.
    fn share(&mut self, mut found: Found) -> Found {
        found.namespace = self.string(&found.namespace);
        found.name = self.string(&found.name);
        found.payload.type_ = found.payload.type_.as_ref().map(|t| self.string(t));
        found.owner = found.owner.as_ref().map(|o| self.owner(o));
        found
    }

    /// Forgets what only this registry still holds, once removals have
    /// piled up (or a relist replaced everything).
    fn sweep(&mut self, live: usize, force: bool) {
        if !force && self.removed < live.max(1024) {
            return;
        }
        self.owners.retain(|_, owner| Arc::strong_count(owner) > 1);
        self.strings.retain(|text| Arc::strong_count(text) > 1);
        self.removed = 0;
    }
}

impl Objects {
    fn insert(&mut self, found: Arc<Found>) {
        let key: Key = (found.namespace.clone(), found.name.clone());
        self.remove(&key.0, &key.1);
        if let Some(owner) = &found.owner {
            let uid: Arc<str> = Arc::from(owner.uid.as_str());
            self.by_owner.entry(uid).or_default().insert(key.clone());
        }
        self.by_name.entry(key.0).or_default().insert(key.1, found);
        self.len += 1;
    }

    fn remove(&mut self, namespace: &str, name: &str) -> Option<Arc<Found>> {
        let names = self.by_name.get_mut(namespace)?;
        let found = names.remove(name)?;
        if names.is_empty() {
            self.by_name.remove(namespace);
        }
        self.len -= 1;
        if let Some(owner) = &found.owner
            && let Some(copies) = self.by_owner.get_mut(owner.uid.as_str())
        {
            copies.remove(&(found.namespace.clone(), found.name.clone()));
            if copies.is_empty() {
                self.by_owner.remove(owner.uid.as_str());
            }
        }
        Some(found)
    }

    fn get(&self, namespace: &str, name: &str) -> Option<&Arc<Found>> {
        self.by_name.get(namespace)?.get(name)
    }

    fn all(self) -> impl Iterator<Item = Arc<Found>> {
        self.by_name.into_values().flat_map(HashMap::into_values)
    }
}

impl CopyCache {
    /// The object named `name` in `namespace`, if cached.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Found>> {
        self.read().objects.get(namespace, name).cloned()
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
            .filter_map(|(namespace, name)| objects.get(namespace, name).cloned())
            .collect()
    }

    /// How many objects are cached.
    pub fn len(&self) -> usize {
        self.read().objects.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one watch event. Returns the objects it removed: the deleted
    /// one, or, when a relist ends, those it no longer holds.
    pub fn apply(&self, event: Event<Found>) -> Vec<Arc<Found>> {
        let mut state = self.write();
        let state = &mut *state;
        match event {
            Event::Apply(found) => {
                let found = Arc::new(state.shared.share(found));
                state.objects.insert(found);
                Vec::new()
            }
            Event::Delete(found) => {
                let removed: Vec<_> = state
                    .objects
                    .remove(&found.namespace, &found.name)
                    .into_iter()
                    .collect();
                state.shared.removed += removed.len();
                state.shared.sweep(state.objects.len, false);
                removed
            }
            Event::Init => {
                state.relist = Some(Objects::default());
                Vec::new()
            }
            Event::InitApply(found) => {
                let found = Arc::new(state.shared.share(found));
                state
                    .relist
                    .get_or_insert_with(Objects::default)
                    .insert(found);
                Vec::new()
            }
            Event::InitDone => {
                let listed = state.relist.take().unwrap_or_default();
                let before = std::mem::replace(&mut state.objects, listed);
                let vanished: Vec<Arc<Found>> = before
                    .all()
                    .filter(|found| state.objects.get(&found.namespace, &found.name).is_none())
                    .collect();
                state.shared.sweep(state.objects.len, true);
                vanished
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
        let mut names: Vec<_> = found.iter().map(|f| f.namespace.to_string()).collect();
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
    fn objects_share_their_namespace_name_and_owner() {
        let cache = CopyCache::default();
        cache.apply(Event::Apply(copy("team-a", "u1")));
        cache.apply(Event::Apply(copy("team-b", "u1")));
        let a = cache.get("team-a", "creds").unwrap();
        let b = cache.get("team-b", "creds").unwrap();
        assert!(Arc::ptr_eq(&a.name, &b.name));
        assert!(Arc::ptr_eq(
            a.owner.as_ref().unwrap(),
            b.owner.as_ref().unwrap()
        ));
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
