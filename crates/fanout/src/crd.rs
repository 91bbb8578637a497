//! The `Fanout` custom resource (`fanout.dev/v1alpha1`): its spec, its status
//! and the admission rules the API server enforces before the controller ever
//! sees an object.
//!
//! What can be judged from the object alone is rejected at admission through
//! the OpenAPI schema (enums, lengths, defaults) and CEL rules with messages a
//! person can act on; what needs the cluster (a missing source, a namespace
//! that does not consent) becomes a status condition instead.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

// Formats are checked with OpenAPI `pattern`s rather than CEL: patterns cost
// nothing against the CRD's CEL budget, and the API server's message names
// the field, the offending value and the expected pattern.

/// RFC 1123 label (namespace names): what `targets.namespaces` and `exclude` hold.
const DNS_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// RFC 1123 subdomain: what Secret and ConfigMap names may be.
const DNS_SUBDOMAIN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// What a Fanout copies, from where, to where, and how it treats objects it
/// did not make.
///
/// The Fanout lives in its source's namespace: only someone allowed to create
/// a Fanout there can fan out that namespace's objects.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fanout.dev",
    version = "v1alpha1",
    kind = "Fanout",
    namespaced,
    status = "FanoutStatus",
    shortname = "fo",
    derive = "PartialEq",
    doc = "Copies a Secret or ConfigMap from its namespace into many target namespaces and keeps the copies true.",
    printcolumn(name = "Source", type_ = "string", description = "Name of the copied object", json_path = ".spec.source.name"),
    printcolumn(name = "Desired", type_ = "integer", description = "Resolved target namespaces", json_path = ".status.summary.desired"),
    printcolumn(name = "Synced", type_ = "integer", description = "Targets holding a true copy", json_path = ".status.summary.synced"),
    printcolumn(name = "Ready", type_ = "string", description = "Ready condition", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63")
        .message("metadata.name must be at most 63 characters: every copy carries it in a label")
)]
#[serde(rename_all = "camelCase")]
pub struct FanoutSpec {
    /// The Secret or ConfigMap to copy, in the Fanout's own namespace.
    pub source: SourceRef,
    /// Where copies go: explicit names first (in order), then selector
    /// matches sorted by name, minus exclusions and the source namespace.
    pub targets: Targets,
    /// Name of the copies; defaults to the source's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub copy_name: Option<String>,
    /// What to do when a target already holds an object of the copy's name
    /// that this Fanout did not make.
    #[serde(default)]
    pub conflict_policy: ConflictPolicy,
    /// Delete copies that are no longer targeted (and all copies when the
    /// source is deleted).
    #[serde(default = "default_prune")]
    pub prune: bool,
}

fn default_prune() -> bool {
    true
}

/// The object to copy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct SourceRef {
    /// `Secret` or `ConfigMap`.
    pub kind: SourceKind,
    /// Its name, in the Fanout's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
}

/// The kinds a Fanout can copy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// A core/v1 Secret (never of type `kubernetes.io/service-account-token`).
    Secret,
    /// A core/v1 ConfigMap.
    ConfigMap,
}

impl SourceKind {
    /// The kind's name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Secret => "Secret",
            Self::ConfigMap => "ConfigMap",
        }
    }
}

/// How the target namespaces are chosen.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.namespaces) && size(self.namespaces) > 0) || has(self.selector)")
    .message("targets must list namespaces or give a selector"))]
pub struct Targets {
    /// Namespaces by name, kept in this order (duplicates dropped).
    #[serde(default)]
    #[schemars(length(max = 10000), inner(length(min = 1, max = 63), regex(pattern = DNS_LABEL)))]
    pub namespaces: Vec<String>,
    /// Namespaces whose labels match, added after the explicit names in
    /// name order. An empty selector (`{}`) matches every namespace, as
    /// everywhere in Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<NamespaceSelector>,
    /// Namespaces never targeted, whichever way they were named.
    #[serde(default)]
    #[schemars(length(max = 10000), inner(length(min = 1, max = 63), regex(pattern = DNS_LABEL)))]
    pub exclude: Vec<String>,
}

