//! Fanouts by the source they name and by the namespaces they name or
//! select ([`FanoutIndex`]), so that an event costs what it concerns and not
//! what the cluster holds. (Copies are indexed by owner in
//! [`crate::cache`].)
//!
//! Without it every source event scanned every Fanout, every namespace
//! event evaluated every Fanout's targets, and every Fanout event (status
//! writes included) recomputed the set of source watches: work that grew
//! with the whole cluster on each event. It is updated from the Fanout
//! watch (per event, rebuilt after a relist) and read by the request
//! streams.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::crd::{Fanout, SourceKind, Targets};
use crate::targets::{self, Labels};

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

    /// Where it is watched from: its kind in its namespace.
    pub fn scope(&self) -> SourceScope {
        SourceScope {
            kind: self.kind,
            namespace: self.namespace.clone(),
        }
    }
}

/// A kind in a namespace: one source watch covers the sources of that kind
/// there.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceScope {
    /// Secret or ConfigMap.
    pub kind: SourceKind,
    /// The namespace.
    pub namespace: String,
}

impl SourceScope {
    /// The source named `name` in this scope.
    pub fn source(&self, name: String) -> SourceKey {
        SourceKey {
            kind: self.kind,
            namespace: self.namespace.clone(),
            name,
        }
    }
}

/// Each source's resourceVersion as a pass last read it and as its watch
/// last saw it; cheap to clone, every clone is the same record.
///
/// Two uses. A source watch starts when the first Fanout naming its
/// namespace appears, and the Fanout's first pass may read the source
/// before the watch has listed it: an edit in between reaches the watch
/// only as the listed state, not as an event, and comparing the listed
/// resourceVersion with the one the pass read tells that the pass copied an
/// older source. And a pass may skip reading a source whose watch has
/// reported nothing newer than the version this process last read (see
/// `crate::reconcile`): nothing about it changed.
///
/// A source that did not change since its Fanout appeared reaches its
/// watch in no event at all (a watch already running when the Fanout was
/// created listed it before anyone named it), so the version a pass reads
/// counts as seen until the watch reports another. While a source watch
/// fails, what its scope holds is forgotten: passes read again, so the
/// periodic resync stays the safety net for a watch that cannot run.
#[derive(Clone, Debug, Default)]
pub struct SourceVersions {
    state: Arc<Mutex<Versions>>,
}

#[derive(Debug, Default)]
struct Versions {
    read: HashMap<SourceKey, String>,
    /// The version the watch (or, before any event of it, a pass) last
    /// reported; `None`: deleted.
    seen: HashMap<SourceKey, Option<String>>,
}

impl SourceVersions {
    /// A pass read `source` at `version` (`None`: it does not exist).
    pub fn read(&self, source: SourceKey, version: Option<String>) {
        let mut state = self.lock();
        match version {
            Some(version) => {
                state
                    .seen
                    .entry(source.clone())
                    .or_insert_with(|| Some(version.clone()));
                state.read.insert(source, version);
            }
            None => {
                state.read.remove(&source);
            }
        }
    }

    /// The source watch saw `source` at `version` (`None`: deleted).
    pub fn saw(&self, source: SourceKey, version: Option<String>) {
        self.lock().seen.insert(source, version);
    }

    /// The watch of `scope` failed: until it reports again (or a pass
    /// reads), nothing it would have told counts as seen. What passes read
    /// is kept: the relist compares it with what it lists.
    pub fn forget(&self, scope: &SourceScope) {
        self.lock()
            .seen
            .retain(|source, _| source.kind != scope.kind || source.namespace != scope.namespace);
    }

    /// Whether a pass read `source` at a version other than `version`.
    pub fn differs(&self, source: &SourceKey, version: Option<&str>) -> bool {
        self.lock()
            .read
            .get(source)
            .is_some_and(|read| Some(read.as_str()) != version)
    }

    /// Whether the watch has reported nothing but the version a pass last
    /// read.
    pub fn unchanged(&self, source: &SourceKey) -> bool {
        let state = self.lock();
        state.read.get(source).is_some_and(|read| {
            state.seen.get(source).and_then(Option::as_deref) == Some(read.as_str())
        })
    }

