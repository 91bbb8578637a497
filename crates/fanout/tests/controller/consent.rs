//! Nothing lands in a namespace that did not accept copies from the source
//! namespace, including one that stops accepting later (its copy is
//! removed); each way of consenting works; `--require-consent=false` turns
//! the rule off.

use std::collections::BTreeMap;

use crate::harness::{World, names, ready_reason, states};
use fanout::crd::TargetState;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

#[tokio::test]
async fn only_consenting_namespaces_get_copies_and_withdrawing_removes_the_copy() {
    let mut world = World::new("consent").await;
    let label = world.consent_label();
    let by_label = world.namespace("by-label", &[(&label, "true")]).await;
    let by_all = world
        .namespace("by-all", &[("fanout.dev/accept-from-all", "true")])
        .await;
    let by_annotation = world.namespace("by-annotation", &[]).await;
    Api::<Namespace>::all(world.client.clone())
        .patch(
            &by_annotation,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"fanout.dev/accept-from": format!("elsewhere, {}", world.src())}}})),
        )
        .await
        .unwrap();
    let silent = world.namespace("silent", &[]).await;
    let wrong_value = world.namespace("wrong-value", &[(&label, "yes")]).await;
    let other_source = world
        .namespace(
            "other-source",
            &[("fanout.dev/accept-from.somewhere-else", "true")],
        )
        .await;
    world.secret("creds", &[("k", "v")]).await;
    let controller = world.start(world.settings());

    let all = [
        &by_label,
        &by_all,
        &by_annotation,
        &silent,
        &wrong_value,
        &other_source,
    ]
    .map(String::as_str);
    world
        .create(&world.fanout("consent", "creds", names(&all)))
        .await;
    let done = world
        .wait_fanout("consent", "3 synced and 3 refused", |f| {
            f.status
                .as_ref()
                .is_some_and(|s| s.summary.synced == 3 && s.summary.refused == 3)
        })
        .await;
    assert_eq!(
        states(&done),
        [
            (by_label.clone(), TargetState::Synced),
            (by_all.clone(), TargetState::Synced),
            (by_annotation.clone(), TargetState::Synced),
            (silent.clone(), TargetState::Refused),
            (wrong_value.clone(), TargetState::Refused),
            (other_source.clone(), TargetState::Refused),
        ]
    );
    assert_eq!(ready_reason(&done).as_deref(), Some("TargetsRefused"));
    let refusal = done.status.as_ref().unwrap().targets[3]
        .message
        .clone()
        .unwrap();
    assert!(refusal.contains(&format!("{label}=\"true\"")), "{refusal}");
    for ns in [&silent, &wrong_value, &other_source] {
        assert!(
            world.secrets(ns).get_opt("creds").await.unwrap().is_none(),
            "{ns} got a copy"
        );
    }
    world
        .wait_event("consent", "Refused: 3 target(s) now Refused")
        .await;

    // Withdrawing consent removes the copy that was there.
    world
        .set_namespace_labels(&by_label, &[(&label, None)])
        .await;
    world
        .wait_secret(
            &by_label,
            "creds",
            "the copy to be removed after consent was withdrawn",
            |s| s.is_none(),
        )
        .await;
    let after = world
        .wait_fanout("consent", "the withdrawn namespace to be Refused", |f| {
            states(f).first() == Some(&(by_label.clone(), TargetState::Refused))
        })
        .await;
    assert_eq!(after.status.unwrap().summary.synced, 2);

    // Consenting later brings the copy (back).
    world
        .set_namespace_labels(&silent, &[(&label, Some("true"))])
        .await;
    world
        .wait_secret(
            &silent,
            "creds",
            "a copy once the namespace consents",
            |s| s.is_some(),
        )
        .await;
    world.delete_fanout("consent").await;
    controller.drain().await;
}

#[tokio::test]
async fn without_the_consent_rule_every_target_gets_a_copy() {
    let mut world = World::new("noconsent").await;
    let plain = world.namespace("plain", &[]).await;
    world.secret("creds", &[("k", "v")]).await;
    let mut settings = world.settings();
    settings.require_consent = false;
    let controller = world.start(settings);
    world
        .create(&world.fanout("open", "creds", names(&[&plain])))
        .await;
    world.wait_synced("open", 1).await;
    let copy = world.secrets(&plain).get("creds").await.unwrap();
    assert_eq!(
        copy.data.unwrap(),
        BTreeMap::from([("k".to_owned(), k8s_openapi::ByteString(b"v".to_vec()))])
    );
    world.delete_fanout("open").await;
    controller.drain().await;
}