/// A namespace label selector, with the same meaning as
/// `metav1.LabelSelector`, validated at admission (the upstream type is not).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    /// Labels that must all be present with these values.
    #[serde(default)]
    #[schemars(schema_with = "match_labels_schema")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements that must all hold.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub match_expressions: Vec<SelectorRequirement>,
}

/// Label keys: optional DNS-subdomain prefix, then a name of at most 63
/// characters (length is bounded separately by `maxLength`).
const LABEL_KEY: &str = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
/// Label values: empty, or at most 63 characters bounded by alphanumerics.
const LABEL_VALUE: &str = "^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$";

/// `matchLabels`: values are checked by pattern; keys, which OpenAPI
/// cannot pattern-check, by a CEL rule (bounded by `maxProperties`).
fn match_labels_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Labels that must all be present with these values.",
        "type": "object",
        "maxProperties": 32,
        "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE},
        "x-kubernetes-validations": [{
            "rule": format!("self.all(k, k.size() <= 317 && k.matches('{LABEL_KEY}'))"),
            "message": "matchLabels keys must be label keys: an optional DNS-subdomain prefix and '/', then at most 63 letters, digits, '-', '_' or '.'",
        }],
    })
}

/// One set-based requirement of a [`NamespaceSelector`].
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) : (!has(self.values) || size(self.values) == 0)")
    .message("In and NotIn need at least one value; Exists and DoesNotExist take no values"))]
pub struct SelectorRequirement {
    /// The label key.
    #[schemars(length(min = 1, max = 317), regex(pattern = LABEL_KEY))]
    pub key: String,
    /// How the key relates to the values.
    pub operator: SelectorOperator,
    /// Values for `In` and `NotIn`.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(max = 63), regex(pattern = LABEL_VALUE)))]
    pub values: Vec<String>,
}

/// The operators of a label selector requirement.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorOperator {
    /// The label is present with one of the values.
    In,
    /// The label is absent or has none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// What to do with an existing object of the copy's name that this Fanout
/// did not make (no ownership labels naming this Fanout's uid).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// Never touch it; the target is reported as `Conflict`.
    #[default]
    Skip,
    /// Take it over only if its content already equals the copy's.
    Adopt,
    /// Replace it with the copy.
    Overwrite,
}

/// What the controller last observed and did.
///
/// Size at 10,000 targets: a status listing every target would reach ~2 MB,
/// over etcd's default 1.5 MiB request limit. So `targets` holds at most
/// 1,000 entries (~200 kB; the controller's `max_status_targets` setting).
/// Up to the cap every resolved target is listed; above it the entries that
/// need attention are kept first (Failed, Conflict, Refused, then Pending,
/// then Synced), and the chosen entries are always written in resolution
/// order. `targetsOmitted` counts the entries left out, and `summary` always
/// counts every target, so no count is ever lost. Messages are cut to 256
/// characters for the same reason. While a pass is running, its status
/// writes list only the targets that need attention (the counts move, the
/// full list is written when the pass ends).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FanoutStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Content hash (`sha256:…`) every copy must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_hash: Option<String>,
    /// Counts over all resolved targets (never capped).
    #[serde(default)]
    pub summary: Summary,
    /// Per-target results in resolution order (capped, and only those that
    /// need attention while a pass runs; see the type's doc).
    #[serde(default)]
    pub targets: Vec<TargetStatus>,
    /// How many resolved targets `targets` leaves out (the cap, or a pass
    /// still running).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub targets_omitted: u32,
    /// kstatus conditions, each with `observedGeneration`: `Ready` always;
    /// `Reconciling` (True) while the controller is still converging on its
    /// own, `Stalled` (True) when it cannot without someone acting; both
    /// left out when False.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Counts of targets by state.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Resolved targets.
    pub desired: u32,
    /// Targets holding a true copy.
    pub synced: u32,
    /// Targets not yet processed in the current pass.
    pub pending: u32,
    /// Targets whose write failed.
    pub failed: u32,
    /// Targets blocked by an object this Fanout did not make.
    pub conflict: u32,
    /// Targets that do not accept copies from this namespace.
    pub refused: u32,
}

