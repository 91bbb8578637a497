//! Section 10: targets blocked by an object the Fanout did not make. Each
//! of N target namespaces holds a Secret of the copy's name without any
//! owner labels (the bench's run label only); the Fanout (conflictPolicy
//! Skip) reports them Conflict. Then, with nothing changing, a measured
//! window ([`crate::quiet`]; longer than a 30 s poll): ideally no request
//! beyond the watches and the Lease. Then the bench deletes the blockers,
//! and the time until the status (seen through a watch) says every target
//! is Synced is what a tenant waits once they clear the way.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use fanout::crd::ConflictPolicy;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;

use crate::bench::Bench;
use crate::counters;
use crate::observer::Observer;
use crate::quiet;
use crate::results::BlockedResult;
use crate::world::{self, RUN_LABEL, first, target};

const RUN: &str = "blocked";
const LEASE: &str = "bench-blocked";
/// The blockers carry this run label (never the controller's labels).
const BLOCKER_RUN: &str = "blocked-blockers";
/// Pause after all are Conflict before the window: trailing status writes land.
const SETTLE: Duration = Duration::from_secs(3);

/// The whole section.
pub async fn run(bench: &Bench) -> Result<BlockedResult> {
    let n = bench.shape.blocked_targets;
    let n32 = u32::try_from(n)?;
    let name = format!("fo-{RUN}");
    let copy = format!("cp-{RUN}");
    let source = format!("src-{RUN}");
    let blockers: Vec<Secret> = (0..n)
        .map(|i| Secret {
            metadata: ObjectMeta {
                name: Some(copy.clone()),
                namespace: Some(target(i)),
                labels: Some(BTreeMap::from([(
                    RUN_LABEL.to_owned(),
                    BLOCKER_RUN.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            string_data: Some(BTreeMap::from([(
                "owner".to_owned(),
                "a tenant".to_owned(),
            )])),
            ..Secret::default()
        })
        .collect();
    bench.cluster.create_secrets(blockers).await?;
    bench
        .cluster
        .create_secrets(vec![world::source_secret(&source, RUN)])
        .await?;
    let flags = bench.shape.controller_flags(bench.shape.limits());
    let (controller, identity) = bench.leader_with(RUN, LEASE, None, flags).await?;
    let observer = Observer::start(&bench.cluster.client, &name).await?;
    let mut fanout = world::fanout(&name, RUN, &source, &copy, first(n))?;
    fanout.spec.conflict_policy = ConflictPolicy::Skip;
    let timeout = Duration::from_secs(120)
        + Duration::from_secs_f64(20.0 * n as f64 / f64::from(bench.shape.kube_qps));

    let created = Instant::now();
    world::create_fanout(&bench.cluster.client, &fanout).await?;
    let conflicted = observer
        .first(|s| s.desired == n32 && s.conflict == n32, timeout)
        .await?;
    tokio::time::sleep(SETTLE + Duration::from_millis(bench.shape.status_interval_ms)).await;
    let length = Duration::from_secs(bench.shape.blocked_window_seconds);
    let window = quiet::measure(bench, &controller, &identity, length).await?;

    let counters_before = bench.counters(&controller).await?;
    let mark = bench.audit.mark()?;
    let deleting = Instant::now();
    bench
        .cluster
        .delete_secrets_labelled(&format!("{RUN_LABEL}={BLOCKER_RUN}"))
        .await?;
    let deleted = Instant::now();
    let synced = observer
        .first(|s| s.desired == n32 && s.synced == n32, timeout)
        .await?;
    let to = Timestamp::now();
    let counters_after = bench.counters(&controller).await?;
    let unblock_audit = bench.audit.requests(&mark, to, &identity).await?;
    controller.try_stop().await?;
    drop(observer);
    world::clean_up(&bench.cluster, RUN, &[name]).await?;

    let result = BlockedResult {
        targets: n,
        to_conflict_seconds: (conflicted - created).as_secs_f64(),
        window,
        delete_seconds: (deleted - deleting).as_secs_f64(),
        to_synced_seconds: synced.saturating_duration_since(deleted).as_secs_f64(),
        unblock_audit,
        unblock_controller: counters::since(&counters_after, &counters_before),
    };
    eprintln!(
        "blocked: {n} Conflict after {:.2}s; {} requests in {:.0}s while blocked; all Synced {:.2}s after the last blocker went",
        result.to_conflict_seconds,
        result.window.controller.requests(),
        result.window.seconds,
        result.to_synced_seconds
    );
    Ok(result)
}
