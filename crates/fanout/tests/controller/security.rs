//! A hostile tenant against the real API server with real RBAC: every user
//! who may create a Fanout borrows the controller's power, so the controller
//! must give nobody more than RBAC gives them, and destroy nothing it did not
//! create.
//!
//! - the chart's ValidatingAdmissionPolicy refuses a Fanout whose creator
//!   may not `get` its source (the confused deputy), at create and when an
//!   update points it elsewhere; the controller's ServiceAccount and admins
//!   are unaffected;
//! - a ServiceAccount token in a target survives `Overwrite`;
//! - objects merely labelled as a Fanout's copies survive prune and cleanup;
//!   adopted and overwritten objects are released, not deleted;
//! - a mutating admission policy that labels every copy causes no rewrite
//!   loop, and a real edit is still repaired.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::harness::{World, names, ready_reason, states, value};
use fanout::crd::{ConflictPolicy, TargetState};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::DynamicObject;
use kube::discovery::ApiResource;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// Deletes cluster-scoped test objects when dropped (kubectl, blocking).
struct ClusterScoped(Vec<String>);

impl Drop for ClusterScoped {
    fn drop(&mut self) {
        for object in &self.0 {
            let _ = testkit::cluster()
                .command("kubectl")
                .args(["delete", object, "--ignore-not-found", "--wait=false"])
                .output();
        }
    }
}

/// Installs the chart's source-access policy under a release of its own.
fn install_source_access_policy() -> ClusterScoped {
    let cluster = testkit::cluster();
    let release = testkit::random_name("guard");
    let output = cluster
        .command("helm")
        .args(["template", &release])
        .arg(testkit::repo_root().join("charts/fanout"))
        .args(["--set", &format!("fullnameOverride={release}")])
        // Required by the chart (no public image); unused by this template.
        .args(["--set", "image.repository=fanout.local/fanout"])
        .args(["--show-only", "templates/source-access-policy.yaml"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    cluster.apply_yaml(&String::from_utf8(output.stdout).unwrap());
    let name = format!("{release}-source-access");
    ClusterScoped(vec![
        format!("validatingadmissionpolicybinding/{name}"),
        format!("validatingadmissionpolicy/{name}"),
    ])
}

fn fanout_object(namespace: &str, name: &str, source: &str, target: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "fanout.dev/v1alpha1", "kind": "Fanout",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"source": {"kind": "Secret", "name": source}, "targets": {"namespaces": [target]}},
    }))
    .unwrap()
}

fn fanouts(client: Client, namespace: &str) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "fanout.dev".into(),
        version: "v1alpha1".into(),
        api_version: "fanout.dev/v1alpha1".into(),
        kind: "Fanout".into(),
        plural: "fanouts".into(),
    };
    Api::namespaced_with(client, namespace, &resource)
}

/// The API server's refusal, as the user sees it.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) => {
            assert!(matches!(status.code, 403 | 422), "{status:?}");
            status.message
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn rbac(namespace: &str, name: &str, rules: serde_json::Value, account: &str) -> String {
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": name, "namespace": namespace}, "rules": rules,
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    });
    format!("{role}\n---\n{binding}")
}

