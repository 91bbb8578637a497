//! Section 4: start to ready with many Fanouts already converged, each with
//! its own source (all in one namespace) and one target namespace: a start
//! reads every source and checks every target.
//!
//! Timed from spawn: `/readyz` 200, `fanout_leader` 1, and every Fanout
//! reconciled once (`fanout_reconciles_total`, skipped ones aside). The API requests of the
//! first start are read from the API server's own metrics. A last start
//! goes through testkit's fault proxy, holding every request unanswered
//! until the process is up, to time "API server answers → ready" alone.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use fanout::controller::READINESS_CHECKS;
use serde_json::json;
use testkit::process::{Controller, try_kubeconfig_via};
use testkit::proxy::{FaultProxy, Mode};

use crate::bench::{Bench, reconciles_done};
use crate::results::{StartupResult, StartupRun, request_counts};
use crate::world::{self, target};

const RUN: &str = "start";
const LEASE: &str = "bench-startup";
/// Polling period of `/readyz` while timing.
const POLL: Duration = Duration::from_millis(5);
/// How long the proxy holds requests after the process listens.
const HELD: Duration = Duration::from_secs(1);

/// Converges the Fanouts, then times fresh starts.
pub async fn run(bench: &Bench) -> Result<StartupResult> {
    let count = bench.shape.startup_fanouts;
    let names: Vec<String> = (0..count).map(|j| format!("fo-{RUN}-{j}")).collect();
    converge(bench, count).await?;

    let mut runs = Vec::new();
    let mut requests = Vec::new();
    let mut watches = Vec::new();
    for repeat in 0..bench.shape.repeats {
        let before = bench.cluster.apiserver_metrics()?;
        let controller = bench.spawn(RUN, LEASE, None).await?;
        let run = time_start(&controller, count, None).await?;
        if repeat == 0 {
            // Before the stop: open watches are counted as such, not as finished requests.
            let after = bench.cluster.apiserver_metrics()?;
            requests = request_counts(&after.requests_since(&before));
            watches = request_counts(&after.watches_since(&before));
        }
        controller.try_stop().await?;
        eprintln!(
            "startup with {count} Fanouts: ready {:.3}s, leader {:.3}s, all reconciled {:.3}s",
            run.to_ready_seconds, run.to_leader_seconds, run.to_reconciled_seconds
        );
        runs.push(run);
    }
    // The controller authenticates as the admin, by client certificate,
    // which the proxy (terminating TLS) presents on its behalf.
    let (cert, key) = bench.cluster.client_cert()?;
    let server = bench.cluster.server_url();
    let pki = bench.cluster.pki_dir()?;
    let proxy = FaultProxy::start_with_client_cert(&server, &pki, Mode::Hold, &cert, &key).await;
    // Beside the admin kubeconfig: scripts/bench finds leftover controllers by that directory.
    let admin = bench.cluster.kubeconfig();
    let dir = admin.parent().context("the kubeconfig has no directory")?;
    let kubeconfig = try_kubeconfig_via(admin, proxy.addr(), dir)?;
    let controller = bench.spawn(RUN, LEASE, Some(&kubeconfig)).await?;
    let run = time_start(&controller, count, Some(&proxy)).await?;
    controller.try_stop().await?;
    drop(proxy);
    eprintln!(
        "startup behind a holding proxy: API answering to ready {:.3}s",
        run.api_answering_to_ready_seconds.unwrap_or(f64::NAN)
    );
    runs.push(run);

    world::clean_up(&bench.cluster, RUN, &names).await?;
    Ok(StartupResult {
        fanouts: count,
        runs,
        requests,
        watches,
    })
}

async fn converge(bench: &Bench, count: usize) -> Result<()> {
    let sources = (0..count)
        .map(|j| world::source_secret(&format!("src-{RUN}-{j}"), RUN))
        .collect();
    bench.cluster.create_secrets(sources).await?;
    let controller = bench.leader(RUN, LEASE).await?;
    let fanouts = (0..count)
        .map(|j| {
            world::fanout(
                &format!("fo-{RUN}-{j}"),
                RUN,
                &format!("src-{RUN}-{j}"),
                &format!("cp-{RUN}"),
                json!({"namespaces": [target(j)]}),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    bench.create_fanouts(fanouts).await?;
    bench
        .wait_all_synced(RUN, count as u64, Duration::from_secs(600))
        .await?;
    Ok(controller.try_stop().await?)
}

/// Times one start. With `proxy` (holding), the API server answers
/// nothing until `HELD` after the admin server listens.
async fn time_start(
    controller: &Controller,
    count: usize,
    proxy: Option<&FaultProxy>,
) -> Result<StartupRun> {
    let spawned = controller.spawned();
    let opened = match proxy {
        Some(proxy) => {
            tokio::time::sleep(HELD).await;
            if controller.status("/readyz").await == Some(200) {
                bail!("ready while the API server was unreachable");
            }
            proxy.set(Mode::Open);
            Some(Instant::now())
        }
        None => None,
    };
    let ready = controller
        .try_wait_ready(&READINESS_CHECKS, POLL, Duration::from_secs(120))
        .await?;
    // A 200 before the controller's checks were even registered.
    let premature =
        (ready.first_200 < ready.ready).then(|| (ready.first_200 - spawned).as_secs_f64());
    let ready = ready.ready;
    let mut leader = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    let reconciled = loop {
        let metrics = controller.try_metrics().await?;
        let now = Instant::now();
        if leader.is_none() && metrics.leader() {
            leader = Some(now);
        }
        if leader.is_some() && reconciles_done(&metrics) >= count as f64 {
            break now;
        }
        if now > deadline {
            bail!(
                "not every Fanout reconciled; log {}",
                controller.log_path().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let leader = leader.context("leader time missing")?;
    Ok(StartupRun {
        to_ready_seconds: (ready - spawned).as_secs_f64(),
        to_leader_seconds: (leader - spawned).as_secs_f64(),
        to_reconciled_seconds: (reconciled - spawned).as_secs_f64(),
        api_answering_to_ready_seconds: opened.map(|o| (ready - o).as_secs_f64()),
        premature_200_seconds: premature,
    })
}
