//! Objects a Fanout did not make: `Skip` never touches them, `Adopt` takes
//! over only matching content, `Overwrite` replaces them; another Fanout's
//! copy is never fought over; and a target converges once its blocker is
//! deleted, without a restart.

use crate::harness::{World, names, owned_by, secret, states, value};
use fanout::crd::{ConflictPolicy, TargetState};
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

async fn blocker(world: &World, namespace: &str, data: &[(&str, &str)], type_: Option<&str>) {
    let mut blocker = secret("shared", data);
    blocker.type_ = type_.map(str::to_owned);
    world
        .secrets(namespace)
        .create(&PostParams::default(), &blocker)
        .await
        .unwrap();
}

#[tokio::test]
async fn skip_leaves_the_blocker_alone_and_converges_once_it_is_deleted() {
    let mut world = World::new("skip").await;
    let free = world.consenting("free").await;
    let blocked = world.consenting("blocked").await;
    world.secret("shared", &[("k", "source")]).await;
    blocker(&world, &blocked, &[("k", "theirs")], None).await;
    let controller = world.start(world.settings());
    world
        .create(&world.fanout("skip", "shared", names(&[&free, &blocked])))
        .await;
    let done = world
        .wait_fanout("skip", "one Synced and one Conflict", |f| {
            states(f)
                == [
                    (free.clone(), TargetState::Synced),
                    (blocked.clone(), TargetState::Conflict),
                ]
        })
        .await;
    let message = done.status.unwrap().targets[1].message.clone().unwrap();
    assert!(
        message.contains("exists and is not managed by"),
        "{message}"
    );
    let untouched = world.secrets(&blocked).get("shared").await.unwrap();
    assert_eq!(value(&untouched, "k").as_deref(), Some("theirs"));
    assert!(!untouched.labels().contains_key("fanout.dev/managed-by"));
    world
        .wait_event("skip", "Conflict: 1 target(s) now Conflict")
        .await;

    // The blocker goes: the target converges on the next retry.
    world
        .secrets(&blocked)
        .delete("shared", &DeleteParams::default())
        .await
        .unwrap();
    world.wait_synced("skip", 2).await;
    let copy = world.secrets(&blocked).get("shared").await.unwrap();
    assert_eq!(value(&copy, "k").as_deref(), Some("source"));
    world.delete_fanout("skip").await;
    controller.drain().await;
}

#[tokio::test]
async fn adopt_takes_over_only_matching_content() {
    let mut world = World::new("adopt").await;
    let matching = world.consenting("matching").await;
    let different = world.consenting("different").await;
    world.secret("shared", &[("k", "source")]).await;
    blocker(&world, &matching, &[("k", "source")], None).await;
    blocker(&world, &different, &[("k", "theirs")], None).await;
    let controller = world.start(world.settings());
    let mut fanout = world.fanout("adopt", "shared", names(&[&matching, &different]));
    fanout.spec.conflict_policy = ConflictPolicy::Adopt;
    let fanout = world.create(&fanout).await;
    let done = world
        .wait_fanout(
            "adopt",
            "the matching one adopted, the other in conflict",
            |f| {
                states(f)
                    == [
                        (matching.clone(), TargetState::Synced),
                        (different.clone(), TargetState::Conflict),
                    ]
            },
        )
        .await;
    assert!(
        done.status.unwrap().targets[1]
            .message
            .clone()
            .unwrap()
            .contains("different content")
    );
    let adopted = world.secrets(&matching).get("shared").await.unwrap();
    assert!(owned_by(&adopted, &fanout.uid().unwrap()));
    let left = world.secrets(&different).get("shared").await.unwrap();
    assert!(!owned_by(&left, &fanout.uid().unwrap()));
    assert_eq!(value(&left, "k").as_deref(), Some("theirs"));

    // Once its content matches, it is adopted too.
    world
        .secrets(&different)
        .patch(
            "shared",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"k": "source"}})),
        )
        .await
        .unwrap();
    world.wait_synced("adopt", 2).await;
    assert!(owned_by(
        &world.secrets(&different).get("shared").await.unwrap(),
        &fanout.uid().unwrap()
    ));
    world.delete_fanout("adopt").await;
    controller.drain().await;
}

