//! What the controller knows of the object in a target under a copy's name
//! ([`Found`]): enough to decide, to write and to let go, and never the
//! payload itself.
//!
//! The copy cache holds one `Found` per copy in the cluster, so its size is
//! what the controller's memory grows with. Holding whole Secrets cost ~3 KiB
//! per copy (their data, and labels and annotations as maps); a `Found`
//! keeps a digest of the payload ([`Payload`]) and the few fields the
//! decisions read. The watch still streams whole objects: the digest is
//! taken as each arrives, so a copy whose bytes someone edited is noticed
//! by its content (even when its annotation still claims the old hash), and
//! a restart or a failover judges every copy without reading one.
//!
//! Drift is judged on what the controller owns ([`Found::agrees_with`]): the
//! payload, and the labels and annotations it copied. Keys other tools or a
//! mutating admission policy add are someone else's and are not drift; an
//! update keeps them (which keys the controller wrote is read from
//! `managedFields` as the object arrives).

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::ObjectMeta;

use crate::copy::{
    CONTENT_HASH, CopyKind, Desired, FIELD_MANAGER, MANAGED_BY, MANAGED_BY_VALUE, ORIGIN,
    OWNER_NAME, OWNER_NAMESPACE, OWNER_UID, Origin, Owner, Payload, SOURCE, SYNCED_AT, parse_hash,
};

/// Labels every copy carries that `Found` keeps as fields.
const BOOKKEEPING_LABELS: [&str; 4] = [MANAGED_BY, OWNER_NAMESPACE, OWNER_NAME, OWNER_UID];
/// Annotations every copy carries that `Found` keeps as fields (or, for the
/// source, that every write sets again).
const BOOKKEEPING_ANNOTATIONS: [&str; 4] = [CONTENT_HASH, SOURCE, SYNCED_AT, ORIGIN];

/// The object in a target under a copy's name, as the controller remembers
/// it. Strings many objects share (namespace, name, type, owner) are
/// shared by the copy cache ([`crate::cache`]), which keeps one of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Its namespace.
    pub namespace: Arc<str>,
    /// Its name.
    pub name: Arc<str>,
    /// Its uid (the delete precondition).
    pub uid: Option<Box<str>>,
    /// Its resourceVersion (the update and release precondition).
    pub resource_version: Option<Box<str>>,
    /// Whether it carries `fanout.dev/managed-by=fanout`.
    pub managed: bool,
    /// The Fanout its labels name, if they name one completely.
    pub owner: Option<Arc<Owner>>,
    /// The content hash its annotation records, if the annotation is
    /// there and well-formed (`sha256:` and 64 hex digits).
    pub recorded_hash: Option<[u8; 32]>,
    /// Whether its content hashes to the recorded hash: written by a
    /// Fanout and untouched since. The copy watch wakes the owner of a
    /// copy that is not.
    pub intact: bool,
    /// Its payload, as a digest.
    pub payload: Payload,
    /// Its labels other than the ownership labels.
    pub labels: Box<[Entry]>,
    /// Its annotations other than the Fanout bookkeeping.
    pub annotations: Box<[Entry]>,
    /// When a Fanout last wrote it (`fanout.dev/synced-at`).
    pub synced_at: Option<Timestamp>,
    /// How the Fanout that holds it came to (if one does).
    pub origin: Origin,
    /// Why it must never be replaced or deleted, if so.
    pub protection: Option<Box<str>>,
}

/// One label or annotation of a found object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// Whether this controller's field manager wrote it (`managedFields`).
    pub ours: bool,
}

