//! `status.targets` is in resolution order in every status write, not only
//! the last, while target writes finish in random order; status writes are
//! coalesced (far fewer than one per target); writes in the middle of a pass
//! carry the moving counts and only the targets that need attention, the
//! final write every target; over the cap, the entries that need attention
//! are listed, still in order.
//!
//! Random latency comes from the harness's `WriteDelay`, a layer on the
//! controller's client: each target write first waits a random 0–500 ms,
//! inside the request deadline, as a slow API server would make it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::{World, WriteDelay, names, ready_reason, secret};
use fanout::Fanout;
use fanout::crd::{ConflictPolicy, FanoutStatus, TargetState, Targets};
use futures::StreamExt;
use kube::api::PostParams;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_objects};
use rand::Rng;

/// Every status version of Fanout `name` seen through a watch, in order.
fn record_statuses(
    world: &World,
    name: &str,
) -> (Arc<Mutex<Vec<FanoutStatus>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watch_objects(world.fanouts(), config)
        .default_backoff()
        .boxed();
    let sink = seen.clone();
    let task = tokio::spawn(async move {
        let mut last_version = None;
        while let Some(event) = events.next().await {
            if let Ok(Event::Apply(fanout) | Event::InitApply(fanout)) = event {
                let fanout: Fanout = fanout;
                if fanout.metadata.resource_version != last_version {
                    last_version = fanout.metadata.resource_version.clone();
                    if let Some(status) = fanout.status {
                        sink.lock().unwrap().push(status);
                    }
                }
            }
        }
    });
    (seen, task)
}

/// Whether `listed` appears in `order` in the same order (a subsequence).
fn in_order(listed: &[&str], order: &[String]) -> bool {
    let mut rest = order.iter();
    listed.iter().all(|name| rest.any(|o| o == name))
}

