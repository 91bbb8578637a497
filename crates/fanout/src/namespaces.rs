//! The cache of namespaces ([`NamespaceCache`]): what target resolution and
//! consent read of each namespace in the cluster, and nothing else.
//!
//! The controller must know every namespace (a selector may match any of
//! them), so this cache grows with the cluster. A namespace's metadata as
//! kube decodes it costs ~1 KiB (an `ObjectMeta` of fifteen optional
//! fields, its uid, resourceVersion, timestamps, every annotation); a
//! [`NamespaceRecord`] keeps the name, the labels, the consent annotation
//! and whether the namespace is being deleted. Like the copy cache, a
//! relist is collected aside and swapped in whole when it ends.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::Event;

use crate::targets::{ACCEPT_FROM_ANNOTATION, ConsentRule, Labels, NamespaceView};

/// What the controller keeps of one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceRecord {
    /// Its name.
    pub name: String,
    /// Its labels (selectors and consent read them).
    pub labels: Labels,
    /// Its `fanout.dev/accept-from` annotation, if any.
    pub accept_from: Option<String>,
    /// Whether it is being deleted.
    pub terminating: bool,
}

impl NamespaceRecord {
    /// What the controller keeps of `namespace`.
    pub fn of(namespace: &PartialObjectMeta<Namespace>) -> Self {
        Self {
            name: namespace.name_any(),
            labels: Labels::from(namespace.labels()),
            accept_from: namespace.annotations().get(ACCEPT_FROM_ANNOTATION).cloned(),
            terminating: namespace.metadata.deletion_timestamp.is_some(),
        }
    }

    /// Whether it accepts copies from `source_namespace` under `rule`.
    pub fn accepts(&self, rule: ConsentRule, source_namespace: &str) -> bool {
        rule.accepts(&self.labels, self.accept_from.as_deref(), source_namespace)
    }

    /// The view target resolution takes.
    pub fn view(&self) -> NamespaceView<'_> {
        NamespaceView {
            name: &self.name,
            labels: &self.labels,
            terminating: self.terminating,
        }
    }
}

/// Every namespace; cheap to clone, every clone is the same cache.
#[derive(Clone, Debug, Default)]
pub struct NamespaceCache {
    state: Arc<RwLock<State>>,
}

#[derive(Debug, Default)]
struct State {
    by_name: HashMap<String, Arc<NamespaceRecord>>,
    relist: Option<HashMap<String, Arc<NamespaceRecord>>>,
}

/// What one watch event changed.
#[derive(Debug, Default)]
pub struct Change {
    /// The namespace as it was before the event (`None`: unknown before).
    pub before: Option<Arc<NamespaceRecord>>,
    /// When a relist ends: the namespaces it no longer holds.
    pub vanished: Vec<Arc<NamespaceRecord>>,
}

impl NamespaceCache {
    /// The namespace `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Arc<NamespaceRecord>> {
        self.read().by_name.get(name).cloned()
    }

    /// Every namespace.
    pub fn all(&self) -> Vec<Arc<NamespaceRecord>> {
        self.read().by_name.values().cloned().collect()
    }

    /// How many namespaces are cached.
    pub fn len(&self) -> usize {
        self.read().by_name.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one watch event and says what it changed.
    pub fn apply(&self, event: Event<NamespaceRecord>) -> Change {
        let mut state = self.write();
        match event {
            Event::Apply(record) => Change {
                before: state.by_name.insert(record.name.clone(), Arc::new(record)),
                vanished: Vec::new(),
            },
            Event::Delete(record) => Change {
                before: state.by_name.remove(&record.name),
                vanished: Vec::new(),
            },
            Event::Init => {
                state.relist = Some(HashMap::new());
                Change::default()
            }
            Event::InitApply(record) => {
                let before = state.by_name.get(&record.name).cloned();
                state
                    .relist
                    .get_or_insert_with(HashMap::new)
                    .insert(record.name.clone(), Arc::new(record));
                Change {
                    before,
                    vanished: Vec::new(),
                }
            }
            Event::InitDone => {
                let listed = state.relist.take().unwrap_or_default();
                let before = std::mem::replace(&mut state.by_name, listed);
                let vanished = before
                    .into_iter()
                    .filter(|(name, _)| !state.by_name.contains_key(name))
                    .map(|(_, record)| record)
                    .collect();
                Change {
                    before: None,
                    vanished,
                }
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
    use std::collections::BTreeMap;

    use kube::api::ObjectMeta;

    use super::*;

    fn namespace(
        name: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> NamespaceRecord {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        NamespaceRecord::of(&PartialObjectMeta::<Namespace> {
            types: None,
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some("0a1b".into()),
                labels: Some(map(labels)),
                annotations: Some(map(annotations)),
                ..ObjectMeta::default()
            },
            _phantom: std::marker::PhantomData,
        })
    }

    #[test]
    fn a_record_keeps_labels_and_the_consent_annotation_only() {
        let record = namespace(
            "team-a",
            &[("tier", "apps")],
            &[
                (ACCEPT_FROM_ANNOTATION, "platform"),
                ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
            ],
        );
        assert_eq!(record.accept_from.as_deref(), Some("platform"));
        assert!(record.accepts(ConsentRule::Required, "platform"));
        assert!(!record.accepts(ConsentRule::Required, "other"));
        assert_eq!(record.labels.len(), 1);
    }

    #[test]
    fn events_report_the_state_before_and_a_relist_what_vanished() {
        let cache = NamespaceCache::default();
        assert!(
            cache
                .apply(Event::Apply(namespace("a", &[("v", "1")], &[])))
                .before
                .is_none()
        );
        let change = cache.apply(Event::Apply(namespace("a", &[("v", "2")], &[])));
        assert_eq!(change.before.unwrap().labels.get("v"), Some("1"));
        cache.apply(Event::Apply(namespace("b", &[], &[])));
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(namespace("a", &[("v", "2")], &[])));
        assert!(
            cache.get("b").is_some(),
            "the old state serves until the relist ends"
        );
        let vanished = cache.apply(Event::InitDone).vanished;
        assert_eq!(vanished.len(), 1);
        assert_eq!(vanished[0].name, "b");
        assert_eq!(cache.len(), 1);
    }
}
