//! Target resolution: which namespaces a Fanout copies into, in which order.
//!
//! The order is part of the product: `status.targets` always follows it,
//! whatever order the writes finish in. Explicit names come first as given
//! (duplicates dropped), then selector matches sorted by name, minus the
//! exclusions and minus the source namespace itself.

//!
//! # Consent
//!
//! Consent: a target namespace must accept copies from the source namespace.
//!
//! Copying a Secret into a namespace hands it to everyone who can read
//! Secrets there, and puts an object there its owners did not ask for. So by
//! default a namespace receives nothing unless it says so, by label:
//!
//! - `fanout.dev/accept-from.<source-namespace>: "true"` accepts one source
//!   namespace;
//! - `fanout.dev/accept-from-all: "true"` accepts every source namespace;
//! - the annotation `fanout.dev/accept-from: "ns-a,ns-b"` accepts source
//!   namespaces whose names are too long for a label key (a label key's
//!   name part holds at most 63 characters, so the label form fits source
//!   namespaces of up to 51).
//!
//! `--require-consent=false` turns the rule off for single-tenant clusters.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::core::Selector;

use crate::crd::{NamespaceSelector, SelectorOperator, TargetState, TargetStatus, Targets};
use crate::status;

/// A namespace's labels as the controller keeps them: sorted pairs in one
/// boxed slice. The controller keeps the labels of every namespace in the
/// cluster, and a `BTreeMap` spends a 540-byte node on the usual three.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// How many labels there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&BTreeMap<String, String>> for Labels {
    fn from(map: &BTreeMap<String, String>) -> Self {
        // A BTreeMap iterates in key order: the slice comes out sorted.
        Self(
            map.iter()
                .map(|(k, v)| (Box::from(k.as_str()), Box::from(v.as_str())))
                .collect(),
        )
    }
}

/// Whether `labels` satisfy `selector`, with Kubernetes' label selector
/// semantics: every `matchLabels` pair present with its value; `In`, the
/// key set to one of the values; `NotIn`, the key absent or set to none of
/// them; `Exists` and `DoesNotExist`, the key present or not. (kube's
/// `Selector` matches only a `BTreeMap`, which the compact [`Labels`] are
/// not; selectors are validated with it, see [`resolve`].)
pub fn selects(selector: &NamespaceSelector, labels: &Labels) -> bool {
    let pairs_hold = selector
        .match_labels
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value.as_str()));
    pairs_hold
        && selector.match_expressions.iter().all(|requirement| {
            let found = labels.get(&requirement.key);
            let listed = || found.is_some_and(|v| requirement.values.iter().any(|w| w == v));
            match requirement.operator {
                SelectorOperator::In => listed(),
                SelectorOperator::NotIn => !listed(),
                SelectorOperator::Exists => found.is_some(),
                SelectorOperator::DoesNotExist => found.is_none(),
            }
        })
}

/// What resolution needs to know about one namespace in the cluster.
#[derive(Clone, Copy, Debug)]
pub struct NamespaceView<'a> {
    /// The namespace's name.
    pub name: &'a str,
    /// Its labels (selectors match on them).
    pub labels: &'a Labels,
    /// Whether it is being deleted; such namespaces are never selected.
    pub terminating: bool,
}

/// The selector cannot be evaluated (only possible for objects admitted
/// before the CRD's validation rules existed).
#[derive(Debug, thiserror::Error)]
#[error("targets.selector is not a valid label selector: {0}")]
pub struct InvalidSelector(String);

