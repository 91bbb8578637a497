//! The world of sections 8 and 9: many converged Fanouts (each with its own
//! source and an explicit list of a few target namespaces, spread over the
//! target namespaces so that each holds several copies) and the leader that
//! converged them, with its `--identity`.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use testkit::process::Controller;

use crate::bench::Bench;
use crate::world::{self, RUN_LABEL, SOURCE_NAMESPACE, target};

/// The run label (and shard) of this world.
pub const RUN: &str = "steady";
/// Its Lease.
pub const LEASE: &str = "bench-steady";

/// Converged Fanouts and their leader.
pub struct Steady {
    /// Fanouts.
    pub fanouts: usize,
    /// Targets of each.
    pub targets: usize,
    /// The leader that converged them.
    pub leader: Controller,
    /// Its `--identity`.
    pub identity: String,
    /// Created to all Synced, seconds.
    pub converge_seconds: f64,
}

/// Creates the sources, a leader and the Fanouts, and waits until every target is Synced.
pub async fn converge(bench: &Bench) -> Result<Steady> {
    let shape = &bench.shape;
    let (fanouts, targets) = (shape.idle_fanouts, shape.idle_targets);
    let sources = (0..fanouts)
        .map(|j| world::source_secret(&format!("src-{RUN}-{j}"), RUN))
        .collect();
    bench.cluster.create_secrets(sources).await?;
    let flags = shape.controller_flags(shape.limits());
    let (leader, identity) = bench.leader_with(RUN, LEASE, None, flags).await?;
    let spread = shape.spread();
    let objects = (0..fanouts)
        .map(|j| {
            let namespaces: Vec<String> = (0..targets)
                .map(|k| target((j * targets + k) % spread))
                .collect();
            world::fanout(
                &format!("fo-{RUN}-{j}"),
                RUN,
                &format!("src-{RUN}-{j}"),
                &format!("cp-{RUN}-{j}"),
                json!({ "namespaces": namespaces }),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    bench.create_fanouts(objects).await?;
    let copies = (fanouts * targets) as u64;
    let timeout = Duration::from_secs(120)
        + Duration::from_secs_f64(20.0 * copies as f64 / f64::from(shape.kube_qps));
    bench.wait_all_synced(RUN, copies, timeout).await?;
    let converge_seconds = started.elapsed().as_secs_f64();
    eprintln!("steady: {fanouts} Fanouts x {targets} targets converged in {converge_seconds:.1}s");
    Ok(Steady {
        fanouts,
        targets,
        leader,
        identity,
        converge_seconds,
    })
}

/// Stops `leader` and deletes the world (copies one `deletecollection` per namespace).
pub async fn clean_up(bench: &Bench, leader: Controller) -> Result<()> {
    leader.try_stop().await?;
    let names: Vec<String> = (0..bench.shape.idle_fanouts)
        .map(|j| format!("fo-{RUN}-{j}"))
        .collect();
    bench.remove_fanouts(&names).await?;
    let mut namespaces: Vec<String> = (0..bench.shape.spread()).map(target).collect();
    namespaces.push(SOURCE_NAMESPACE.to_owned());
    bench
        .cluster
        .delete_collection_labelled(&namespaces, &format!("{RUN_LABEL}={RUN}"))
        .await
}