    fn lock(&self) -> MutexGuard<'_, Versions> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Fanouts by what they name; cheap to clone, every clone is the same index.
#[derive(Clone, Debug, Default)]
pub struct FanoutIndex {
    state: Arc<Mutex<FanoutState>>,
}

#[derive(Debug, Default)]
struct FanoutState {
    /// What each Fanout names, to undo its entries when it changes.
    entries: HashMap<ObjectRef<Fanout>, Named>,
    by_source: HashMap<SourceKey, HashSet<ObjectRef<Fanout>>>,
    by_namespace: HashMap<String, HashSet<ObjectRef<Fanout>>>,
    /// Fanouts with a selector: a namespace's labels decide.
    selecting: HashSet<ObjectRef<Fanout>>,
}

#[derive(Debug)]
struct Named {
    source: Option<SourceKey>,
    targets: Targets,
}

impl FanoutIndex {
    /// Adds or updates `fanout`; returns whether the set of source scopes
    /// changed (a source watch must start or stop).
    pub fn insert(&self, fanout: &Fanout) -> bool {
        let mut state = self.lock();
        let before = state.scopes();
        state.insert(fanout);
        state.scopes() != before
    }

    /// Removes the Fanout `key`; returns whether the set of source scopes
    /// changed.
    pub fn remove(&self, key: &ObjectRef<Fanout>) -> bool {
        let mut state = self.lock();
        let before = state.scopes();
        state.remove(key);
        state.scopes() != before
    }

    /// Replaces everything with `fanouts` (after a relist); returns whether
    /// the set of source scopes changed.
    pub fn rebuild<'a>(&self, fanouts: impl IntoIterator<Item = &'a Fanout>) -> bool {
        let mut rebuilt = FanoutState::default();
        for fanout in fanouts {
            rebuilt.insert(fanout);
        }
        let mut state = self.lock();
        let changed = state.scopes() != rebuilt.scopes();
        *state = rebuilt;
        changed
    }

