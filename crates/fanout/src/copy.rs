//! What a copy holds: its content taken from the source, the labels that tie
//! it to its Fanout, and the content hash that detects drift.
//!
//! Secrets and ConfigMaps differ only in their fields, so both are read into
//! one kind-free [`Content`] and built back from it through [`CopyKind`];
//! everything downstream (hashing, planning, writing) is written once.
//!
//! The hash covers exactly what the controller promises to keep true: type,
//! data, binaryData, immutability and the copied labels/annotations; it is
//! written on every copy. The payload alone also has a digest
//! ([`Payload`]), which is what the controller remembers of an object found
//! in a target instead of its bytes (see [`crate::found`]).
//!
//! Some objects are never replaced or deleted, whatever the conflict policy
//! and whatever labels they carry ([`CopyKind::protection`]): losing them is
//! something no copy can undo.
//! ([`crate::plan`] turns a protected object into a `Conflict`.)

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::{ByteString, NamespaceResourceScope};
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::crd::SourceKind;

/// Label on every copy, so copies can be watched and listed by selector.
pub const MANAGED_BY: &str = "fanout.dev/managed-by";
/// Value of [`MANAGED_BY`].
pub const MANAGED_BY_VALUE: &str = "fanout";
/// Label selector matching every copy made by any Fanout.
pub const COPIES_SELECTOR: &str = "fanout.dev/managed-by=fanout";
/// Label naming the owning Fanout's namespace.
pub const OWNER_NAMESPACE: &str = "fanout.dev/fanout-namespace";
/// Label naming the owning Fanout.
pub const OWNER_NAME: &str = "fanout.dev/fanout-name";
/// Label holding the owning Fanout's uid: a recreated Fanout of the same name
/// is a different owner.
pub const OWNER_UID: &str = "fanout.dev/fanout-uid";
/// Annotation holding the content hash the copy was written with.
pub const CONTENT_HASH: &str = "fanout.dev/content-hash";
/// Annotation naming the source, for people reading the copy.
pub const SOURCE: &str = "fanout.dev/source";
/// Annotation holding when the controller last wrote the copy: the target's
/// `lastSyncTime`, kept on the copy so it survives restarts and does not
/// change the status when a pass finds the copy already true.
pub const SYNCED_AT: &str = "fanout.dev/synced-at";

/// The field manager of every write the controller makes (copies and
/// status): `managedFields` then tells which keys of a copy it wrote.
pub const FIELD_MANAGER: &str = "fanout-controller";

/// Annotation recording that the copy took over an object someone else
/// made: `adopted` (content already equal) or `overwritten`. Such an object
/// is released when the Fanout lets go of it (its Fanout labels and
/// annotations removed), never deleted: the Fanout did not create it.
pub const ORIGIN: &str = "fanout.dev/origin";

/// Secret type that is never copied: a token is bound to the service account
/// of its own namespace, and a copy would hand that identity to another.
pub const SERVICE_ACCOUNT_TOKEN: &str = "kubernetes.io/service-account-token";

/// Secret types a Fanout never replaces or deletes in a target, and why.
const PROTECTED_SECRET_TYPES: [(&str, &str); 3] = [
    (
        SERVICE_ACCOUNT_TOKEN,
        "a ServiceAccount token issued by the cluster for that namespace",
    ),
    (
        "bootstrap.kubernetes.io/token",
        "a bootstrap token that nodes use to join the cluster",
    ),
    (
        "helm.sh/release.v1",
        "Helm's record of a release, without which it cannot be upgraded or rolled back",
    ),
];

/// The ConfigMap Kubernetes publishes in every namespace with the cluster's
/// CA bundle; pods trust the API server through it.
const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

/// How a Fanout came to hold an object (see [`ORIGIN`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The Fanout created it: deleted when no longer wanted.
    Created,
    /// It existed with the same content and was taken over (`Adopt`).
    Adopted,
    /// It existed with other content and was replaced (`Overwrite`).
    Overwritten,
}

impl Origin {
    /// The origin an object's annotations record (no annotation: created).
    pub fn of(annotations: &BTreeMap<String, String>) -> Self {
        match annotations.get(ORIGIN).map(String::as_str) {
            Some("adopted") => Self::Adopted,
            Some("overwritten") => Self::Overwritten,
            _ => Self::Created,
        }
    }

