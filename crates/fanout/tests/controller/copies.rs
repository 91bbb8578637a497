//! Copies land where they should, carry what they should, and follow the
//! source: resolution order and content, tool-owned labels left behind,
//! updates propagated, new and relabelled namespaces picked up, exclusions
//! respected, ConfigMaps as well as Secrets.

use std::collections::BTreeMap;

use crate::harness::{World, names, owned_by, selected, states, value};
use fanout::crd::{SourceKind, TargetState, Targets};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::ResourceExt;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

#[tokio::test]
async fn copies_follow_resolution_order_and_carry_content_but_not_tool_labels() {
    let mut world = World::new("copies").await;
    let tier = format!("tier-{}", world.shard);
    let b = world.consenting("b-explicit").await;
    let a = world.consenting("a-explicit").await;
    let label = world.consent_label();
    let z = world
        .namespace("z-selected", &[(&label, "true"), ("tier", &tier)])
        .await;
    let m = world
        .namespace("m-selected", &[(&label, "true"), ("tier", &tier)])
        .await;
    let excluded = world
        .namespace("x-excluded", &[(&label, "true"), ("tier", &tier)])
        .await;

    let mut source = crate::harness::secret("regcred", &[("token", "s3cret")]);
    source.metadata.labels = Some(BTreeMap::from([
        ("team".into(), "infra".into()),
        ("app.kubernetes.io/instance".into(), "argo-app".into()),
        ("argocd.argoproj.io/secret-type".into(), "repository".into()),
    ]));
    source.metadata.annotations = Some(BTreeMap::from([
        (
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{}".into(),
        ),
        ("note".into(), "kept".into()),
    ]));
    world
        .secrets(world.src())
        .create(&PostParams::default(), &source)
        .await
        .unwrap();

    let targets = Targets {
        namespaces: vec![b.clone(), a.clone(), b.clone()],
        exclude: vec![excluded.clone()],
        ..selected(&[("tier", &tier)])
    };
    let controller = world.start(world.settings());
    let fanout = world
        .create(&world.fanout("registry", "regcred", targets))
        .await;
    let done = world.wait_synced("registry", 4).await;
    let order: Vec<String> = states(&done).into_iter().map(|(ns, _)| ns).collect();
    let mut selected_sorted = vec![m.clone(), z.clone()];
    selected_sorted.sort();
    assert_eq!(
        order,
        [vec![b.clone(), a.clone()], selected_sorted].concat()
    );

    let uid = fanout.uid().unwrap();
    for ns in [&a, &b, &m, &z] {
        let copy = world.secrets(ns).get("regcred").await.unwrap();
        assert_eq!(value(&copy, "token").as_deref(), Some("s3cret"));
        assert!(owned_by(&copy, &uid), "{ns}: {:?}", copy.labels());
        assert_eq!(copy.labels()["team"], "infra");
        assert_eq!(copy.labels()["fanout.dev/managed-by"], "fanout");
        assert!(!copy.labels().contains_key("app.kubernetes.io/instance"));
        assert!(!copy.labels().contains_key("argocd.argoproj.io/secret-type"));
        assert_eq!(copy.annotations()["note"], "kept");
        assert!(
            !copy
                .annotations()
                .contains_key("kubectl.kubernetes.io/last-applied-configuration")
        );
        assert_eq!(
            copy.annotations()["fanout.dev/content-hash"],
            done.status.as_ref().unwrap().source_hash.clone().unwrap()
        );
    }
    assert!(
        world
            .secrets(&excluded)
            .get_opt("regcred")
            .await
            .unwrap()
            .is_none()
    );
    world
        .wait_event("registry", "CopiesWritten: copies created 4")
        .await;

    // A source update reaches every target.
    world
        .secrets(world.src())
        .patch(
            "regcred",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"token": "rotated"}})),
        )
        .await
        .unwrap();
    for ns in [&a, &b, &m, &z] {
        world
            .wait_secret(ns, "regcred", "the rotated value to propagate", |s| {
                s.and_then(|s| value(s, "token")).as_deref() == Some("rotated")
            })
            .await;
    }
    world.delete_fanout("registry").await;
    controller.drain().await;
}

