//! Drift is repaired by content hash: an edited copy, a deleted copy and a
//! copy of another Secret type are made true again; a source whose type
//! changes, or an immutable source that is replaced, has its copies
//! recreated.

use std::collections::BTreeMap;

use crate::harness::{World, names, secret, value};
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

#[tokio::test]
async fn edited_deleted_and_retyped_copies_are_repaired() {
    let mut world = World::new("drift").await;
    let edited = world.consenting("edited").await;
    let deleted = world.consenting("deleted").await;
    let retyped = world.consenting("retyped").await;
    world.secret("app", &[("password", "right")]).await;
    let controller = world.start(world.settings());
    world
        .create(&world.fanout("drift", "app", names(&[&edited, &deleted, &retyped])))
        .await;
    world.wait_synced("drift", 3).await;

    // Edited: the data changes, the hash annotation still claims the old hash.
    world
        .secrets(&edited)
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "wrong", "extra": "x"}})),
        )
        .await
        .unwrap();
    world
        .wait_secret(&edited, "app", "the edited copy to be repaired", |s| {
            s.is_some_and(|s| {
                value(s, "password").as_deref() == Some("right") && value(s, "extra").is_none()
            })
        })
        .await;

    // Deleted: it comes back.
    world
        .secrets(&deleted)
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    world
        .wait_secret(&deleted, "app", "the deleted copy to be recreated", |s| {
            s.is_some_and(|s| value(s, "password").as_deref() == Some("right"))
        })
        .await;

    // Another type, still labelled as our copy (someone re-created it from
    // an edited manifest): the type cannot be updated in place, so it is
    // deleted and created again.
    let original = world.secrets(&retyped).get("app").await.unwrap();
    world
        .secrets(&retyped)
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    let mut impostor = secret("app", &[("password", "right")]);
    impostor.type_ = Some("example.com/other".into());
    impostor.metadata.labels = Some(original.labels().clone());
    impostor.metadata.annotations = Some(original.annotations().clone());
    world
        .secrets(&retyped)
        .create(&PostParams::default(), &impostor)
        .await
        .unwrap();
    world
        .wait_secret(
            &retyped,
            "app",
            "the retyped copy to be recreated as Opaque",
            |s| s.is_some_and(|s| s.type_.as_deref() == Some("Opaque")),
        )
        .await;
    let writes = controller.metric("fanout_target_writes_total", &["recreate", "ok"]);
    assert!(
        writes >= 2.0,
        "a recreate is a delete then a create: {writes}"
    );
    world.wait_synced("drift", 3).await;
    world.delete_fanout("drift").await;
    controller.drain().await;
}

#[tokio::test]
async fn a_changed_source_type_and_a_replaced_immutable_source_recreate_the_copies() {
    let mut world = World::new("retype").await;
    let a = world.consenting("a").await;
    let b = world.consenting("b").await;
    let mut source = secret("app", &[("k", "v1")]);
    source.immutable = Some(true);
    world
        .secrets(world.src())
        .create(&PostParams::default(), &source)
        .await
        .unwrap();
    let controller = world.start(world.settings());
    world
        .create(&world.fanout("retype", "app", names(&[&a, &b])))
        .await;
    world.wait_synced("retype", 2).await;
    let copy = world.secrets(&a).get("app").await.unwrap();
    assert_eq!(copy.immutable, Some(true));

    // Replace the immutable source with new content and a new type.
    world
        .secrets(world.src())
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    let mut replacement = secret("app", &[("k", "v2")]);
    replacement.type_ = Some("example.com/custom".into());
    replacement.immutable = Some(true);
    replacement.metadata.labels = Some(BTreeMap::from([("version".into(), "2".into())]));
    world
        .secrets(world.src())
        .create(&PostParams::default(), &replacement)
        .await
        .unwrap();
    for ns in [&a, &b] {
        world
            .wait_secret(ns, "app", "the copy to follow the replaced source", |s| {
                s.is_some_and(|s| {
                    value(s, "k").as_deref() == Some("v2")
                        && s.type_.as_deref() == Some("example.com/custom")
                        && s.immutable == Some(true)
                        && s.labels().get("version").map(String::as_str) == Some("2")
                })
            })
            .await;
    }
    world.wait_synced("retype", 2).await;
    world.delete_fanout("retype").await;
    controller.drain().await;
}