    /// The annotation value, if any.
    pub fn annotation(self) -> Option<&'static str> {
        match self {
            Self::Created => None,
            Self::Adopted => Some("adopted"),
            Self::Overwritten => Some("overwritten"),
        }
    }
}

/// Label and annotation keys never copied from the source: they make a
/// GitOps tool or package manager treat the copy as its own (and prune it or
/// report it out of sync), or they are the controller's own bookkeeping.
const NOT_COPIED_KEYS: [&str; 3] = [
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
    "kubectl.kubernetes.io/last-applied-configuration",
];
/// Key prefixes never copied, for the same reasons as [`NOT_COPIED_KEYS`].
const NOT_COPIED_PREFIXES: [&str; 6] = [
    "fanout.dev/",
    "argocd.argoproj.io/",
    "meta.helm.sh/",
    "kustomize.toolkit.fluxcd.io/",
    "helm.toolkit.fluxcd.io/",
    "kapp.k14s.io/",
];

/// Whether a source label/annotation key is copied.
pub fn is_copied_key(key: &str) -> bool {
    !NOT_COPIED_KEYS.contains(&key) && !NOT_COPIED_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// The Fanout a copy belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The Fanout's namespace (also the source's).
    pub namespace: String,
    /// The Fanout's name.
    pub name: String,
    /// The Fanout's uid.
    pub uid: String,
}

impl Owner {
    /// The ownership labels every copy carries.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned()),
            (OWNER_NAMESPACE.to_owned(), self.namespace.clone()),
            (OWNER_NAME.to_owned(), self.name.clone()),
            (OWNER_UID.to_owned(), self.uid.clone()),
        ])
    }

    /// The owner recorded in a copy's labels, if it has all of them.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<Self> {
        Some(Self {
            namespace: labels.get(OWNER_NAMESPACE)?.clone(),
            name: labels.get(OWNER_NAME)?.clone(),
            uid: labels.get(OWNER_UID)?.clone(),
        })
    }
}

/// The kind-free content of a Secret or ConfigMap, as far as copies go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Content {
    /// Secret type (`Opaque` when unset); `None` for ConfigMaps.
    pub type_: Option<String>,
    /// `data` (ConfigMap strings as UTF-8 bytes).
    pub data: BTreeMap<String, Vec<u8>>,
    /// ConfigMap `binaryData`; always empty for Secrets.
    pub binary_data: BTreeMap<String, Vec<u8>>,
    /// Whether the object is immutable.
    pub immutable: bool,
    /// Copied labels (tool-owned and `fanout.dev/` keys removed).
    pub labels: BTreeMap<String, String>,
    /// Copied annotations (same filter).
    pub annotations: BTreeMap<String, String>,
}

impl Content {
    /// Content hash, `sha256:<hex>`, stable across map order and process.
    ///
    /// Every field is length-prefixed, so no two different contents encode
    /// to the same bytes.
    pub fn hash(&self) -> String {
        // The byte layout is what every copy's annotation was computed
        // with: changing it would rewrite every copy after an upgrade.
        let mut encoder = Encoder::new(b"fanout-content-v1");
        encoder.put(self.type_.as_deref().unwrap_or("").as_bytes());
        encoder.put(&[u8::from(self.type_.is_some()), u8::from(self.immutable)]);
        self.encode_bytes(&mut encoder);
        for (section, map) in [("labels", &self.labels), ("annotations", &self.annotations)] {
            encoder.put(section.as_bytes());
            encoder.put(&(map.len() as u64).to_be_bytes());
            for (key, value) in map {
                encoder.put(key.as_bytes());
                encoder.put(value.as_bytes());
            }
        }
        format!("sha256:{}", hex::encode(encoder.finish()))
    }

    /// The payload (type, data, binaryData) as a digest, with what decides
    /// how an object holding it may be replaced.
    pub fn payload(&self) -> Payload {
        let mut encoder = Encoder::new(b"fanout-payload-v1");
        encoder.put(self.type_.as_deref().unwrap_or("").as_bytes());
        encoder.put(&[u8::from(self.type_.is_some())]);
        self.encode_bytes(&mut encoder);
        Payload {
            type_: self.type_.as_deref().map(Arc::from),
            immutable: self.immutable,
            digest: encoder.finish(),
        }
    }

