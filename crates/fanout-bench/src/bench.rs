//! What every section shares: the cluster, the shape, the binary, and how
//! a measured controller is started.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use fanout::Fanout;
use fanout::controller::READINESS_CHECKS;
use futures::{StreamExt, TryStreamExt, stream};
use kube::Api;
use kube::api::ListParams;
use testkit::process::{Binary, Controller, Launch, Metrics};

use crate::cluster::Cluster;
use crate::options::{Limits, Shape};
use crate::world::{self, SHARD_LABEL, SOURCE_NAMESPACE};

/// How long a controller may take to become ready and leader while being set up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The bench's shared state.
pub struct Bench {
    /// The cluster.
    pub cluster: Cluster,
    /// The sizes and limits.
    pub shape: Shape,
    /// The binary under test.
    pub bin: Binary,
    /// Logs and results.
    pub work_dir: PathBuf,
    processes: AtomicUsize,
}

impl Bench {
    /// The bench state.
    pub fn new(cluster: Cluster, shape: Shape, bin: PathBuf, work_dir: PathBuf) -> Bench {
        Bench {
            cluster,
            shape,
            bin: Binary {
                path: bin,
                metrics_prefix: fanout::app::METRICS_PREFIX,
            },
            work_dir,
            processes: AtomicUsize::new(0),
        }
    }

    /// Starts a controller for the Fanouts labelled `shard`, holding Lease
    /// `lease`, with the measured flags; `kubeconfig` defaults to the admin one.
    pub async fn spawn(
        &self,
        shard: &str,
        lease: &str,
        kubeconfig: Option<&Path>,
    ) -> Result<Controller> {
        self.spawn_limited(shard, lease, kubeconfig, self.shape.limits())
            .await
    }

    /// [`Bench::spawn`] with other client-side limits.
    pub async fn spawn_limited(
        &self,
        shard: &str,
        lease: &str,
        kubeconfig: Option<&Path>,
        limits: Limits,
    ) -> Result<Controller> {
        let n = self.processes.fetch_add(1, Ordering::Relaxed);
        let mut args = self.shape.controller_flags(limits);
        args.extend([
            "--lease-namespace".into(),
            SOURCE_NAMESPACE.into(),
            "--lease-name".into(),
            lease.into(),
            "--fanout-selector".into(),
            format!("{SHARD_LABEL}={shard}"),
        ]);
        let kubeconfig = kubeconfig.unwrap_or(self.cluster.kubeconfig());
        let launch = Launch::new(&self.bin, kubeconfig, &args)
            .log_to(self.work_dir.join(format!("fanout-{n:03}-{shard}.log")))
            .log_filter("info");
        Ok(Controller::try_start(launch).await?)
    }

    /// Starts a controller and waits until it is ready and leader, and its
    /// client's token bucket is full again (as the baseline's is at its start).
    pub async fn leader(&self, shard: &str, lease: &str) -> Result<Controller> {
        self.leader_limited(shard, lease, self.shape.limits()).await
    }

    /// [`Bench::leader`] with other client-side limits.
    pub async fn leader_limited(
        &self,
        shard: &str,
        lease: &str,
        limits: Limits,
    ) -> Result<Controller> {
        let controller = self.spawn_limited(shard, lease, None, limits).await?;
        controller
            .try_wait_ready(&READINESS_CHECKS, Duration::from_millis(20), START_TIMEOUT)
            .await?;
        controller.try_wait_leader(START_TIMEOUT).await?;
        tokio::time::sleep(bucket_refill(limits)).await;
        Ok(controller)
    }

    /// Creates every Fanout, many at once.
    pub async fn create_fanouts(&self, fanouts: Vec<Fanout>) -> Result<()> {
        stream::iter(fanouts)
            .map(|fanout| async move { world::create_fanout(&self.cluster.client, &fanout).await })
            .buffer_unordered(32)
            .try_collect::<()>()
            .await
    }

    /// Polls the Fanouts labelled `shard` until their summaries add up to
    /// `synced` Synced targets out of `synced` desired.
    pub async fn wait_all_synced(&self, shard: &str, synced: u64, timeout: Duration) -> Result<()> {
        let api: Api<Fanout> = Api::namespaced(self.cluster.client.clone(), SOURCE_NAMESPACE);
        let params = ListParams::default().labels(&format!("{SHARD_LABEL}={shard}"));
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let list = api.list(&params).await.context("listing Fanouts")?;
            let sum = |f: fn(&fanout::crd::Summary) -> u32| -> u64 {
                list.items
                    .iter()
                    .filter_map(|fo| fo.status.as_ref())
                    .map(|s| u64::from(f(&s.summary)))
                    .sum()
            };
            let (done, desired) = (sum(|s| s.synced), sum(|s| s.desired));
            if done == synced && desired == synced {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "after {timeout:?}: {done} of {synced} targets Synced ({desired} desired)"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Reconciles that did work (every result of `fanout_reconciles_total` but
/// `skipped`, which a standby counts for each request it ignores).
pub fn reconciles_done(metrics: &Metrics) -> f64 {
    metrics
        .sum_where("fanout_reconciles_total", |labels| {
            !labels.contains(r#"result="skipped""#)
        })
        .unwrap_or(0.0)
}

/// How long an idle client takes to get its whole burst back.
fn bucket_refill(limits: Limits) -> Duration {
    Duration::from_secs_f64(f64::from(limits.burst) / f64::from(limits.qps))
        + Duration::from_millis(100)
}
