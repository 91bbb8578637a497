//! Section 3: the controller's peak RSS with many Fanouts over many
//! namespaces, first with a few unrelated Secrets in the cluster, then with
//! ten times more. The controller never watches Secrets it did not make
//! (sources by name, copies by label), so its memory must not follow them.
//!
//! Each step runs a fresh controller through the whole fan-out (so the peak
//! includes the work, not only the caches), then the copies are deleted.
//! Between the steps the first, converged controller is still running while
//! the extra unrelated Secrets are added: its RSS before and after is the
//! most direct evidence.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::{ListParams, ObjectMeta};
use serde_json::json;
use testkit::process::Controller;

use crate::bench::Bench;
use crate::results::{IdleGrowth, MemoryResult, MemoryStep};
use crate::world::{self, GROUP_LABEL, group, target};

/// Label on the unrelated Secrets (never on what a run cleans up).
const UNRELATED_LABEL: &str = "bench.fanout.dev/unrelated";
/// Pause before RSS is read, so that freed memory and caches settle.
const SETTLE: Duration = Duration::from_secs(3);

/// Both steps.
pub async fn run(bench: &Bench) -> Result<MemoryResult> {
    let shape = &bench.shape;
    let mut unrelated = count_unrelated(bench).await?;
    let mut steps = Vec::new();
    let mut idle = None;
    for (i, &wanted) in shape.unrelated.iter().enumerate() {
        add_unrelated(bench, &mut unrelated, wanted).await?;
        let run = format!("mem-u{wanted}");
        let (controller, step) = fan_out(bench, &run, wanted).await?;
        eprintln!(
            "memory with {wanted} unrelated secrets: {} copies in {:.1}s, peak RSS {} KiB",
            step.copies, step.seconds, step.peak_rss_kib
        );
        steps.push(step);
        if let (Some(&next), None) = (shape.unrelated.get(i + 1), &idle) {
            let before_kib = controller.rss_kib()?;
            let added = next - unrelated;
            add_unrelated(bench, &mut unrelated, next).await?;
            tokio::time::sleep(SETTLE).await;
            idle = Some(IdleGrowth {
                added,
                before_kib,
                after_kib: controller.rss_kib()?,
                peak_after_kib: controller.peak_rss_kib()?,
            });
        }
        controller.try_stop().await?;
        let fanouts: Vec<String> = (0..shape.memory_fanouts)
            .map(|j| format!("fo-{run}-{j}"))
            .collect();
        world::clean_up(&bench.cluster, &run, &fanouts).await?;
    }
    let namespaces_in_cluster = Api::<Namespace>::all(bench.cluster.client.clone())
        .list_metadata(&ListParams::default())
        .await?
        .items
        .len();
    Ok(MemoryResult {
        fanouts: shape.memory_fanouts,
        per_fanout: shape.memory_group,
        namespaces: shape.memory_namespaces,
        namespaces_in_cluster,
        steps,
        idle,
    })
}

/// A fresh controller fans out every Fanout of this step; returned still running.
async fn fan_out(bench: &Bench, run: &str, unrelated: usize) -> Result<(Controller, MemoryStep)> {
    let shape = &bench.shape;
    let groups = shape.memory_namespaces / shape.memory_group;
    let sources = (0..shape.memory_fanouts)
        .map(|j| world::source_secret(&format!("src-{run}-{j}"), run))
        .collect();
    bench.cluster.create_secrets(sources).await?;
    let controller = bench.leader(run, "bench-memory").await?;
    let fanouts = (0..shape.memory_fanouts)
        .map(|j| {
            let selector = json!({"selector": {"matchLabels": {
                GROUP_LABEL: group((j % groups) * shape.memory_group, shape.memory_group)
            }}});
            world::fanout(
                &format!("fo-{run}-{j}"),
                run,
                &format!("src-{run}-{j}"),
                &format!("cp-{run}-{j}"),
                selector,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let copies = shape.memory_fanouts * shape.memory_group;
    let started = Instant::now();
    bench.create_fanouts(fanouts).await?;
    bench
        .wait_all_synced(run, copies as u64, Duration::from_secs(600))
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let step = MemoryStep {
        unrelated,
        copies,
        seconds,
        peak_rss_kib: controller.peak_rss_kib()?,
        rss_kib: controller.rss_kib()?,
    };
    Ok((controller, step))
}

async fn count_unrelated(bench: &Bench) -> Result<usize> {
    Ok(bench
        .cluster
        .secrets_labelled(&format!("{UNRELATED_LABEL}=true"))
        .await?
        .len())
}

/// Creates unrelated 1 KiB Secrets, spread over the target namespaces, until there are `wanted`.
async fn add_unrelated(bench: &Bench, have: &mut usize, wanted: usize) -> Result<()> {
    if *have >= wanted {
        return Ok(());
    }
    let spread = bench.shape.namespaces().max(1);
    let secrets = (*have..wanted)
        .map(|k| Secret {
            metadata: ObjectMeta {
                name: Some(format!("unrelated-{k:05}")),
                namespace: Some(target(k % spread)),
                labels: Some(BTreeMap::from([(
                    UNRELATED_LABEL.to_owned(),
                    "true".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                "blob".to_owned(),
                ByteString((0..1024).map(|b| (b * 7 + k) as u8).collect()),
            )])),
            ..Secret::default()
        })
        .collect();
    bench.cluster.create_secrets(secrets).await?;
    *have = wanted;
    Ok(())
}