    fn encode_bytes(&self, encoder: &mut Encoder) {
        for (section, map) in [("data", &self.data), ("binaryData", &self.binary_data)] {
            encoder.put(section.as_bytes());
            encoder.put(&(map.len() as u64).to_be_bytes());
            for (key, value) in map {
                encoder.put(key.as_bytes());
                encoder.put(value);
            }
        }
    }
}

/// SHA-256 over length-prefixed fields.
struct Encoder(Sha256);

impl Encoder {
    fn new(domain: &[u8]) -> Self {
        let mut encoder = Self(Sha256::new());
        encoder.put(domain);
        encoder
    }

    fn put(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }

    fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// An object's payload (type, data, binaryData) reduced to a digest, with
/// its type and immutability: what deciding needs to know of the bytes
/// without holding them. The copy cache keeps this instead of the data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Payload {
    /// Secret type (`Opaque` when unset); `None` for ConfigMaps. Shared:
    /// the copy cache keeps one of each.
    pub type_: Option<Arc<str>>,
    /// Whether the object is immutable.
    pub immutable: bool,
    /// SHA-256 of the type, data and binaryData.
    pub digest: [u8; 32],
}

impl Payload {
    /// Whether the type, data and binaryData are the same (immutability
    /// aside); what `Adopt` requires before taking an object over.
    pub fn same_bytes(&self, other: &Payload) -> bool {
        self.type_ == other.type_ && self.digest == other.digest
    }
}

/// What every copy of one Fanout must hold, with its hash and payload
/// digest computed once for all its targets.
#[derive(Clone, Debug)]
pub struct Desired {
    /// The content.
    pub content: Content,
    /// `content.hash()`: the copies' hash annotation.
    pub hash: String,
    /// The same hash as bytes, as [`crate::found::Found`] keeps it.
    pub hash_bytes: [u8; 32],
    /// `content.payload()`.
    pub payload: Payload,
}

impl Desired {
    /// What copies of a source with this content hold.
    pub fn new(content: Content) -> Self {
        let hash = content.hash();
        Self {
            hash_bytes: parse_hash(&hash).unwrap_or_default(),
            payload: content.payload(),
            hash,
            content,
        }
    }
}

/// The bytes of a well-formed hash annotation (`sha256:` and 64 hex
/// digits); `None` for anything else.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("sha256:")?;
    let mut bytes = [0; 32];
    hex::decode_to_slice(hex, &mut bytes).ok()?;
    Some(bytes)
}

/// A kind that can be copied: Secret or ConfigMap.
pub trait CopyKind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// The kind as the Fanout spec names it.
    const KIND: SourceKind;

    /// The object's content, with metadata filtered as copies hold it.
    fn content(&self) -> Content;

    /// Builds an object named `name` in `namespace` holding `content`.
    fn from_content(meta: ObjectMeta, content: &Content) -> Self;

    /// Why this object must never be copied, if so.
    fn refusal(&self) -> Option<String> {
        None
    }

    /// Why this object, found in a target, must never be replaced or
    /// deleted by a Fanout (under any conflict policy, whatever its labels
    /// say), if so. Shared by every kind: an object another controller owns
    /// (an ownerReference) is that controller's to rewrite or delete.
    fn protection(&self) -> Option<String> {
        owner_protection(self)
    }
}