/// Resolves `targets` against the cluster's namespaces, in resolution order.
///
/// Explicit names are kept even when no such namespace exists (yet): the
/// target then reports why nothing was copied, instead of silently vanishing
/// from the status.
pub fn resolve<'a>(
    targets: &Targets,
    source_namespace: &str,
    namespaces: impl IntoIterator<Item = NamespaceView<'a>>,
) -> Result<Vec<String>, InvalidSelector> {
    let excluded: HashSet<&str> = targets
        .exclude
        .iter()
        .map(String::as_str)
        .chain([source_namespace])
        .collect();
    let mut seen: HashSet<String> = HashSet::new();
    let mut resolved = Vec::new();
    for name in &targets.namespaces {
        if !excluded.contains(name.as_str()) && seen.insert(name.clone()) {
            resolved.push(name.clone());
        }
    }
    if let Some(selector) = &targets.selector {
        to_selector(selector)?;
        let mut matched: Vec<&str> = namespaces
            .into_iter()
            .filter(|ns| !ns.terminating && selects(selector, ns.labels))
            .map(|ns| ns.name)
            .filter(|name| !excluded.contains(name) && !seen.contains(*name))
            .collect();
        matched.sort_unstable();
        matched.dedup();
        resolved.extend(matched.into_iter().map(str::to_owned));
    }
    Ok(resolved)
}

/// Whether a namespace with these labels is selected by `targets` by name or
/// by selector (exclusions aside). Used to map namespace events back to the
/// Fanouts they may concern; an unevaluable selector counts as a match so the
/// Fanout gets to report it.
pub fn mentions(targets: &Targets, name: &str, labels: &Labels) -> bool {
    targets.namespaces.iter().any(|n| n == name)
        || targets
            .selector
            .as_ref()
            .is_some_and(|s| to_selector(s).is_err() || selects(s, labels))
}

/// Converts the CRD's selector into kube's evaluable [`Selector`].
fn to_selector(selector: &NamespaceSelector) -> Result<Selector, InvalidSelector> {
    let requirements = selector
        .match_expressions
        .iter()
        .map(|r| LabelSelectorRequirement {
            key: r.key.clone(),
            operator: operator_name(r.operator).to_owned(),
            values: matches!(r.operator, SelectorOperator::In | SelectorOperator::NotIn)
                .then(|| r.values.clone()),
        })
        .collect();
    let label_selector = LabelSelector {
        match_labels: Some(selector.match_labels.clone()),
        match_expressions: Some(requirements),
    };
    Selector::try_from(label_selector).map_err(|e| InvalidSelector(e.0))
}

fn operator_name(operator: SelectorOperator) -> &'static str {
    match operator {
        SelectorOperator::In => "In",
        SelectorOperator::NotIn => "NotIn",
        SelectorOperator::Exists => "Exists",
        SelectorOperator::DoesNotExist => "DoesNotExist",
    }
}

/// Label that accepts copies from every source namespace.
pub const ACCEPT_FROM_ALL: &str = "fanout.dev/accept-from-all";
/// Prefix of the label that accepts copies from one source namespace.
pub const ACCEPT_FROM_PREFIX: &str = "fanout.dev/accept-from.";
/// Annotation listing accepted source namespaces, comma-separated.
pub const ACCEPT_FROM_ANNOTATION: &str = "fanout.dev/accept-from";

/// The label a namespace sets to accept copies from `source_namespace`.
pub fn accept_label(source_namespace: &str) -> String {
    format!("{ACCEPT_FROM_PREFIX}{source_namespace}")
}

/// Whether the consent rule is enforced, and how it is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsentRule {
    /// Targets must accept by label or annotation (the default).
    Required,
    /// Every target accepts (`--require-consent=false`).
    NotRequired,
}

impl ConsentRule {
    /// Whether a namespace with these labels and this
    /// `fanout.dev/accept-from` annotation accepts copies from
    /// `source_namespace`.
    pub fn accepts(
        self,
        labels: &Labels,
        accept_from: Option<&str>,
        source_namespace: &str,
    ) -> bool {
        match self {
            Self::NotRequired => true,
            Self::Required => {
                let is_true = |key: &str| labels.get(key) == Some("true");
                is_true(ACCEPT_FROM_ALL)
                    || is_true(&accept_label(source_namespace))
                    || accept_from
                        .is_some_and(|list| list.split(',').any(|ns| ns.trim() == source_namespace))
            }
        }
    }

    /// Why a target that does not accept gets nothing (the status message).
    pub fn refusal_message(target: &str, source_namespace: &str) -> String {
        format!(
            "namespace {target} does not accept copies from {source_namespace}: label it {}=\"true\" (or {ACCEPT_FROM_ALL}=\"true\")",
            accept_label(source_namespace)
        )
    }
}