impl Found {
    /// What the controller keeps of `object`.
    pub fn of<K: CopyKind>(object: &K) -> Self {
        let meta = object.meta();
        let (our_labels, our_annotations) = keys_written_by(meta, FIELD_MANAGER);
        let labels = object.labels();
        let annotations = object.annotations();
        let content = object.content();
        let recorded = annotations.get(CONTENT_HASH);
        Self {
            namespace: meta.namespace.as_deref().unwrap_or_default().into(),
            name: object.name_any().into(),
            uid: meta.uid.as_deref().map(Box::from),
            resource_version: meta.resource_version.as_deref().map(Box::from),
            managed: labels.get(MANAGED_BY).map(String::as_str) == Some(MANAGED_BY_VALUE),
            owner: Owner::from_labels(labels).map(Arc::new),
            intact: recorded.map(String::as_str) == Some(content.hash().as_str()),
            recorded_hash: recorded.and_then(|hash| parse_hash(hash)),
            payload: content.payload(),
            labels: entries(labels, &BOOKKEEPING_LABELS, &our_labels),
            annotations: entries(annotations, &BOOKKEEPING_ANNOTATIONS, &our_annotations),
            // Whole seconds, as `lastSyncTime` is written: an annotation
            // with a fraction (written by an older version) would make
            // every status differ from the one on the object.
            synced_at: annotations
                .get(SYNCED_AT)
                .and_then(|t| Timestamp::from_str(t).ok())
                .and_then(|t| Timestamp::from_second(t.as_second()).ok()),
            origin: Origin::of(annotations),
            protection: object.protection().map(Box::from),
        }
    }

    /// Whether it holds what `desired` promises: the same payload and
    /// immutability, and every label and annotation of the desired content
    /// with the same value. Keys the desired content does not have are
    /// someone else's and are ignored.
    pub fn agrees_with(&self, desired: &Desired) -> bool {
        let holds = |found: &[Entry], wanted: &BTreeMap<String, String>| {
            wanted
                .iter()
                .all(|(key, value)| found.iter().any(|e| e.key == *key && e.value == *value))
        };
        self.payload == desired.payload
            && holds(&self.labels, &desired.content.labels)
            && holds(&self.annotations, &desired.content.annotations)
    }

    /// Whether it carries every marker of a copy of `owner`'s: the
    /// managed-by label, the three owner labels naming it, and a
    /// well-formed content-hash annotation.
    pub fn carries_markers(&self, owner: &Owner) -> bool {
        self.managed && self.owner.as_deref() == Some(owner) && self.recorded_hash.is_some()
    }

    /// `(namespace, name)`, owned.
    pub fn names(&self) -> (String, String) {
        (self.namespace.to_string(), self.name.to_string())
    }

    /// Adds to `meta` (the copy about to replace this object) the labels
    /// and annotations that are someone else's: keys the copy does not want
    /// and this controller never wrote. Another tool's label survives an
    /// update; a label this controller copied from the source, and the
    /// source has since dropped, does not. A key a mutating admission
    /// policy adds counts as written by the request's manager: it is
    /// dropped by the update and added again by the policy, and since drift
    /// ignores keys the copy does not want, it never causes another write.
    pub fn keep_foreign_metadata(&self, meta: &mut ObjectMeta) {
        for (found, wanted) in [
            (&self.labels, &mut meta.labels),
            (&self.annotations, &mut meta.annotations),
        ] {
            let wanted = wanted.get_or_insert_with(Default::default);
            for entry in found.iter().filter(|e| !e.ours) {
                wanted
                    .entry(entry.key.clone())
                    .or_insert_with(|| entry.value.clone());
            }
        }
    }
}

/// The entries of `map` but the `skipped` keys, each marked with whether
/// it is in `ours`.
fn entries(
    map: &BTreeMap<String, String>,
    skipped: &[&str],
    ours: &HashSet<String>,
) -> Box<[Entry]> {
    map.iter()
        .filter(|(key, _)| !skipped.contains(&key.as_str()))
        .map(|(key, value)| Entry {
            key: key.clone(),
            value: value.clone(),
            ours: ours.contains(key),
        })
        .collect()
}

