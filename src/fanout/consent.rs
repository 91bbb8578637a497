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

use std::collections::BTreeMap;

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
    /// Whether a namespace with these labels and annotations accepts copies
    /// from `source_namespace`.
    pub fn accepts(
        self,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
        source_namespace: &str,
    ) -> bool {
        match self {
            Self::NotRequired => true,
            Self::Required => {
                let is_true = |key: &str| labels.get(key).is_some_and(|v| v == "true");
                is_true(ACCEPT_FROM_ALL)
                    || is_true(&accept_label(source_namespace))
                    || annotations
                        .get(ACCEPT_FROM_ANNOTATION)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn label_for_the_source_namespace_accepts_only_that_one() {
        let labels = map(&[("fanout.dev/accept-from.platform", "true")]);
        let rule = ConsentRule::Required;
        assert!(rule.accepts(&labels, &map(&[]), "platform"));
        assert!(!rule.accepts(&labels, &map(&[]), "other"));
    }

    #[test]
    fn only_the_value_true_counts() {
        let labels = map(&[
            ("fanout.dev/accept-from.platform", "false"),
            (ACCEPT_FROM_ALL, "yes"),
        ]);
        assert!(!ConsentRule::Required.accepts(&labels, &map(&[]), "platform"));
    }

    #[test]
    fn accept_from_all_accepts_every_source() {
        let labels = map(&[(ACCEPT_FROM_ALL, "true")]);
        assert!(ConsentRule::Required.accepts(&labels, &map(&[]), "anything"));
    }

    #[test]
    fn annotation_lists_long_source_namespaces() {
        let long = "a-source-namespace-whose-name-is-far-too-long-for-a-label-key";
        assert!(accept_label(long).len() - "fanout.dev/".len() > 63);
        let annotations = map(&[(ACCEPT_FROM_ANNOTATION, &format!("other, {long}"))]);
        assert!(ConsentRule::Required.accepts(&map(&[]), &annotations, long));
        assert!(ConsentRule::Required.accepts(&map(&[]), &annotations, "other"));
        assert!(!ConsentRule::Required.accepts(&map(&[]), &annotations, "oth"));
    }

    #[test]
    fn not_required_accepts_everything() {
        assert!(ConsentRule::NotRequired.accepts(&map(&[]), &map(&[]), "platform"));
    }

    #[test]
    fn no_consent_by_default() {
        assert!(!ConsentRule::Required.accepts(&map(&[]), &map(&[]), "platform"));
    }
}