#[tokio::test]
async fn overwrite_replaces_foreign_objects_but_not_another_fanouts_copy() {
    let mut world = World::new("overwrite").await;
    let plain = world.consenting("plain").await;
    let other_type = world.consenting("other-type").await;
    world.secret("shared", &[("k", "source")]).await;
    blocker(&world, &plain, &[("k", "theirs")], None).await;
    blocker(
        &world,
        &other_type,
        &[("k", "theirs")],
        Some("example.com/foreign"),
    )
    .await;
    let controller = world.start(world.settings());
    let mut fanout = world.fanout("overwrite", "shared", names(&[&plain, &other_type]));
    fanout.spec.conflict_policy = ConflictPolicy::Overwrite;
    let first = world.create(&fanout).await;
    world.wait_synced("overwrite", 2).await;
    for ns in [&plain, &other_type] {
        let copy = world.secrets(ns).get("shared").await.unwrap();
        assert_eq!(value(&copy, "k").as_deref(), Some("source"), "{ns}");
        assert_eq!(copy.type_.as_deref(), Some("Opaque"), "{ns}");
        assert!(owned_by(&copy, &first.uid().unwrap()));
    }

    // A second Fanout writing the same copy name into the same namespace,
    // even with Overwrite, does not fight the first one.
    world.secret("other-source", &[("k", "other")]).await;
    let mut rival = world.fanout("rival", "other-source", names(&[&plain]));
    rival.spec.copy_name = Some("shared".into());
    rival.spec.conflict_policy = ConflictPolicy::Overwrite;
    world.create(&rival).await;
    let done = world
        .wait_fanout("rival", "the rival to report a conflict", |f| {
            states(f) == [(plain.clone(), TargetState::Conflict)]
        })
        .await;
    assert!(
        done.status.unwrap().targets[0]
            .message
            .clone()
            .unwrap()
            .contains("is managed by Fanout")
    );
    assert_eq!(
        value(&world.secrets(&plain).get("shared").await.unwrap(), "k").as_deref(),
        Some("source")
    );
    world.delete_fanout("rival").await;
    world.delete_fanout("overwrite").await;
    controller.drain().await;
}

/// Requests this test's controller made about `shared` in `namespace` since
/// `from`, from the API server's audit log.
fn requests_about(
    world: &World,
    namespace: &str,
    from: k8s_openapi::jiff::Timestamp,
) -> Vec<String> {
    let agent = format!("fanout-test/{}", world.shard);
    world
        .cluster
        .audit()
        .into_iter()
        .filter(|e| {
            e.user_agent == agent
                && e.resource == "secrets"
                && e.namespace == namespace
                && e.received >= from
        })
        .map(|e| format!("{} {} -> {}", e.verb, e.name, e.code))
        .collect()
}

#[tokio::test]
async fn a_blocked_target_costs_no_request_until_its_blocker_changes() {
    let mut world = World::new("watched").await;
    let blocked = world.consenting("blocked").await;
    world.secret("shared", &[("k", "source")]).await;
    blocker(&world, &blocked, &[("k", "theirs")], None).await;
    let controller = world.start(world.settings());
    let mut fanout = world.fanout("watched", "shared", names(&[&blocked]));
    fanout.spec.conflict_policy = ConflictPolicy::Adopt;
    world.create(&fanout).await;
    world
        .wait_fanout("watched", "the target in Conflict", |f| {
            states(f) == [(blocked.clone(), TargetState::Conflict)]
        })
        .await;

    // Three retry intervals (2 s here) with the blocker unchanged: polling
    // would have cost a POST and a GET each time; watching costs nothing.
    let quiet_from = k8s_openapi::jiff::Timestamp::now();
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let requests = requests_about(&world, &blocked, quiet_from);
    assert!(
        requests.is_empty(),
        "requests about a blocked target whose blocker did not change: {requests:?}"
    );

    // Its owner makes the content match: Adopt may now take it over, and
    // the watch wakes the Fanout (resync is 10 minutes away).
    let matching = json!({"data": {"k": k8s_openapi::ByteString(b"source".to_vec())}});
    world
        .secrets(&blocked)
        .patch("shared", &PatchParams::default(), &Patch::Merge(&matching))
        .await
        .unwrap();
    world.wait_synced("watched", 1).await;
    let adopted = world.secrets(&blocked).get("shared").await.unwrap();
    assert_eq!(
        adopted
            .annotations()
            .get("fanout.dev/origin")
            .map(String::as_str),
        Some("adopted")
    );
    world.delete_fanout("watched").await;
    controller.drain().await;
}