/// Labels and annotations of `meta` that copies carry.
fn copied(map: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    map.iter()
        .filter(|(k, _)| is_copied_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn bytes_map(map: Option<&BTreeMap<String, ByteString>>) -> BTreeMap<String, Vec<u8>> {
    map.map(|m| m.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default()
}

fn byte_strings(map: &BTreeMap<String, Vec<u8>>) -> Option<BTreeMap<String, ByteString>> {
    (!map.is_empty()).then(|| {
        map.iter()
            .map(|(k, v)| (k.clone(), ByteString(v.clone())))
            .collect()
    })
}

impl CopyKind for Secret {
    const KIND: SourceKind = SourceKind::Secret;

    fn content(&self) -> Content {
        Content {
            type_: Some(self.type_.clone().unwrap_or_else(|| "Opaque".to_owned())),
            data: bytes_map(self.data.as_ref()),
            binary_data: BTreeMap::new(),
            immutable: self.immutable.unwrap_or(false),
            labels: copied(self.labels()),
            annotations: copied(self.annotations()),
        }
    }

    fn from_content(meta: ObjectMeta, content: &Content) -> Self {
        Secret {
            metadata: meta,
            type_: content.type_.clone(),
            data: byte_strings(&content.data),
            immutable: content.immutable.then_some(true),
            ..Secret::default()
        }
    }

    fn protection(&self) -> Option<String> {
        let type_ = self.type_.as_deref().unwrap_or_default();
        PROTECTED_SECRET_TYPES
            .iter()
            .find(|(protected, _)| *protected == type_)
            .map(|(_, what)| format!("{what} (type {type_})"))
            .or_else(|| owner_protection(self))
    }

    fn refusal(&self) -> Option<String> {
        (self.type_.as_deref() == Some(SERVICE_ACCOUNT_TOKEN)).then(|| {
            format!(
                "secret {}/{} is a service-account token: it is bound to its own namespace and is never copied",
                self.namespace().unwrap_or_default(),
                self.name_any()
            )
        })
    }
}

impl CopyKind for ConfigMap {
    const KIND: SourceKind = SourceKind::ConfigMap;

    fn protection(&self) -> Option<String> {
        if self.metadata.name.as_deref() == Some(ROOT_CA_CONFIG_MAP) {
            return Some(
                "the cluster CA bundle Kubernetes publishes in every namespace".to_owned(),
            );
        }
        owner_protection(self)
    }

    fn content(&self) -> Content {
        Content {
            type_: None,
            data: self
                .data
                .as_ref()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
            binary_data: bytes_map(self.binary_data.as_ref()),
            immutable: self.immutable.unwrap_or(false),
            labels: copied(self.labels()),
            annotations: copied(self.annotations()),
        }
    }

    fn from_content(meta: ObjectMeta, content: &Content) -> Self {
        // ConfigMap data came from strings, so it is valid UTF-8; a lossy
        // conversion can only differ if that invariant were broken.
        let data: BTreeMap<String, String> = content
            .data
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        ConfigMap {
            metadata: meta,
            data: (!data.is_empty()).then_some(data),
            binary_data: byte_strings(&content.binary_data),
            immutable: content.immutable.then_some(true),
        }
    }
}

/// The protection every kind shares: another controller owns the object.
fn owner_protection<K: Resource>(object: &K) -> Option<String> {
    object
        .meta()
        .owner_references
        .as_ref()
        .and_then(|owners| owners.first())
        .map(|owner| {
            format!(
                "owned by {} {}, which manages it",
                owner.kind.to_lowercase(),
                owner.name
            )
        })
}

/// The copy a Fanout wants in one target: the source's content plus the
/// ownership labels, the hash annotation and, for an object it took over,
/// how it did.
pub fn desired_copy<K: CopyKind>(
    content: &Content,
    hash: &str,
    owner: &Owner,
    source_name: &str,
    name: &str,
    namespace: &str,
    origin: Origin,
) -> K {
    let mut labels = content.labels.clone();
    labels.extend(owner.labels());
    let mut annotations = content.annotations.clone();
    annotations.insert(CONTENT_HASH.to_owned(), hash.to_owned());
    if let Some(origin) = origin.annotation() {
        annotations.insert(ORIGIN.to_owned(), origin.to_owned());
    }
    annotations.insert(
        SOURCE.to_owned(),
        format!("{}/{}/{}", owner.namespace, K::KIND.as_str(), source_name),
    );
    let meta = ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels),
        annotations: Some(annotations),
        ..ObjectMeta::default()
    };
    K::from_content(meta, content)
}

/// A write that changes a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// Nothing there yet.
    Create,
    /// Our copy drifted (or is stale): replace it in place.
    Update,
    /// Replace by delete-and-create: the Secret type differs, or the object
    /// is immutable, so an update cannot make it true.
    Recreate,
    /// Take over an object we did not make whose content already matches.
    Adopt,
    /// Remove a copy that must not be there (no consent, pruned, cleanup).
    Delete,
    /// Let go of an object the Fanout adopted or overwrote: remove its
    /// Fanout labels and annotations, leave the object.
    Release,
}