#[tokio::test]
async fn a_fanout_of_a_source_its_creator_may_not_read_is_refused_at_admission() {
    let cluster = testkit::cluster();
    crate::harness::install_crd(cluster).await;
    let _policy = install_source_access_policy();
    let vault = cluster.namespace("vault").await;
    let open = cluster.namespace("open").await;
    let admin = cluster.client();
    for name in ["db-password", "other-secret"] {
        let secret = crate::harness::secret(name, &[("password", "hunter2")]);
        Api::<Secret>::namespaced(admin.clone(), vault.name())
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    // The tenant may create and edit Fanouts in vault, and read nothing there.
    let author = json!([{"apiGroups": ["fanout.dev"], "resources": ["fanouts"],
                         "verbs": ["create", "get", "list", "update", "patch"]}]);
    cluster.apply_yaml(&rbac(vault.name(), "fanout-author", author, "tenant"));
    let tenant = cluster.service_account_client(vault.name(), "tenant").await;
    let as_tenant = fanouts(tenant.clone(), vault.name());
    let deputy = fanout_object(vault.name(), "exfiltrate", "db-password", open.name());

    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    testkit::eventually(
        "the policy to refuse the deputy",
        Duration::from_secs(30),
        || async {
            match as_tenant.create(&dry_run, &deputy).await {
                Err(kube::Error::Api(status))
                    if status.message.contains("Fanout source refused") =>
                {
                    Some(())
                }
                _ => None,
            }
        },
    )
    .await;
    let message = refusal(as_tenant.create(&PostParams::default(), &deputy).await);
    println!("refused: {message}");
    assert!(
        message.contains(&format!("may not get secrets {}/db-password", vault.name()))
            && message.contains("RBAC: get on secrets"),
        "{message}"
    );

    // Granted get on that one Secret, the same user may fan it out.
    let reader = json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                         "resourceNames": ["db-password"]}]);
    cluster.apply_yaml(&rbac(vault.name(), "reader", reader, "tenant"));
    testkit::eventually(
        "the granted user to create the Fanout",
        Duration::from_secs(30),
        || async { as_tenant.create(&PostParams::default(), &deputy).await.ok() },
    )
    .await;

    // Pointing it at a Secret they may not read is refused too.
    let elsewhere = json!({"spec": {"source": {"kind": "Secret", "name": "other-secret"}}});
    let message = refusal(
        as_tenant
            .patch(
                "exfiltrate",
                &PatchParams::default(),
                &Patch::Merge(&elsewhere),
            )
            .await,
    );
    assert!(message.contains("other-secret"), "{message}");
    // An edit that keeps the source is not the policy's business.
    let labelled = json!({"metadata": {"labels": {"team": "a"}}});
    as_tenant
        .patch(
            "exfiltrate",
            &PatchParams::default(),
            &Patch::Merge(&labelled),
        )
        .await
        .unwrap();

    // The controller's own ServiceAccount (the chart's RBAC) sets its
    // finalizer and status; an admin fans out whatever they like.
    let release = testkit::random_name("fanout");
    let kubeconfig = testkit::world::chart_identity(cluster, &release, vault.name()).await;
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::from_yaml(&kubeconfig).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let as_controller = fanouts(Client::try_from(config).unwrap(), vault.name());
    let finalizer = json!({"metadata": {"finalizers": ["fanout.dev/cleanup"]}});
    as_controller
        .patch(
            "exfiltrate",
            &PatchParams::default(),
            &Patch::Merge(&finalizer),
        )
        .await
        .unwrap();
    let as_admin = fanouts(admin, vault.name());
    as_admin
        .create(
            &PostParams::default(),
            &fanout_object(vault.name(), "by-admin", "other-secret", open.name()),
        )
        .await
        .unwrap();
    for name in ["exfiltrate", "by-admin"] {
        let empty = json!({"metadata": {"finalizers": null}});
        as_admin
            .patch(name, &PatchParams::default(), &Patch::Merge(&empty))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_service_account_token_in_a_target_survives_overwrite() {
    let mut world = World::new("token").await;
    let target = world.consenting("target").await;
    world.secret("creds", &[("token", "from-the-source")]).await;
    world.cluster.ensure_service_account(&target, "app").await;
    let token = Secret {
        metadata: ObjectMeta {
            name: Some("creds".into()),
            annotations: Some(BTreeMap::from([(
                "kubernetes.io/service-account.name".into(),
                "app".into(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/service-account-token".into()),
        data: Some(BTreeMap::from([(
            "token".into(),
            ByteString(b"issued".to_vec()),
        )])),
        ..Secret::default()
    };
    let before = world
        .secrets(&target)
        .create(&PostParams::default(), &token)
        .await
        .unwrap();
    let controller = world.start(world.settings());
    let mut fanout = world.fanout("overwrite", "creds", names(&[&target]));
    fanout.spec.conflict_policy = ConflictPolicy::Overwrite;
    world.create(&fanout).await;
    let done = world
        .wait_fanout("overwrite", "the token target to be a Conflict", |f| {
            states(f) == [(target.clone(), TargetState::Conflict)]
        })
        .await;
    let message = done.status.unwrap().targets[0].message.clone().unwrap();
    println!("{message}");
    assert!(
        message.contains("ServiceAccount token") && message.contains("never replaces"),
        "{message}"
    );
    let after = world.secrets(&target).get("creds").await.unwrap();
    assert_eq!(after.uid(), before.uid(), "not recreated");
    assert_eq!(
        value(&after, "token").as_deref(),
        Some("issued"),
        "not overwritten"
    );
    world.delete_fanout("overwrite").await;
    assert_eq!(
        world.secrets(&target).get("creds").await.unwrap().uid(),
        before.uid()
    );
    controller.drain().await;
}

/// Labels and annotations that make an object look like a copy of `uid`'s.
fn impostor_meta(world: &World, name: &str, uid: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(BTreeMap::from([
            ("fanout.dev/managed-by".into(), "fanout".into()),
            ("fanout.dev/fanout-namespace".into(), world.src().into()),
            ("fanout.dev/fanout-name".into(), "f".into()),
            ("fanout.dev/fanout-uid".into(), uid.into()),
        ])),
        annotations: Some(BTreeMap::from([(
            "fanout.dev/content-hash".into(),
            format!("sha256:{}", "0".repeat(64)),
        )])),
        ..ObjectMeta::default()
    }
}

#[tokio::test]
async fn objects_merely_labelled_as_copies_survive_prune_and_cleanup() {
    let mut world = World::new("impostor").await;
    let first = world.consenting("first").await;
    let second = world.consenting("second").await;
    let bystander = world.namespace("bystander", &[]).await;
    world.secret("creds", &[("k", "v")]).await;
    let controller = world.start(world.settings());
    let created = world
        .create(&world.fanout("f", "creds", names(&[&first])))
        .await;
    world.wait_synced("f", 1).await;
    let uid = created.uid().unwrap();

    // Impostors: wrong name, wrong kind, the source itself (restored from a
    // copy), and the right name in a namespace that never consented.
    let impostor = |name: &str| Secret {
        metadata: impostor_meta(&world, name, &uid),
        data: Some(BTreeMap::from([("k".into(), ByteString(b"mine".to_vec()))])),
        ..Secret::default()
    };
    let mut planted = Vec::new();
    for (namespace, object) in [
        (&first, impostor("other-name")),
        (&bystander, impostor("creds")),
    ] {
        let made = world
            .secrets(namespace)
            .create(&PostParams::default(), &object)
            .await
            .unwrap();
        planted.push((namespace.clone(), made.name_any(), made.uid()));
    }
    let config_map = ConfigMap {
        metadata: impostor_meta(&world, "creds", &uid),
        ..ConfigMap::default()
    };
    let cm = world
        .config_maps(&first)
        .create(&PostParams::default(), &config_map)
        .await
        .unwrap();
    let source_marks = json!({"metadata": {
        "labels": impostor_meta(&world, "creds", &uid).labels,
        "annotations": impostor_meta(&world, "creds", &uid).annotations,
    }});
    let source = world
        .secrets(world.src())
        .patch(
            "creds",
            &PatchParams::default(),
            &Patch::Merge(&source_marks),
        )
        .await
        .unwrap();
    planted.push((world.src().to_owned(), "creds".into(), source.uid()));

    // Prune: retargeting moves the copy; only the real one goes.
    let retarget = json!({"spec": {"targets": {"namespaces": [second]}}});
    world
        .fanouts()
        .patch("f", &PatchParams::default(), &Patch::Merge(&retarget))
        .await
        .unwrap();
    world.wait_synced("f", 1).await;
    world
        .wait_secret(
            &first,
            "creds",
            "the real copy in the old target to be pruned",
            |s| s.is_none(),
        )
        .await;
    // Cleanup: deleting the Fanout deletes its real copy, and nothing else.
    world.delete_fanout("f").await;
    assert!(
        world
            .secrets(&second)
            .get_opt("creds")
            .await
            .unwrap()
            .is_none()
    );
    for (namespace, name, uid) in &planted {
        let survivor = world.secrets(namespace).get(name).await.unwrap();
        assert_eq!(
            &survivor.uid(),
            uid,
            "{namespace}/{name} survived prune and cleanup"
        );
    }
    assert_eq!(
        world.config_maps(&first).get("creds").await.unwrap().uid(),
        cm.uid()
    );
    controller.drain().await;
}

#[tokio::test]
async fn adopted_and_overwritten_objects_are_released_not_deleted() {
    let mut world = World::new("release").await;
    let adopted = world.consenting("adopted").await;
    let overwritten = world.consenting("overwritten").await;
    world.secret("creds", &[("k", "v")]).await;
    let mut originals = BTreeMap::new();
    for (namespace, data) in [(&adopted, "v"), (&overwritten, "theirs")] {
        let object = crate::harness::secret("creds", &[("k", data)]);
        let made = world
            .secrets(namespace)
            .create(&PostParams::default(), &object)
            .await
            .unwrap();
        originals.insert(namespace.clone(), made.uid());
    }
    let controller = world.start(world.settings());
    for (name, namespace, policy) in [
        ("adopt", &adopted, ConflictPolicy::Adopt),
        ("overwrite", &overwritten, ConflictPolicy::Overwrite),
    ] {
        let mut fanout = world.fanout(name, "creds", names(&[namespace]));
        fanout.spec.conflict_policy = policy;
        world.create(&fanout).await;
        world.wait_synced(name, 1).await;
        let held = world.secrets(namespace).get("creds").await.unwrap();
        assert!(
            held.annotations().contains_key("fanout.dev/origin"),
            "{:?}",
            held.annotations()
        );
        world.delete_fanout(name).await;
        let released = world.secrets(namespace).get("creds").await.unwrap();
        assert_eq!(
            released.uid(),
            originals[namespace],
            "{name}: still the same object"
        );
        assert!(
            !released
                .labels()
                .keys()
                .chain(released.annotations().keys())
                .any(|k| k.starts_with("fanout.dev/")),
            "{name}: released, no Fanout marks left: {:?} {:?}",
            released.labels(),
            released.annotations()
        );
        assert_eq!(
            value(&released, "k").as_deref(),
            Some("v"),
            "{name}: left with the copy's data"
        );
    }
    controller.drain().await;
}

#[tokio::test]
async fn a_mutating_admission_policy_on_copies_causes_no_rewrite_loop() {
    let mut world = World::new("mutated").await;
    let marker = testkit::random_name("mutate");
    let mut targets = Vec::new();
    for i in 0..3 {
        let label = world.consent_label();
        targets.push(
            world
                .namespace(
                    &format!("t{i}"),
                    &[(&label, "true"), ("fanout-test/mutate", &marker)],
                )
                .await,
        );
    }
    // Every Secret written in those namespaces gets a label at admission,
    // as a Kyverno or Gatekeeper mutation would add one.
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1beta1", "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": marker},
        "spec": {
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "matchConstraints": {
                "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                   "operations": ["CREATE", "UPDATE"], "resources": ["secrets"]}],
                "namespaceSelector": {"matchLabels": {"fanout-test/mutate": marker}},
            },
            "mutations": [{"patchType": "ApplyConfiguration", "applyConfiguration": {
                "expression": "Object{metadata: Object.metadata{labels: {\"policy.example.com/scanned\": \"true\"}}}",
            }}],
        },
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1beta1", "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": marker}, "spec": {"policyName": marker},
    });
    world
        .cluster
        .apply_yaml(&format!("{policy}\n---\n{binding}"));
    let _cleanup = ClusterScoped(vec![
        format!("mutatingadmissionpolicybinding/{marker}"),
        format!("mutatingadmissionpolicy/{marker}"),
    ]);
    // The policy is live once a Secret written there gets the label.
    let probe = world.secrets(&targets[0]);
    testkit::eventually(
        "the mutating policy to label new Secrets",
        Duration::from_secs(30),
        || async {
            let name = testkit::random_name("probe");
            let made = probe
                .create(&PostParams::default(), &crate::harness::secret(&name, &[]))
                .await
                .ok()?;
            made.labels()
                .contains_key("policy.example.com/scanned")
                .then_some(())
        },
    )
    .await;

    world.secret("creds", &[("k", "v")]).await;
    let controller = world.start(world.settings());
    let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    world
        .create(&world.fanout("mutated", "creds", names(&refs)))
        .await;
    let synced = world.wait_synced("mutated", targets.len()).await;
    assert_eq!(ready_reason(&synced).as_deref(), Some("Synced"));
    for target in &targets {
        let copy = world.secrets(target).get("creds").await.unwrap();
        assert_eq!(
            copy.labels()
                .get("policy.example.com/scanned")
                .map(String::as_str),
            Some("true")
        );
    }

    // A minute of quiet: no copy is written again.
    let agent = format!("fanout-test/{}", world.shard);
    let copy_writes = |from: k8s_openapi::jiff::Timestamp| {
        world
            .cluster
            .audit()
            .into_iter()
            .filter(|e| {
                e.is_write()
                    && e.resource == "secrets"
                    && e.user_agent == agent
                    && targets.contains(&e.namespace)
                    && e.received >= from
            })
            .count()
    };
    let quiet_from = k8s_openapi::jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let writes = copy_writes(quiet_from);
    println!("copy writes in the 60 s after convergence under a mutating policy: {writes}");
    assert_eq!(writes, 0);

    // A real edit of the payload is still repaired.
    let edit = json!({"data": {"k": "ZWRpdGVk"}});
    world
        .secrets(&targets[1])
        .patch("creds", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    world
        .wait_secret(
            &targets[1],
            "creds",
            "the edited copy to be repaired",
            |s| s.and_then(|s| value(s, "k")).as_deref() == Some("v"),
        )
        .await;
    world.delete_fanout("mutated").await;
    controller.drain().await;
}
