//! Sources and Fanouts coming and going: a missing source is a condition and
//! an Event, not a hot loop; a deleted source cancels the running pass and,
//! with prune, removes the copies; deleting a Fanout removes every copy,
//! also when the controller is killed half-way through the cleanup; only
//! the leader reconciles.

use std::num::NonZeroUsize;
use std::time::Duration;

use crate::harness::{World, WriteDelay, names, ready_reason};
use fanout::crd::TargetState;
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams};

#[tokio::test]
async fn a_missing_source_is_reported_once_and_picked_up_when_it_appears() {
    let mut world = World::new("missing").await;
    let target = world.consenting("target").await;
    let controller = world.start(world.settings());
    world
        .create(&world.fanout("waiting", "not-yet", names(&[&target])))
        .await;
    let reported = world
        .wait_fanout("waiting", "the SourceMissing condition", |f| {
            ready_reason(f).as_deref() == Some("SourceMissing")
        })
        .await;
    let condition = &reported.status.as_ref().unwrap().conditions[0];
    assert_eq!(condition.status, "False");
    assert!(
        condition.message.contains("not-yet"),
        "{}",
        condition.message
    );
    assert_eq!(condition.observed_generation, reported.metadata.generation);
    world.wait_event("waiting", "SourceMissing: ").await;

    // No hot loop: once settled, nothing is reconciled or written while
    // nothing changes (retry_interval is 2 s here, so a retry would show).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reconciles = controller.metric("fanout_reconciles_total", &["ok"]);
    let version = world
        .fanouts()
        .get("waiting")
        .await
        .unwrap()
        .resource_version();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        controller.metric("fanout_reconciles_total", &["ok"]),
        reconciles
    );
    assert_eq!(
        world
            .fanouts()
            .get("waiting")
            .await
            .unwrap()
            .resource_version(),
        version
    );
    assert_eq!(
        controller.metric("fanout_reconciles_total", &["error"]),
        0.0
    );

    // The source appears: its watch brings the Fanout to Synced.
    world.secret("not-yet", &[("k", "v")]).await;
    world.wait_synced("waiting", 1).await;
    world.delete_fanout("waiting").await;
    controller.drain().await;
}

#[tokio::test]
async fn deleting_the_source_cancels_the_running_pass_and_prunes_the_copies() {
    let mut world = World::new("srcdel").await;
    let mut targets = Vec::new();
    for i in 0..16 {
        targets.push(world.consenting(&format!("t{i}")).await);
    }
    world.secret("doomed", &[("k", "v")]).await;
    let mut settings = world.settings();
    settings.fanout_concurrency = NonZeroUsize::new(2).unwrap();
    let delay = WriteDelay::new(|_| Duration::from_millis(400));
    let controller = world.start_with_delay(settings, Some(delay));
    let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    world
        .create(&world.fanout("doomed", "doomed", names(&refs)))
        .await;
    // Let the pass get going (16 writes, 2 at a time, 0.4 s each: ~3 s).
    testkit::eventually("the first copies", Duration::from_secs(30), || async {
        (controller.metric("fanout_target_writes_total", &["create", "ok"]) >= 2.0).then_some(())
    })
    .await;
    world
        .secrets(world.src())
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    world
        .wait_fanout("doomed", "SourceMissing", |f| {
            ready_reason(f).as_deref() == Some("SourceMissing")
        })
        .await;
    assert!(
        controller.metric("fanout_reconciles_total", &["cancelled"]) >= 1.0,
        "the pass was cancelled"
    );
    let created = controller.metric("fanout_target_writes_total", &["create", "ok"]);
    assert!(
        created < 16.0,
        "the cancelled pass did not finish its {created} creates"
    );
    for ns in &targets {
        world
            .wait_secret(ns, "doomed", "the copy to be pruned with its source", |s| {
                s.is_none()
            })
            .await;
    }
    world.wait_event("doomed", "SourceMissing: ").await;
    world.delete_fanout("doomed").await;
    controller.drain().await;
}

#[tokio::test]
async fn deleting_a_fanout_removes_its_copies_even_across_a_restart_mid_cleanup() {
    let mut world = World::new("cleanup").await;
    let mut targets = Vec::new();
    for i in 0..10 {
        targets.push(world.consenting(&format!("t{i}")).await);
    }
    world.secret("creds", &[("k", "v")]).await;
    let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    let mut slow = world.settings();
    slow.fanout_concurrency = NonZeroUsize::new(1).unwrap();
    let first = world.start(slow.clone());
    let fanout = world
        .create(&world.fanout("cleanup", "creds", names(&refs)))
        .await;
    world.wait_synced("cleanup", 10).await;
    first.drain().await;

    // A controller whose deletes are slow starts the cleanup...
    let delay = WriteDelay::new(|_| Duration::from_millis(500));
    let slow_controller = world.start_with_delay(slow, Some(delay));
    world
        .fanouts()
        .delete("cleanup", &DeleteParams::default())
        .await
        .unwrap();
    let copies = || async {
        let selector = format!("fanout.dev/fanout-uid={}", fanout.uid().unwrap());
        world
            .secrets_all()
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap()
            .items
            .len()
    };
    testkit::eventually(
        "the cleanup to be half-way",
        Duration::from_secs(30),
        || async {
            let left = copies().await;
            (left <= 7 && left > 0).then_some(())
        },
    )
    .await;
    // ... and dies without finishing it.
    slow_controller.kill();
    let stuck = world.fanouts().get("cleanup").await.unwrap();
    assert!(stuck.finalizers().iter().any(|f| f == "fanout.dev/cleanup"));
    assert!(stuck.metadata.deletion_timestamp.is_some());
    let left = copies().await;
    assert!(left > 0, "copies remain after the crash");

    // A new controller finds the rest by label and finishes.
    let second = world.start(world.settings());
    world.delete_fanout("cleanup").await;
    assert_eq!(copies().await, 0);
    second.drain().await;
}

