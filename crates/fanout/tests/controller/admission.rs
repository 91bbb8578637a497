//! Bad input is rejected at admission by the CRD's OpenAPI schema and CEL
//! rules, with messages that name the field and say what is wrong. (What
//! only the controller can judge, such as a missing source, is a condition:
//! see `controller_lifecycle`.)

use fanout::Fanout;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::{Api, Resource};
use serde_json::{Value, json};

/// A Fanout manifest with `spec` as given and name `name`.
fn manifest(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": Fanout::api_version(&()),
        "kind": Fanout::kind(&()),
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn valid() -> Value {
    json!({
        "source": {"kind": "Secret", "name": "regcred"},
        "targets": {"namespaces": ["team-a"]},
    })
}

/// `valid()` with the JSON pointer `path` set to `value`.
fn with(path: &str, value: Value) -> Value {
    let mut spec = valid();
    *spec.pointer_mut(path).unwrap_or_else(|| panic!("{path}")) = value;
    spec
}

#[tokio::test]
async fn invalid_fanouts_are_rejected_with_readable_messages() {
    let cluster = testkit::cluster();
    crate::harness::install_crd(cluster).await;
    let ns = cluster.namespace("admission").await;
    let api: Api<DynamicObject> = Api::namespaced_with(
        cluster.client(),
        ns.name(),
        &ApiResource::erase::<Fanout>(&()),
    );
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let long_name = "n".repeat(64);
    let cases: Vec<(&str, DynamicObject, &[&str])> = vec![
        (
            "unknown kind",
            manifest("f", with("/source/kind", json!("Deployment"))),
            &[
                "spec.source.kind",
                "Unsupported value: \"Deployment\"",
                "\"Secret\", \"ConfigMap\"",
            ],
        ),
        (
            "empty source name",
            manifest("f", with("/source/name", json!(""))),
            &["spec.source.name", "at least 1 chars long"],
        ),
        (
            "source name with capitals",
            manifest("f", with("/source/name", json!("RegCred"))),
            &["spec.source.name", "Invalid value: \"RegCred\""],
        ),
        (
            "missing source",
            manifest("f", json!({"targets": {"namespaces": ["a"]}})),
            &["spec.source: Required value"],
        ),
        (
            "namespace not a DNS label",
            manifest("f", with("/targets/namespaces", json!(["ok", "Team_A"]))),
            &["spec.targets.namespaces[1]", "Invalid value: \"Team_A\""],
        ),
        (
            "namespace too long",
            manifest("f", with("/targets/namespaces", json!([long_name]))),
            &["spec.targets.namespaces[0]", "Too long"],
        ),
        (
            "exclusion not a DNS label",
            manifest(
                "f",
                json!({
                    "source": {"kind": "Secret", "name": "x"},
                    "targets": {"namespaces": ["a"], "exclude": ["-x"]},
                }),
            ),
            &["spec.targets.exclude[0]", "Invalid value: \"-x\""],
        ),
        (
            "copyName not an object name",
            manifest(
                "f",
                json!({
                    "source": {"kind": "Secret", "name": "x"},
                    "targets": {"namespaces": ["a"]},
                    "copyName": "Not/A/Name",
                }),
            ),
            &["spec.copyName", "Invalid value: \"Not/A/Name\""],
        ),
        (
            "unknown conflict policy",
            manifest(
                "f",
                json!({
                    "source": {"kind": "Secret", "name": "x"},
                    "targets": {"namespaces": ["a"]},
                    "conflictPolicy": "Maybe",
                }),
            ),
            &[
                "spec.conflictPolicy",
                "Unsupported value: \"Maybe\"",
                "\"Skip\", \"Adopt\", \"Overwrite\"",
            ],
        ),
        (
            "no targets at all",
            manifest("f", with("/targets", json!({}))),
            &[
                "spec.targets",
                "targets must list namespaces or give a selector",
            ],
        ),
        (
            "In without values",
            manifest(
                "f",
                with(
                    "/targets",
                    json!({
                        "selector": {"matchExpressions": [{"key": "tier", "operator": "In"}]},
                    }),
                ),
            ),
            &[
                "spec.targets.selector.matchExpressions[0]",
                "In and NotIn need at least one value",
            ],
        ),
        (
            "Exists with values",
            manifest(
                "f",
                with(
                    "/targets",
                    json!({
                        "selector": {"matchExpressions": [{"key": "tier", "operator": "Exists", "values": ["x"]}]},
                    }),
                ),
            ),
            &["Exists and DoesNotExist take no values"],
        ),
        (
            "unknown operator",
            manifest(
                "f",
                with(
                    "/targets",
                    json!({
                        "selector": {"matchExpressions": [{"key": "tier", "operator": "Like", "values": ["x"]}]},
                    }),
                ),
            ),
            &[
                "spec.targets.selector.matchExpressions[0].operator",
                "Unsupported value: \"Like\"",
            ],
        ),
        (
            "invalid expression key",
            manifest(
                "f",
                with(
                    "/targets",
                    json!({
                        "selector": {"matchExpressions": [{"key": "bad key", "operator": "Exists"}]},
                    }),
                ),
            ),
            &[
                "spec.targets.selector.matchExpressions[0].key",
                "Invalid value: \"bad key\"",
            ],
        ),
        (
            "invalid matchLabels key",
            manifest(
                "f",
                with(
                    "/targets",
                    json!({
                        "selector": {"matchLabels": {"bad key!": "x"}},
                    }),
                ),
            ),
            &[
                "spec.targets.selector.matchLabels",
                "matchLabels keys must be label keys",
            ],
        ),
        (
            "invalid matchLabels value",
            manifest(
                "f",
                with(
                    "/targets",
                    json!({
                        "selector": {"matchLabels": {"tier": "no spaces please"}},
                    }),
                ),
            ),
            &[
                "spec.targets.selector.matchLabels.tier",
                "Invalid value: \"no spaces please\"",
            ],
        ),
        (
            "Fanout name too long for a label",
            manifest(&"f".repeat(70), valid()),
            &["metadata.name must be at most 63 characters"],
        ),
    ];
    for (case, object, expected) in cases {
        let name = object.metadata.name.clone().unwrap();
        let error = match api.create(&dry_run, &object).await {
            Err(kube::Error::Api(status)) => status,
            other => panic!("{case}: expected a rejection, got {other:?}"),
        };
        assert_eq!(error.code, 422, "{case}: {}", error.message);
        for fragment in expected {
            assert!(
                error.message.contains(fragment),
                "{case} ({name}): {fragment:?} not in {:?}",
                error.message
            );
        }
        println!("{case}: {}", error.message);
    }

    // The same request with a valid spec is accepted, with defaults filled in.
    let accepted = api
        .create(&dry_run, &manifest("fine", valid()))
        .await
        .unwrap();
    assert_eq!(accepted.data["spec"]["conflictPolicy"], "Skip");
    assert_eq!(accepted.data["spec"]["prune"], true);
}