/// Waits until the recorded statuses satisfy `done`.
async fn wait_until(seen: &Mutex<Vec<FanoutStatus>>, done: impl Fn(&[FanoutStatus]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if done(&seen.lock().unwrap()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the recorder never saw the expected status"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_status_write_lists_targets_in_resolution_order() {
    let mut world = World::new("order").await;
    let tier = format!("tier-{}", world.shard);
    let label = world.consent_label();
    let mut explicit = Vec::new();
    for i in 0..10 {
        explicit.push(world.consenting(&format!("e{i}")).await);
    }
    // Explicit names in an order that is neither creation nor name order.
    explicit.reverse();
    explicit.swap(2, 7);
    let mut selected = Vec::new();
    for i in 0..30 {
        selected.push(
            world
                .namespace(&format!("s{i}"), &[(&label, "true"), ("tier", &tier)])
                .await,
        );
    }
    selected.sort();
    let expected: Vec<String> = explicit.iter().chain(&selected).cloned().collect();
    world.secret("token", &[("k", "v")]).await;

    let mut settings = world.settings();
    settings.fanout_concurrency = std::num::NonZeroUsize::new(6).unwrap();
    settings.status_interval = Duration::from_millis(150);
    let delay = WriteDelay::new(|_| Duration::from_millis(rand::rng().random_range(0..500)));
    let controller = world.start_with_delay(settings, Some(delay));
    let (seen, recorder) = record_statuses(&world, "ordered");
    let targets = Targets {
        namespaces: explicit.clone(),
        ..crate::harness::selected(&[("tier", &tier)])
    };
    world
        .create(&world.fanout("ordered", "token", targets))
        .await;
    world.wait_synced("ordered", expected.len()).await;
    // The recorder's watch may lag the one that saw the Fanout synced.
    wait_until(&seen, |statuses| {
        statuses
            .last()
            .is_some_and(|s| s.summary.synced as usize == expected.len())
    })
    .await;
    recorder.abort();

    let statuses = seen.lock().unwrap().clone();
    for (i, status) in statuses.iter().enumerate() {
        let order: Vec<&str> = status
            .targets
            .iter()
            .map(|t| t.namespace.as_str())
            .collect();
        assert!(
            in_order(&order, &expected),
            "status write {i} is out of resolution order: {order:?}"
        );
        assert_eq!(
            order.len() + status.targets_omitted as usize,
            status.summary.desired as usize,
            "write {i}: every target is listed or counted as omitted"
        );
    }
    let last = statuses.last().unwrap();
    let listed: Vec<&str> = last.targets.iter().map(|t| t.namespace.as_str()).collect();
    assert_eq!(listed, expected, "the final write lists every target");
    assert!(last.targets.iter().all(|t| t.state == TargetState::Synced));
    let intermediate: Vec<&FanoutStatus> = statuses
        .iter()
        .filter(|s| s.summary.pending > 0 && s.summary.synced > 0)
        .collect();
    assert!(
        intermediate.len() >= 2,
        "expected several intermediate writes with finished and Pending targets, saw {} of {} writes",
        intermediate.len(),
        statuses.len()
    );
    for status in &intermediate {
        assert!(
            status.targets.is_empty(),
            "nothing needs attention, so a write in the middle of the pass lists nothing: {:?}",
            status.targets
        );
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Reconciling" && c.status == "True"),
            "the pass in progress is Reconciling"
        );
    }
    // Coalesced: far fewer status writes than targets.
    assert!(
        statuses.len() < expected.len() / 2,
        "{} status writes for {} targets",
        statuses.len(),
        expected.len()
    );
    println!(
        "{} status writes for {} targets, {} of them intermediate",
        statuses.len(),
        expected.len(),
        intermediate.len()
    );
    world.delete_fanout("ordered").await;
    controller.drain().await;
}

#[tokio::test]
async fn over_the_cap_the_listed_entries_are_the_problems_in_order() {
    let mut world = World::new("cap").await;
    let mut targets = Vec::new();
    for i in 0..8 {
        targets.push(world.consenting(&format!("t{i}")).await);
    }
    world.secret("token", &[("k", "v")]).await;
    // Blockers (objects this Fanout did not make) in targets 2 and 6.
    for blocked in [&targets[2], &targets[6]] {
        world
            .secrets(blocked)
            .create(&PostParams::default(), &secret("token", &[("other", "x")]))
            .await
            .unwrap();
    }
    let mut settings = world.settings();
    settings.max_status_targets = 5;
    let controller = world.start(settings);
    let mut fanout = world.fanout(
        "capped",
        "token",
        names(&targets.iter().map(String::as_str).collect::<Vec<_>>()),
    );
    fanout.spec.conflict_policy = ConflictPolicy::Skip;
    world.create(&fanout).await;
    let done = world
        .wait_fanout("capped", "6 synced and 2 conflicts", |f| {
            f.status
                .as_ref()
                .is_some_and(|s| s.summary.synced == 6 && s.summary.conflict == 2)
        })
        .await;
    let status = done.status.clone().unwrap();
    let listed: Vec<&str> = status
        .targets
        .iter()
        .map(|t| t.namespace.as_str())
        .collect();
    // Both conflicts, then Synced entries from the start, in resolution order.
    assert_eq!(
        listed,
        [
            &targets[0],
            &targets[1],
            &targets[2],
            &targets[3],
            &targets[6]
        ]
        .map(String::as_str)
    );
    assert_eq!(status.targets_omitted, 3);
    assert_eq!(status.summary.desired, 8);
    assert_eq!(ready_reason(&done).as_deref(), Some("TargetsConflicting"));
    let conflicts: HashSet<&str> = status
        .targets
        .iter()
        .filter(|t| t.state == TargetState::Conflict)
        .map(|t| t.namespace.as_str())
        .collect();
    assert_eq!(
        conflicts,
        HashSet::from([targets[2].as_str(), targets[6].as_str()])
    );
    world.delete_fanout("capped").await;
    controller.drain().await;
}