/// One resolved target and what happened there.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    /// The target namespace.
    pub namespace: String,
    /// Where it stands.
    pub state: TargetState,
    /// Content hash of the copy there, when one is there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Why it is not Synced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the copy was last written or found true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
}

/// The state of one target.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetState {
    /// Not processed yet in the current pass.
    Pending,
    /// Holds a copy equal to the source.
    Synced,
    /// The write failed (message says why); retried later.
    Failed,
    /// An object this Fanout did not make is in the way.
    Conflict,
    /// The namespace does not accept copies from the source namespace.
    Refused,
}

impl TargetState {
    /// Every state, in the order `targets by state` metrics list them.
    pub const ALL: [TargetState; 5] = [
        Self::Pending,
        Self::Synced,
        Self::Failed,
        Self::Conflict,
        Self::Refused,
    ];

    /// The state's name as it appears in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Synced => "Synced",
            Self::Failed => "Failed",
            Self::Conflict => "Conflict",
            Self::Refused => "Refused",
        }
    }
}

impl Fanout {
    /// Name of the copies: `copyName`, else the source's name.
    pub fn copy_name(&self) -> &str {
        self.spec
            .copy_name
            .as_deref()
            .unwrap_or(&self.spec.source.name)
    }
}

/// The CustomResourceDefinition as YAML, generated from these types: what
/// `fanout crd` prints and what the chart and `deploy/` ship.
pub fn crd_yaml() -> String {
    // The CRD is plain data built from string literals; serialising it cannot fail.
    serde_yaml::to_string(&Fanout::crd()).expect("the CRD always serialises to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn schema() -> Value {
        let crd = serde_json::to_value(Fanout::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    #[test]
    fn crd_names_group_version_scope_and_short_name() {
        let crd = Fanout::crd();
        assert_eq!(crd.spec.group, "fanout.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["fo".to_owned()]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Source", "Desired", "Synced", "Ready", "Age"]);
    }

    #[test]
    fn schema_has_enums_defaults_and_cel_rules() {
        let spec = &schema()["properties"]["spec"];
        assert_eq!(
            spec["properties"]["source"]["properties"]["kind"]["enum"],
            json!(["Secret", "ConfigMap"])
        );
        assert_eq!(
            spec["properties"]["conflictPolicy"]["default"],
            json!("Skip")
        );
        assert_eq!(spec["properties"]["prune"]["default"], json!(true));
        let rules = serde_json::to_string(spec).unwrap();
        assert!(rules.contains("x-kubernetes-validations"));
        assert!(rules.contains("targets must list namespaces or give a selector"));
        assert!(
            schema()["x-kubernetes-validations"]
                .to_string()
                .contains("at most 63")
        );
    }

    #[test]
    fn crd_yaml_is_a_custom_resource_definition() {
        let yaml = crd_yaml();
        assert!(yaml.contains("kind: CustomResourceDefinition"));
        assert!(yaml.contains("name: fanouts.fanout.dev"));
    }

    #[test]
    fn spec_defaults_apply_when_fields_are_omitted() {
        let spec: FanoutSpec = serde_json::from_value(json!({
            "source": {"kind": "Secret", "name": "regcred"},
            "targets": {"namespaces": ["a"]}
        }))
        .unwrap();
        assert_eq!(spec.conflict_policy, ConflictPolicy::Skip);
        assert!(spec.prune);
        let fanout = Fanout::new("f", spec);
        assert_eq!(fanout.copy_name(), "regcred");
    }
}