impl Operation {
    /// Every operation, for metrics.
    pub const ALL: [Operation; 6] = [
        Self::Create,
        Self::Update,
        Self::Recreate,
        Self::Adopt,
        Self::Delete,
        Self::Release,
    ];

    /// Lowercase name, the metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Recreate => "recreate",
            Self::Adopt => "adopt",
            Self::Delete => "delete",
            Self::Release => "release",
        }
    }
}

/// What unit tests across the crate share.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::Owner;

    /// The Fanout the tests' copies belong to.
    pub fn owner() -> Owner {
        Owner {
            namespace: "platform".into(),
            name: "registry-creds".into(),
            uid: "1234".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::owner;
    use super::*;

    fn source() -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("regcred".into()),
                namespace: Some("platform".into()),
                labels: Some(BTreeMap::from([
                    ("team".into(), "infra".into()),
                    ("app.kubernetes.io/instance".into(), "argo-app".into()),
                    ("argocd.argoproj.io/secret-type".into(), "repository".into()),
                ])),
                annotations: Some(BTreeMap::from([
                    (
                        "kubectl.kubernetes.io/last-applied-configuration".into(),
                        "{}".into(),
                    ),
                    ("note".into(), "keep me".into()),
                ])),
                resource_version: Some("42".into()),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/dockerconfigjson".into()),
            data: Some(BTreeMap::from([(
                ".dockerconfigjson".into(),
                ByteString(b"{}".to_vec()),
            )])),
            ..Secret::default()
        }
    }

    #[test]
    fn tool_owned_labels_and_annotations_are_not_copied() {
        let content = source().content();
        assert_eq!(
            content.labels,
            BTreeMap::from([("team".into(), "infra".into())])
        );
        assert_eq!(
            content.annotations,
            BTreeMap::from([("note".into(), "keep me".into())])
        );
    }

    #[test]
    fn desired_copy_carries_content_ownership_and_hash() {
        let content = source().content();
        let hash = content.hash();
        let copy: Secret = desired_copy(
            &content,
            &hash,
            &owner(),
            "regcred",
            "regcred",
            "team-a",
            Origin::Created,
        );
        assert_eq!(
            copy.type_.as_deref(),
            Some("kubernetes.io/dockerconfigjson")
        );
        assert_eq!(copy.data, source().data);
        assert_eq!(copy.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(copy.metadata.resource_version, None);
        assert_eq!(copy.labels()[MANAGED_BY], "fanout");
        assert_eq!(Owner::from_labels(copy.labels()), Some(owner()));
        assert_eq!(copy.annotations()[CONTENT_HASH], hash);
        assert_eq!(copy.annotations()[SOURCE], "platform/Secret/regcred");
    }

    #[test]
    fn the_hash_is_the_one_earlier_versions_wrote() {
        // Every copy in a cluster carries this value: a new encoding would
        // rewrite all of them on upgrade.
        assert_eq!(
            source().content().hash(),
            "sha256:b148d1be08ef804091d3b64c1be751b9ccf446130f9e87153237e93cd16926a4"
        );
    }

    #[test]
    fn the_payload_digest_ignores_labels_and_immutability_but_not_bytes_or_type() {
        let content = source().content();
        let mut relabelled = content.clone();
        relabelled.labels.clear();
        relabelled.immutable = true;
        assert!(relabelled.payload().same_bytes(&content.payload()));
        let mut edited = content.clone();
        edited.data.insert("extra".into(), Vec::new());
        assert!(!edited.payload().same_bytes(&content.payload()));
        let mut retyped = content.clone();
        retyped.type_ = Some("Opaque".into());
        assert!(!retyped.payload().same_bytes(&content.payload()));
    }

    #[test]
    fn a_faithful_copy_hashes_like_its_source() {
        let content = source().content();
        let copy: Secret = desired_copy(
            &content,
            &content.hash(),
            &owner(),
            "regcred",
            "regcred",
            "team-a",
            Origin::Created,
        );
        assert_eq!(copy.content().hash(), content.hash());
    }

    #[test]
    fn hash_changes_with_every_promised_field() {
        let base = source().content();
        let mut variants = Vec::new();
        let mut edited = base.clone();
        edited.data.insert("x".into(), b"1".to_vec());
        variants.push(edited);
        let mut retyped = base.clone();
        retyped.type_ = Some("Opaque".into());
        variants.push(retyped);
        let mut immutable = base.clone();
        immutable.immutable = true;
        variants.push(immutable);
        let mut relabelled = base.clone();
        relabelled.labels.insert("team".into(), "other".into());
        variants.push(relabelled);
        let mut moved = base.clone();
        let value = moved.data.remove(".dockerconfigjson").unwrap();
        moved.binary_data.insert(".dockerconfigjson".into(), value);
        variants.push(moved);
        for variant in variants {
            assert_ne!(variant.hash(), base.hash(), "{variant:?}");
        }
    }

    #[test]
    fn hash_is_stable_over_insertion_order() {
        let mut a = Content::default();
        let mut b = Content::default();
        for (k, v) in [("one", "1"), ("two", "2"), ("three", "3")] {
            a.data.insert(k.into(), v.as_bytes().to_vec());
        }
        for (k, v) in [("three", "3"), ("one", "1"), ("two", "2")] {
            b.data.insert(k.into(), v.as_bytes().to_vec());
        }
        assert_eq!(a.hash(), b.hash());
        assert!(a.hash().starts_with("sha256:") && a.hash().len() == 7 + 64);
    }

    #[test]
    fn tokens_cluster_records_and_owned_objects_are_protected() {
        let mut secret = source();
        assert_eq!(secret.protection(), None);
        for type_ in [
            SERVICE_ACCOUNT_TOKEN,
            "bootstrap.kubernetes.io/token",
            "helm.sh/release.v1",
        ] {
            secret.type_ = Some(type_.into());
            assert!(secret.protection().unwrap().contains(type_), "{type_}");
        }
        let mut owned = source();
        owned.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                kind: "Certificate".into(),
                name: "web".into(),
                ..Default::default()
            },
        ]);
        assert_eq!(
            owned.protection().as_deref(),
            Some("owned by certificate web, which manages it")
        );
        let ca = ConfigMap {
            metadata: ObjectMeta {
                name: Some("kube-root-ca.crt".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        assert!(ca.protection().unwrap().contains("CA bundle"));
    }

    #[test]
    fn origin_round_trips_through_the_annotation() {
        for origin in [Origin::Created, Origin::Adopted, Origin::Overwritten] {
            let content = source().content();
            let copy: Secret = desired_copy(&content, "h", &owner(), "s", "c", "ns", origin);
            assert_eq!(Origin::of(copy.annotations()), origin);
        }
    }

    #[test]
    fn unset_secret_type_means_opaque() {
        let mut secret = source();
        secret.type_ = None;
        assert_eq!(secret.content().type_.as_deref(), Some("Opaque"));
    }

    #[test]
    fn service_account_tokens_are_refused() {
        let mut secret = source();
        assert_eq!(secret.refusal(), None);
        secret.type_ = Some(SERVICE_ACCOUNT_TOKEN.into());
        assert!(secret.refusal().unwrap().contains("service-account token"));
    }

    #[test]
    fn config_maps_round_trip_data_and_binary_data() {
        let cm = ConfigMap {
            data: Some(BTreeMap::from([("a".into(), "text".into())])),
            binary_data: Some(BTreeMap::from([(
                "b".into(),
                ByteString(vec![0, 159, 255]),
            )])),
            immutable: Some(true),
            ..ConfigMap::default()
        };
        let content = cm.content();
        let rebuilt = ConfigMap::from_content(ObjectMeta::default(), &content);
        assert_eq!(rebuilt.data, cm.data);
        assert_eq!(rebuilt.binary_data, cm.binary_data);
        assert_eq!(rebuilt.immutable, Some(true));
        assert_eq!(rebuilt.content(), content);
    }
}