/// A target that does not accept copies from `source_namespace`, and how it could.
pub fn refused(namespace: &str, source_namespace: &str) -> TargetStatus {
    status::entry(
        namespace,
        TargetState::Refused,
        Some(ConsentRule::refusal_message(namespace, source_namespace)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SelectorRequirement;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from(&map(pairs))
    }

    struct Cluster(Vec<(String, Labels, bool)>);

    impl Cluster {
        fn views(&self) -> impl Iterator<Item = NamespaceView<'_>> {
            self.0
                .iter()
                .map(|(name, labels, terminating)| NamespaceView {
                    name,
                    labels,
                    terminating: *terminating,
                })
        }
    }

    fn cluster() -> Cluster {
        Cluster(vec![
            ("zeta".into(), labels(&[("tier", "apps")]), false),
            ("alpha".into(), labels(&[("tier", "apps")]), false),
            ("team-a".into(), labels(&[("tier", "apps")]), false),
            (
                "mid".into(),
                labels(&[("tier", "apps"), ("env", "dev")]),
                false,
            ),
            ("platform".into(), labels(&[("tier", "apps")]), false),
            ("dying".into(), labels(&[("tier", "apps")]), true),
            ("other".into(), labels(&[("tier", "db")]), false),
        ])
    }

    fn selector(pairs: &[(&str, &str)]) -> Option<NamespaceSelector> {
        Some(NamespaceSelector {
            match_labels: map(pairs),
            match_expressions: vec![],
        })
    }

    #[test]
    fn explicit_names_keep_their_order_then_selector_matches_sorted() {
        let targets = Targets {
            namespaces: vec![
                "team-b".into(),
                "team-a".into(),
                "team-b".into(),
                "zeta".into(),
            ],
            selector: selector(&[("tier", "apps")]),
            exclude: vec!["mid".into()],
        };
        let resolved = resolve(&targets, "platform", cluster().views()).unwrap();
        assert_eq!(resolved, ["team-b", "team-a", "zeta", "alpha"]);
    }

    #[test]
    fn source_namespace_and_exclusions_are_dropped_even_when_named() {
        let targets = Targets {
            namespaces: vec!["platform".into(), "kube-system".into(), "team-a".into()],
            selector: None,
            exclude: vec!["kube-system".into()],
        };
        assert_eq!(
            resolve(&targets, "platform", cluster().views()).unwrap(),
            ["team-a"]
        );
    }

    #[test]
    fn terminating_namespaces_are_never_selected() {
        let targets = Targets {
            selector: selector(&[("tier", "apps")]),
            ..Targets::default()
        };
        let resolved = resolve(&targets, "x", cluster().views()).unwrap();
        assert_eq!(resolved, ["alpha", "mid", "platform", "team-a", "zeta"]);
    }

    #[test]
    fn expressions_follow_label_selector_semantics() {
        let targets = Targets {
            selector: Some(NamespaceSelector {
                match_labels: BTreeMap::new(),
                match_expressions: vec![
                    SelectorRequirement {
                        key: "tier".into(),
                        operator: SelectorOperator::In,
                        values: vec!["apps".into(), "db".into()],
                    },
                    SelectorRequirement {
                        key: "env".into(),
                        operator: SelectorOperator::DoesNotExist,
                        values: vec![],
                    },
                ],
            }),
            ..Targets::default()
        };
        let resolved = resolve(&targets, "platform", cluster().views()).unwrap();
        assert_eq!(resolved, ["alpha", "other", "team-a", "zeta"]);
    }

    #[test]
    fn an_empty_selector_matches_every_namespace() {
        let targets = Targets {
            selector: selector(&[]),
            ..Targets::default()
        };
        assert_eq!(
            resolve(&targets, "platform", cluster().views())
                .unwrap()
                .len(),
            5
        );
    }

    #[test]
    fn mentions_covers_names_and_selector_matches() {
        let targets = Targets {
            namespaces: vec!["team-a".into()],
            selector: selector(&[("tier", "apps")]),
            exclude: vec![],
        };
        assert!(mentions(&targets, "team-a", &labels(&[])));
        assert!(mentions(&targets, "new", &labels(&[("tier", "apps")])));
        assert!(!mentions(&targets, "new", &labels(&[("tier", "db")])));
    }

    #[test]
    fn selectors_match_as_kubernetes_matches_them() {
        use crate::crd::SelectorRequirement;
        use kube::core::SelectorExt;
        let requirement = |key: &str, operator, values: &[&str]| SelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        };
        let cases = [
            (
                requirement("env", SelectorOperator::In, &["dev", "prod"]),
                [true, false, false],
            ),
            (
                requirement("env", SelectorOperator::NotIn, &["dev"]),
                [false, true, true],
            ),
            (
                requirement("env", SelectorOperator::Exists, &[]),
                [true, true, false],
            ),
            (
                requirement("env", SelectorOperator::DoesNotExist, &[]),
                [false, false, true],
            ),
        ];
        let namespaces = [
            labels(&[("env", "dev"), ("tier", "apps")]),
            labels(&[("env", "test"), ("tier", "apps")]),
            labels(&[("tier", "apps")]),
        ];
        for (requirement, expected) in cases {
            let selector = NamespaceSelector {
                match_labels: map(&[("tier", "apps")]),
                match_expressions: vec![requirement.clone()],
            };
            let kube = to_selector(&selector).unwrap();
            for (labels, expected) in namespaces.iter().zip(expected) {
                assert_eq!(
                    selects(&selector, labels),
                    expected,
                    "{requirement:?} on {labels:?}"
                );
                // The same verdict as kube's own selector on a BTreeMap.
                let as_map: BTreeMap<String, String> = labels
                    .0
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                assert_eq!(kube.matches(&as_map), expected);
            }
        }
        let empty = NamespaceSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![],
        };
        assert!(
            selects(&empty, &Labels::default()),
            "an empty selector selects everything"
        );
    }
}