#[tokio::test]
async fn new_and_relabelled_namespaces_are_picked_up_and_excluded_ones_never() {
    let mut world = World::new("nsw").await;
    let tier = format!("tier-{}", world.shard);
    let label = world.consent_label();
    let first = world
        .namespace("first", &[(&label, "true"), ("tier", &tier)])
        .await;
    world.secret("cfg", &[("k", "v")]).await;
    let controller = world.start(world.settings());

    // The exclusion names a namespace that does not exist yet.
    let excluded_name = testkit::random_name("excluded");
    let targets = Targets {
        exclude: vec![excluded_name.clone()],
        ..selected(&[("tier", &tier)])
    };
    world
        .create(&world.fanout("by-label", "cfg", targets))
        .await;
    world.wait_synced("by-label", 1).await;

    // A namespace created later with the right labels gets its copy.
    let late = world
        .namespace("late", &[(&label, "true"), ("tier", &tier)])
        .await;
    world
        .wait_secret(&late, "cfg", "a copy in the new namespace", |s| s.is_some())
        .await;
    // One relabelled into the selection gets one too.
    let relabelled = world.namespace("relabelled", &[(&label, "true")]).await;
    world
        .set_namespace_labels(&relabelled, &[("tier", Some(&tier))])
        .await;
    world
        .wait_secret(
            &relabelled,
            "cfg",
            "a copy in the relabelled namespace",
            |s| s.is_some(),
        )
        .await;
    // The excluded one never does, though it matches.
    let excluded_ns = Namespace {
        metadata: ObjectMeta {
            name: Some(excluded_name.clone()),
            labels: Some(BTreeMap::from([
                (label.clone(), "true".to_owned()),
                ("tier".to_owned(), tier.clone()),
                (
                    testkit::testbed::TEST_NAMESPACE_LABEL.to_owned(),
                    "true".to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        ..Default::default()
    };
    kube::Api::<Namespace>::all(world.client.clone())
        .create(&PostParams::default(), &excluded_ns)
        .await
        .unwrap();
    let done = world.wait_synced("by-label", 3).await;
    assert!(!states(&done).iter().any(|(ns, _)| *ns == excluded_name));
    assert!(
        world
            .secrets(&excluded_name)
            .get_opt("cfg")
            .await
            .unwrap()
            .is_none()
    );

    // Relabelling a namespace out of the selection prunes its copy.
    world.set_namespace_labels(&first, &[("tier", None)]).await;
    world
        .wait_secret(
            &first,
            "cfg",
            "the copy to be pruned from the deselected namespace",
            |s| s.is_none(),
        )
        .await;
    world.wait_synced("by-label", 2).await;
    world.delete_fanout("by-label").await;
    controller.drain().await;
    let _ = world
        .cluster
        .kubectl_output(&["delete", "namespace", &excluded_name, "--wait=false"]);
}

#[tokio::test]
async fn config_maps_are_copied_with_binary_data() {
    let mut world = World::new("cm").await;
    let target = world.consenting("cm-target").await;
    let source = ConfigMap {
        metadata: ObjectMeta {
            name: Some("settings".into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("mode".into(), "fast".into())])),
        binary_data: Some(BTreeMap::from([(
            "blob".into(),
            k8s_openapi::ByteString(vec![0, 1, 254]),
        )])),
        ..ConfigMap::default()
    };
    world
        .config_maps(world.src())
        .create(&PostParams::default(), &source)
        .await
        .unwrap();
    let controller = world.start(world.settings());
    let mut fanout = world.fanout("cm", "settings", names(&[&target]));
    fanout.spec.source.kind = SourceKind::ConfigMap;
    fanout.spec.copy_name = Some("settings-copy".into());
    world.create(&fanout).await;
    let done = world.wait_synced("cm", 1).await;
    assert_eq!(states(&done), [(target.clone(), TargetState::Synced)]);
    let copy = world
        .config_maps(&target)
        .get("settings-copy")
        .await
        .unwrap();
    assert_eq!(copy.data, source.data);
    assert_eq!(copy.binary_data, source.binary_data);
    assert!(
        world
            .secrets(&target)
            .get_opt("settings-copy")
            .await
            .unwrap()
            .is_none()
    );
    world.delete_fanout("cm").await;
    assert!(
        world
            .config_maps(&target)
            .get_opt("settings-copy")
            .await
            .unwrap()
            .is_none()
    );
    controller.drain().await;
}
