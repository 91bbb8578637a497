//! What a converged Fanout costs: no write at all — no copy, status or
//! Event — when a pass finds nothing changed: after a failover (a standby
//! taking over reconciles every Fanout), in a later pass, and after a
//! restart. A target blocked by someone else's object costs one read when
//! a process first meets it, never a write, and nothing once remembered.

use std::time::Duration;

use crate::harness::{Controller, World, names, secret, states};
use fanout::crd::TargetState;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::PostParams;

/// The requests this world's controllers made since `from`, as
/// `verb resource namespace/name -> code`, writes and reads apart.
fn requests_since(world: &World, from: Timestamp) -> (Vec<String>, Vec<String>) {
    let agent = format!("fanout-test/{}", world.shard);
    let (writes, reads): (Vec<_>, Vec<_>) = world
        .cluster
        .audit()
        .into_iter()
        .filter(|e| e.user_agent == agent && e.received >= from && e.verb != "watch")
        .partition(|e| e.is_write());
    let show = |events: Vec<testkit::AuditEvent>| {
        events
            .into_iter()
            .map(|e| {
                format!(
                    "{} {} {}/{} -> {}",
                    e.verb, e.resource, e.namespace, e.name, e.code
                )
            })
            .collect()
    };
    (show(writes), show(reads))
}

#[tokio::test]
async fn a_converged_fanout_costs_no_write_on_a_pass_a_restart_or_a_failover() {
    let mut world = World::new("cost").await;
    let mut targets = Vec::new();
    for i in 0..3 {
        targets.push(world.consenting(&format!("t{i}")).await);
    }
    let blocked = world.consenting("blocked").await;
    let refusing = world.namespace("refusing", &[]).await;
    world.secret("token", &[("k", "v")]).await;
    world
        .secrets(&blocked)
        .create(&PostParams::default(), &secret("token", &[("k", "theirs")]))
        .await
        .unwrap();
    let mut all: Vec<&str> = targets.iter().map(String::as_str).collect();
    all.extend([blocked.as_str(), refusing.as_str()]);

    let first = world.start(world.settings());
    world
        .create(&world.fanout("quiet", "token", names(&all)))
        .await;
    let expected: Vec<(String, TargetState)> = targets
        .iter()
        .map(|t| (t.clone(), TargetState::Synced))
        .chain([
            (blocked.clone(), TargetState::Conflict),
            (refusing.clone(), TargetState::Refused),
        ])
        .collect();
    world
        .wait_fanout("quiet", "3 Synced, 1 Conflict, 1 Refused", |f| {
            states(f) == expected
        })
        .await;
    let standby = world.start_standby(world.settings());
    testkit::eventually("the standby's caches", Duration::from_secs(60), || async {
        standby.health.readiness().ok.then_some(())
    })
    .await;
    // Draining lets the leader's pass finish (its Events included).
    first.drain().await;
    let before = status_version(&world).await;

    // Failover: the standby, warm but remembering nothing, reconciles
    // every Fanout and finds everything as it was.
    let from = Timestamp::now();
    standby.leader.send_replace(true);
    let passes = wait_for_pass(&standby, 0.0).await;
    let (writes, reads) = requests_since(&world, from);
    println!("after a failover: {} reads: {reads:?}", reads.len());
    assert!(writes.is_empty(), "writes after a failover: {writes:?}");
    assert!(
        reads
            .iter()
            .any(|r| r.starts_with(&format!("get secrets {blocked}/token"))),
        "the blocked target is read once to remember its blocker: {reads:?}"
    );
    assert_eq!(
        status_version(&world).await,
        before,
        "the status is untouched"
    );

    // A later pass (an unrelated label on a target namespace changed)
    // reads nothing it remembers and writes nothing.
    let from = Timestamp::now();
    world
        .set_namespace_labels(&targets[0], &[("unrelated", Some("x"))])
        .await;
    wait_for_pass(&standby, passes).await;
    let (writes, reads) = requests_since(&world, from);
    println!(
        "a pass with nothing changed: {} reads: {reads:?}",
        reads.len()
    );
    assert!(
        writes.is_empty(),
        "writes in a pass with nothing changed: {writes:?}"
    );
    assert!(
        !reads.iter().any(|r| r.contains(&format!("{blocked}/"))),
        "a remembered blocker is not read again: {reads:?}"
    );
    standby.drain().await;

    // A restart: a fresh process, cold caches.
    let from = Timestamp::now();
    let restarted = world.start(world.settings());
    wait_for_pass(&restarted, 0.0).await;
    let (writes, reads) = requests_since(&world, from);
    println!("after a restart: {} reads: {reads:?}", reads.len());
    assert!(writes.is_empty(), "writes after a restart: {writes:?}");
    assert_eq!(
        status_version(&world).await,
        before,
        "the status is untouched"
    );
    world.delete_fanout("quiet").await;
    restarted.drain().await;
}

async fn status_version(world: &World) -> Option<String> {
    world
        .fanouts()
        .get("quiet")
        .await
        .unwrap()
        .resource_version()
}

/// Waits until `controller` has finished a pass more than `before`; returns
/// its count of finished passes.
async fn wait_for_pass(controller: &Controller, before: f64) -> f64 {
    testkit::eventually("a finished pass", Duration::from_secs(60), || async {
        let passes = controller.count("fanout_reconciles_total", &["ok"]);
        (passes > before).then_some(passes)
    })
    .await
}
