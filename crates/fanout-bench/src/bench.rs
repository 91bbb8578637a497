//! What every section shares: the cluster, the shape, the binary, and how
//! a measured controller is started.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use fanout::Fanout;
use fanout::controller::READINESS_CHECKS;
use futures::{StreamExt, TryStreamExt, stream};
use kube::Api;
use kube::api::ListParams;
use testkit::process::{Binary, Controller, Launch, Metrics};

use crate::audit::Audit;
use crate::cluster::Cluster;
use crate::counters;
use crate::options::{Limits, Shape};
use crate::results::ControllerDelta;
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
    /// The API server's audit log.
    pub audit: Audit,
    processes: AtomicUsize,
}

impl Bench {
    /// The bench state.
    pub fn new(cluster: Cluster, shape: Shape, bin: PathBuf, work_dir: PathBuf) -> Result<Bench> {
        Ok(Bench {
            audit: Audit::new(cluster.kubeconfig())?,
            cluster,
            shape,
            bin: Binary {
                path: bin,
                metrics_prefix: fanout::app::METRICS_PREFIX,
            },
            work_dir,
            processes: AtomicUsize::new(0),
        })
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
        let flags = self.shape.controller_flags(limits);
        let (controller, _) = self.spawn_with(shard, lease, kubeconfig, flags).await?;
        Ok(controller)
    }

    /// Starts a controller with `flags` (and none of the measured ones) for
    /// the Fanouts labelled `shard`, holding Lease `lease`, under a unique
    /// `--identity`, which it returns: the controller's user agent is
    /// `fanout/<version> (<identity>)`, so the audit log tells its requests apart.
    pub async fn spawn_with(
        &self,
        shard: &str,
        lease: &str,
        kubeconfig: Option<&Path>,
        flags: Vec<String>,
    ) -> Result<(Controller, String)> {
        let n = self.processes.fetch_add(1, Ordering::Relaxed);
        let identity = format!("bench-{n:03}-{shard}");
        let mut args = flags;
        args.extend([
            "--lease-namespace".into(),
            SOURCE_NAMESPACE.into(),
            "--lease-name".into(),
            lease.into(),
            "--fanout-selector".into(),
            format!("{SHARD_LABEL}={shard}"),
            "--identity".into(),
            identity.clone(),
        ]);
        let kubeconfig = kubeconfig.unwrap_or(self.cluster.kubeconfig());
        let launch = Launch::new(&self.bin, kubeconfig, &args)
            .log_to(self.work_dir.join(format!("fanout-{n:03}-{shard}.log")))
            .log_filter("info");
        Ok((Controller::try_start(launch).await?, identity))
    }

    /// [`Bench::spawn_with`], then waits until it is ready and leader.
    pub async fn leader_with(
        &self,
        shard: &str,
        lease: &str,
        kubeconfig: Option<&Path>,
        flags: Vec<String>,
    ) -> Result<(Controller, String)> {
        let (controller, identity) = self.spawn_with(shard, lease, kubeconfig, flags).await?;
        controller
            .try_wait_ready(&READINESS_CHECKS, Duration::from_millis(20), START_TIMEOUT)
            .await?;
        controller.try_wait_leader(START_TIMEOUT).await?;
        Ok((controller, identity))
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
        let flags = self.shape.controller_flags(limits);
        let (controller, _) = self.leader_with(shard, lease, None, flags).await?;
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

    /// Removes each Fanout named in `names` (finalizer dropped), many at once.
    pub async fn remove_fanouts(&self, names: &[String]) -> Result<()> {
        stream::iter(names)
            .map(|name| world::remove_fanout(&self.cluster.client, name))
            .buffer_unordered(32)
            .try_collect::<()>()
            .await
    }

    /// The counters of `controller`'s `/metrics` now.
    pub async fn counters(&self, controller: &Controller) -> Result<ControllerDelta> {
        Ok(counters::read(&controller.try_metrics().await?))
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
            // Listing many Fanouts with their statuses costs the API server.
            let pause = if list.items.len() > 100 { 2_000 } else { 250 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

/// Polls `controller` until it leads and has done `count` reconciles more
/// than `done_before` (every Fanout reconciled once after a start or a
/// takeover), or, failing that, until its queue has been empty with nothing
/// in flight for 3 s after at least one reconcile. Returns when leadership
/// was seen, when the reconciles were done, and whether every Fanout was
/// (false: the queue drained first).
pub async fn wait_reconciled(
    controller: &Controller,
    count: usize,
    done_before: f64,
    timeout: Duration,
) -> Result<Reconciled> {
    const DRAINED_FOR: Duration = Duration::from_secs(3);
    let deadline = Instant::now() + timeout;
    let mut led = None;
    let mut drained_since: Option<Instant> = None;
    loop {
        let metrics = controller.try_metrics().await?;
        let now = Instant::now();
        if led.is_none() && metrics.leader() {
            led = Some(now);
        }
        if let Some(led) = led {
            let done = reconciles_done(&metrics) - done_before;
            if done >= count as f64 {
                return Ok(Reconciled {
                    led,
                    at: now,
                    reconciles: done,
                    complete: true,
                });
            }
            let idle = metrics.get("fanout_queue_depth").unwrap_or(0.0) == 0.0
                && metrics.get("fanout_reconciles_in_flight").unwrap_or(0.0) == 0.0
                && done > 0.0;
            match (idle, drained_since) {
                (true, None) => drained_since = Some(now),
                (true, Some(since)) if now - since >= DRAINED_FOR => {
                    return Ok(Reconciled {
                        led,
                        at: since,
                        reconciles: done,
                        complete: false,
                    });
                }
                (false, _) => drained_since = None,
                _ => {}
            }
        }
        if now > deadline {
            anyhow::bail!(
                "not every Fanout reconciled after {timeout:?}; log {}",
                controller.log_path().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What [`wait_reconciled`] saw.
pub struct Reconciled {
    /// When the controller was first seen leading.
    pub led: Instant,
    /// When the reconcile-all was done.
    pub at: Instant,
    /// Reconciles it did.
    pub reconciles: f64,
    /// Whether every Fanout was reconciled (false: the queue drained first).
    pub complete: bool,
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
pub fn bucket_refill(limits: Limits) -> Duration {
    if limits.is_off() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(f64::from(limits.burst) / f64::from(limits.qps))
        + Duration::from_millis(100)
}