    /// The Fanouts that name `source`.
    pub fn naming(&self, source: &SourceKey) -> Vec<ObjectRef<Fanout>> {
        self.lock()
            .by_source
            .get(source)
            .map(|fanouts| fanouts.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The sources Fanouts name in `scope`.
    pub fn sources_in(&self, scope: &SourceScope) -> HashSet<SourceKey> {
        self.lock()
            .by_source
            .keys()
            .filter(|source| source.kind == scope.kind && source.namespace == scope.namespace)
            .cloned()
            .collect()
    }

    /// Every kind and namespace some Fanout takes its source from.
    pub fn scopes(&self) -> HashSet<SourceScope> {
        self.lock().scopes()
    }

    /// The Fanouts that name namespace `name`, or select it with these
    /// labels or with the labels it had before (a namespace that stops
    /// matching matters as much as one that starts).
    pub fn mentioning(
        &self,
        name: &str,
        labels: &Labels,
        previous: Option<&Labels>,
    ) -> Vec<ObjectRef<Fanout>> {
        let state = self.lock();
        let mut found: HashSet<ObjectRef<Fanout>> =
            state.by_namespace.get(name).cloned().unwrap_or_default();
        for key in &state.selecting {
            let Some(named) = state.entries.get(key) else {
                continue;
            };
            let selects = |labels: &Labels| targets::mentions(&named.targets, name, labels);
            if selects(labels) || previous.is_some_and(selects) {
                found.insert(key.clone());
            }
        }
        found.into_iter().collect()
    }

    fn lock(&self) -> MutexGuard<'_, FanoutState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl FanoutState {
    fn insert(&mut self, fanout: &Fanout) {
        let key = ObjectRef::from_obj(fanout);
        self.remove(&key);
        let named = Named {
            source: SourceKey::of(fanout),
            targets: fanout.spec.targets.clone(),
        };
        if let Some(source) = &named.source {
            self.by_source
                .entry(source.clone())
                .or_default()
                .insert(key.clone());
        }
        for namespace in &named.targets.namespaces {
            self.by_namespace
                .entry(namespace.clone())
                .or_default()
                .insert(key.clone());
        }
        if named.targets.selector.is_some() {
            self.selecting.insert(key.clone());
        }
        self.entries.insert(key, named);
    }

    fn remove(&mut self, key: &ObjectRef<Fanout>) {
        let Some(named) = self.entries.remove(key) else {
            return;
        };
        if let Some(source) = &named.source
            && let Some(fanouts) = self.by_source.get_mut(source)
        {
            fanouts.remove(key);
            if fanouts.is_empty() {
                self.by_source.remove(source);
            }
        }
        for namespace in &named.targets.namespaces {
            if let Some(fanouts) = self.by_namespace.get_mut(namespace) {
                fanouts.remove(key);
                if fanouts.is_empty() {
                    self.by_namespace.remove(namespace);
                }
            }
        }
        self.selecting.remove(key);
    }

    fn scopes(&self) -> HashSet<SourceScope> {
        self.by_source.keys().map(SourceKey::scope).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::crd::{FanoutSpec, NamespaceSelector, SourceRef};

    fn fanout(name: &str, source: &str, names: &[&str], selector: Option<&str>) -> Fanout {
        let mut fanout = Fanout::new(
            name,
            FanoutSpec {
                source: SourceRef {
                    kind: SourceKind::Secret,
                    name: source.into(),
                },
                targets: Targets {
                    namespaces: names.iter().map(|n| (*n).to_owned()).collect(),
                    selector: selector.map(|tier| NamespaceSelector {
                        match_labels: BTreeMap::from([("tier".into(), tier.into())]),
                        match_expressions: vec![],
                    }),
                    exclude: vec![],
                },
                copy_name: None,
                conflict_policy: Default::default(),
                prune: true,
            },
        );
        fanout.metadata.namespace = Some("platform".into());
        fanout
    }

    fn labels(tier: &str) -> Labels {
        Labels::from(&BTreeMap::from([("tier".to_owned(), tier.to_owned())]))
    }

    #[test]
    fn fanouts_are_found_by_source_and_by_namespace_and_follow_their_changes() {
        let index = FanoutIndex::default();
        assert!(
            index.insert(&fanout("a", "creds", &["team-a"], None)),
            "a new source scope"
        );
        assert!(
            !index.insert(&fanout("b", "creds", &[], Some("apps"))),
            "same scope"
        );
        let creds = SourceKey {
            kind: SourceKind::Secret,
            namespace: "platform".into(),
            name: "creds".into(),
        };
        assert_eq!(index.naming(&creds).len(), 2);
        let by_name = index.mentioning("team-a", &labels("db"), None);
        assert_eq!(by_name, [ObjectRef::new("a").within("platform")]);
        let by_label = index.mentioning("other", &labels("apps"), None);
        assert_eq!(by_label, [ObjectRef::new("b").within("platform")]);
        let stopped = index.mentioning("other", &labels("db"), Some(&labels("apps")));
        assert_eq!(
            stopped,
            [ObjectRef::new("b").within("platform")],
            "stops matching"
        );
        // `a` now names another source and another namespace.
        index.insert(&fanout("a", "token", &["team-b"], None));
        assert_eq!(index.naming(&creds).len(), 1);
        assert!(index.mentioning("team-a", &labels("db"), None).is_empty());
        index.remove(&ObjectRef::new("b").within("platform"));
        assert!(
            index.remove(&ObjectRef::new("a").within("platform")),
            "no scope left"
        );
        assert!(index.scopes().is_empty());
    }

    /// The source the version tests follow.
    fn creds() -> SourceKey {
        SourceKey {
            kind: SourceKind::Secret,
            namespace: "platform".into(),
            name: "creds".into(),
        }
    }

    #[test]
    fn a_listed_source_differs_only_from_a_version_a_pass_read() {
        let versions = SourceVersions::default();
        let creds = creds();
        assert!(!versions.differs(&creds, Some("7")), "no pass read it yet");
        versions.read(creds.clone(), Some("7".into()));
        assert!(!versions.differs(&creds, Some("7")));
        assert!(
            versions.differs(&creds, Some("8")),
            "edited after the pass read it"
        );
        assert!(
            versions.unchanged(&creds),
            "no event since the watch began: what the pass read is the newest"
        );
        versions.saw(creds.clone(), Some("7".into()));
        assert!(versions.unchanged(&creds));
        versions.saw(creds.clone(), Some("8".into()));
        assert!(!versions.unchanged(&creds), "edited since the pass read it");
        versions.read(creds.clone(), None);
        assert!(!versions.differs(&creds, Some("8")), "the pass found none");
    }

    #[test]
    fn a_source_the_watch_saw_change_or_go_is_not_unchanged() {
        let versions = SourceVersions::default();
        let creds = creds();
        // The watch is ahead of a slow read: the read does not hide it.
        versions.saw(creds.clone(), Some("8".into()));
        versions.read(creds.clone(), Some("7".into()));
        assert!(!versions.unchanged(&creds));
        versions.read(creds.clone(), Some("8".into()));
        assert!(versions.unchanged(&creds));
        // Deleted after the read.
        versions.saw(creds.clone(), None);
        assert!(!versions.unchanged(&creds));
        versions.saw(creds.clone(), Some("9".into()));
        versions.read(creds.clone(), Some("9".into()));
        assert!(versions.unchanged(&creds));
        // A failing watch: nothing is seen until a pass reads again, and
        // the relist still tells a version other than the one read.
        versions.forget(&creds.scope());
        assert!(!versions.unchanged(&creds));
        assert!(versions.differs(&creds, Some("10")));
        versions.read(creds.clone(), Some("9".into()));
        assert!(versions.unchanged(&creds));
    }
}