/// The label and annotation keys `manager` owns on an object, from its
/// `managedFields`.
fn keys_written_by(meta: &ObjectMeta, manager: &str) -> (HashSet<String>, HashSet<String>) {
    let mut labels = HashSet::new();
    let mut annotations = HashSet::new();
    let entries = meta.managed_fields.iter().flatten();
    for entry in entries.filter(|e| e.manager.as_deref() == Some(manager)) {
        let Some(fields) = &entry.fields_v1 else {
            continue;
        };
        let metadata = &fields.0["f:metadata"];
        for (section, keys) in [
            ("f:labels", &mut labels),
            ("f:annotations", &mut annotations),
        ] {
            if let Some(map) = metadata[section].as_object() {
                keys.extend(
                    map.keys()
                        .filter_map(|k| k.strip_prefix("f:"))
                        .map(str::to_owned),
                );
            }
        }
    }
    (labels, annotations)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    use super::*;
    use crate::copy::fixtures::owner;
    use crate::copy::{Content, desired_copy};

    fn desired() -> Desired {
        let mut content = Content {
            type_: Some("Opaque".into()),
            ..Content::default()
        };
        content.data.insert("token".into(), b"s3cret".to_vec());
        content.labels.insert("team".into(), "infra".into());
        content.annotations.insert("note".into(), "keep me".into());
        Desired::new(content)
    }

    fn copy(desired: &Desired) -> Secret {
        desired_copy(
            &desired.content,
            &desired.hash,
            &owner(),
            "regcred",
            "regcred",
            "team-a",
            Origin::Created,
        )
    }

    #[test]
    fn a_copy_as_written_is_intact_agrees_and_carries_the_markers() {
        let desired = desired();
        let found = Found::of(&copy(&desired));
        assert!(found.intact);
        assert!(found.agrees_with(&desired));
        assert!(found.carries_markers(&owner()));
        assert_eq!(found.owner.as_deref(), Some(&owner()));
        assert!(
            found.labels.iter().all(|e| e.key == "team"),
            "ownership labels are fields"
        );
    }

    #[test]
    fn keys_others_add_are_not_drift_but_a_changed_or_missing_key_is() {
        let desired = desired();
        let mut object = copy(&desired);
        object
            .labels_mut()
            .insert("policy.example.com/scanned".into(), "true".into());
        object
            .annotations_mut()
            .insert("other-tool/note".into(), "x".into());
        let found = Found::of(&object);
        assert!(found.agrees_with(&desired), "extra keys are someone else's");
        assert!(!found.intact, "but the object no longer hashes as recorded");

        let mut changed = object.clone();
        changed.labels_mut().insert("team".into(), "other".into());
        assert!(!Found::of(&changed).agrees_with(&desired));
        let mut missing = object.clone();
        missing.annotations_mut().remove("note");
        assert!(!Found::of(&missing).agrees_with(&desired));
        let mut edited = object;
        edited
            .data
            .get_or_insert_with(Default::default)
            .insert("extra".into(), ByteString(b"1".to_vec()));
        assert!(
            !Found::of(&edited).agrees_with(&desired),
            "the payload is owned whole"
        );
    }

    #[test]
    fn an_edited_payload_under_the_old_hash_annotation_is_noticed() {
        let desired = desired();
        let mut object = copy(&desired);
        object.data = Some(BTreeMap::from([(
            "token".into(),
            ByteString(b"changed".to_vec()),
        )]));
        let found = Found::of(&object);
        assert_eq!(found.recorded_hash, Some(desired.hash_bytes));
        assert!(!found.intact);
        assert!(!found.agrees_with(&desired));
    }

    #[test]
    fn markers_must_all_be_there_and_name_this_fanout() {
        let desired = desired();
        let mut forged = copy(&desired);
        forged
            .annotations_mut()
            .insert(CONTENT_HASH.into(), "sha256:not-hex".into());
        assert!(!Found::of(&forged).carries_markers(&owner()));
        let mut unmanaged = copy(&desired);
        unmanaged.labels_mut().remove(MANAGED_BY);
        assert!(!Found::of(&unmanaged).carries_markers(&owner()));
        let other = Owner {
            uid: "5678".into(),
            ..owner()
        };
        assert!(!Found::of(&copy(&desired)).carries_markers(&other));
    }

    #[test]
    fn an_update_keeps_only_the_keys_that_are_someone_elses() {
        let desired = desired();
        let mut object = copy(&desired);
        object
            .labels_mut()
            .insert("stale".into(), "copied once".into());
        object.labels_mut().insert("tool".into(), "theirs".into());
        object.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some(FIELD_MANAGER.into()),
            fields_v1: Some(FieldsV1(serde_json::json!({
                "f:metadata": {"f:labels": {"f:stale": {}, "f:team": {}}}
            }))),
            ..ManagedFieldsEntry::default()
        }]);
        let found = Found::of(&object);
        let mut next = copy(&desired);
        next.labels_mut().remove("team");
        found.keep_foreign_metadata(&mut next.metadata);
        let labels = next.labels();
        assert_eq!(labels.get("tool").map(String::as_str), Some("theirs"));
        assert!(!labels.contains_key("stale"), "ours, and no longer wanted");
        assert!(
            !labels.contains_key("team"),
            "ours: the desired copy decides"
        );
    }
}