#[tokio::test]
async fn a_standby_reconciles_nothing_until_it_becomes_leader() {
    let mut world = World::new("standby").await;
    let target = world.consenting("target").await;
    world.secret("creds", &[("k", "v")]).await;
    let controller = world.start_standby(world.settings());
    world
        .create(&world.fanout("standby", "creds", names(&[&target])))
        .await;
    testkit::eventually(
        "the standby's caches to sync",
        Duration::from_secs(30),
        || async {
            let report = controller.health.readiness();
            println!("{report:?}");
            report.ok.then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let untouched = world.fanouts().get("standby").await.unwrap();
    assert!(untouched.status.is_none() && untouched.finalizers().is_empty());
    assert!(
        world
            .secrets(&target)
            .get_opt("creds")
            .await
            .unwrap()
            .is_none()
    );
    assert!(controller.metric("fanout_reconciles_total", &["skipped"]) >= 1.0);

    controller.leader.send_replace(true);
    let done = world.wait_synced("standby", 1).await;
    assert_eq!(done.status.unwrap().targets[0].state, TargetState::Synced);
    world.delete_fanout("standby").await;
    controller.drain().await;
}

#[tokio::test]
async fn losing_leadership_stops_the_pass_and_regaining_it_resumes() {
    let mut world = World::new("handover").await;
    let mut targets = Vec::new();
    for i in 0..12 {
        targets.push(world.consenting(&format!("t{i}")).await);
    }
    world.secret("creds", &[("k", "v")]).await;
    let mut settings = world.settings();
    settings.fanout_concurrency = NonZeroUsize::new(2).unwrap();
    let delay = WriteDelay::new(|_| Duration::from_millis(300));
    let controller = world.start_with_delay(settings, Some(delay));
    let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    world
        .create(&world.fanout("handover", "creds", names(&refs)))
        .await;
    testkit::eventually("the first copies", Duration::from_secs(30), || async {
        (controller.metric("fanout_target_writes_total", &["create", "ok"]) >= 2.0).then_some(())
    })
    .await;

    // A successor takes over: this process stops writing at once.
    controller.leader.send_replace(false);
    testkit::eventually(
        "the pass to be cancelled",
        Duration::from_secs(10),
        || async {
            (controller.metric("fanout_reconciles_total", &["cancelled"]) >= 1.0).then_some(())
        },
    )
    .await;
    let written = controller.metric("fanout_target_writes_total", &["create", "ok"]);
    assert!(written < 12.0, "stopped before the end: {written}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        controller.metric("fanout_target_writes_total", &["create", "ok"]),
        written
    );

    // Leadership comes back: every Fanout is reconciled again and finishes.
    controller.leader.send_replace(true);
    world.wait_synced("handover", 12).await;
    world.delete_fanout("handover").await;
    controller.drain().await;
}

#[tokio::test]
async fn the_drain_deadline_drops_writes_in_flight_and_returns_promptly() {
    let mut world = World::new("deadline").await;
    let mut targets = Vec::new();
    for i in 0..6 {
        targets.push(world.consenting(&format!("t{i}")).await);
    }
    world.secret("creds", &[("k", "v")]).await;
    let mut settings = world.settings();
    settings.fanout_concurrency = NonZeroUsize::new(2).unwrap();
    settings.write_timeout = Duration::from_secs(30);
    let delay = WriteDelay::new(|_| Duration::from_secs(20));
    let controller = world.start_with_delay(settings, Some(delay));
    let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    world
        .create(&world.fanout("deadline", "creds", names(&refs)))
        .await;
    testkit::eventually("writes in flight", Duration::from_secs(30), || async {
        (controller.metric("fanout_target_writes_in_flight", &[]) >= 2.0).then_some(())
    })
    .await;
    let registry = controller.registry.clone();
    // The writes would take 20 s; the deadline comes after 0.5 s.
    let took = controller
        .drain_with_deadline(Duration::from_millis(500))
        .await;
    assert!(
        took < Duration::from_secs(5),
        "returned {took:?} after the abort"
    );
    let cancelled = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == "fanout_reconciles_total")
        .unwrap()
        .get_metric()
        .iter()
        .find(|m| m.get_label().iter().any(|l| l.value() == "cancelled"))
        .unwrap()
        .get_counter()
        .get_value();
    assert!(cancelled >= 1.0, "the pass was cancelled by the abort");
    for ns in &targets {
        assert!(world.secrets(ns).get_opt("creds").await.unwrap().is_none());
    }
    // Leave nothing behind: a fresh controller finishes and cleans up.
    let cleaner = world.start(world.settings());
    world.delete_fanout("deadline").await;
    cleaner.drain().await;
}