#[cfg(test)]
mod consent_tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> Labels {
        let pairs: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Labels::from(&pairs)
    }

    #[test]
    fn label_for_the_source_namespace_accepts_only_that_one() {
        let labels = map(&[("fanout.dev/accept-from.platform", "true")]);
        let rule = ConsentRule::Required;
        assert!(rule.accepts(&labels, None, "platform"));
        assert!(!rule.accepts(&labels, None, "other"));
    }

    #[test]
    fn only_the_value_true_counts() {
        let labels = map(&[
            ("fanout.dev/accept-from.platform", "false"),
            (ACCEPT_FROM_ALL, "yes"),
        ]);
        assert!(!ConsentRule::Required.accepts(&labels, None, "platform"));
    }

    #[test]
    fn accept_from_all_accepts_every_source() {
        let labels = map(&[(ACCEPT_FROM_ALL, "true")]);
        assert!(ConsentRule::Required.accepts(&labels, None, "anything"));
    }

    #[test]
    fn annotation_lists_long_source_namespaces() {
        let long = "a-source-namespace-whose-name-is-far-too-long-for-a-label-key";
        assert!(accept_label(long).len() - "fanout.dev/".len() > 63);
        let annotation = format!("other, {long}");
        let accept_from = Some(annotation.as_str());
        assert!(ConsentRule::Required.accepts(&map(&[]), accept_from, long));
        assert!(ConsentRule::Required.accepts(&map(&[]), accept_from, "other"));
        assert!(!ConsentRule::Required.accepts(&map(&[]), accept_from, "oth"));
    }

    #[test]
    fn not_required_accepts_everything() {
        assert!(ConsentRule::NotRequired.accepts(&map(&[]), None, "platform"));
    }

    #[test]
    fn no_consent_by_default() {
        assert!(!ConsentRule::Required.accepts(&map(&[]), None, "platform"));
    }
}

#[cfg(test)]
mod refused_tests {
    use super::*;

    #[test]
    fn refused_entries_explain_how_to_consent() {
        let entry = refused("team-a", "platform");
        assert_eq!(entry.state, TargetState::Refused);
        assert!(
            entry
                .message
                .unwrap()
                .contains("fanout.dev/accept-from.platform=\"true\"")
        );
    }
}
