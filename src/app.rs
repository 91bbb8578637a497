//! Wiring: builds the runtime, plugs the Fanout controller into it, and
//! follows the shutdown order of [`crate::runtime::shutdown`] to an exit code.

use std::process::ExitCode;
use std::time::Duration;

use prometheus::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::fanout;
use crate::runtime::Handles;
use crate::runtime::admin::{self, AdminError, AdminServer, AdminState};
use crate::runtime::client::{self, ClientError, ClientSettings};
use crate::runtime::health::Health;
use crate::runtime::lease::{Leadership, LeaseSettings, Timings};
use crate::runtime::metrics::RuntimeMetrics;
use crate::runtime::shutdown::{self, Phase, Shutdown, SignalError};

// After the drain deadline, what is left must fit in the margin between
// `--shutdown-timeout` and the pod's grace period (5 s in the chart):
// ABORT_GRACE + LEASE_RELEASE_TIMEOUT + ADMIN_STOP_TIMEOUT = 4 s.

/// How long the controller gets to return after the abort token fired
/// before the process stops waiting for it.
const ABORT_GRACE: Duration = Duration::from_secs(2);
/// Bound on releasing the lease: a hung API server must not eat the grace period.
const LEASE_RELEASE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on stopping the admin server (in-flight probe or scrape requests).
const ADMIN_STOP_TIMEOUT: Duration = Duration::from_secs(1);
/// The runtime's own liveness heartbeat: a tick every second, failing
/// `/livez` after 30 s of silence (a wedged async runtime).
const RUNTIME_TICK: Duration = Duration::from_secs(1);
const RUNTIME_MAX_SILENCE: Duration = Duration::from_secs(30);

/// Errors that stop the process before or instead of a normal drain.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A metric could not be registered (a programming error, reported plainly).
    #[error("cannot register metrics")]
    Metrics(#[from] prometheus::Error),
    /// Signal handlers could not be installed.
    #[error(transparent)]
    Signals(#[from] SignalError),
    /// The admin server could not start.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// No usable kubeconfig or in-cluster configuration.
    #[error("cannot configure the Kubernetes client")]
    KubeConfig(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The clients could not be built from it.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Runs the controller until a signal drains it; returns the exit code:
/// 0 after a complete drain, 1 when the deadline abandoned work or the
/// controller failed.
pub async fn run(config: Config) -> Result<ExitCode, AppError> {
    let registry = Registry::new();
    let health = Health::new();
    let metrics = RuntimeMetrics::register(&registry)?;
    let shutdown = Shutdown::new(health.clone(), metrics.clone());
    // Signals first: a SIGTERM during start-up must drain, not kill.
    let _signals = shutdown::spawn_signal_handler(shutdown.clone(), config.shutdown_timeout)?;
    // Every check readiness depends on exists before /readyz first answers.
    for check in fanout::READINESS_CHECKS {
        health.readiness_check(check);
    }

    let admin = AdminServer::start(
        config.admin_addr,
        AdminState {
            health: health.clone(),
            registry: registry.clone(),
            metrics: metrics.clone(),
        },
    )
    .await?;
    let background = CancellationToken::new();
    spawn_self_ping(&admin, &health, background.clone());
    spawn_runtime_heartbeat(&health, background.clone());

    let kube_config = kube_config(&config).await?;
    let api_server = kube_config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_owned();
    // Computed once: without a pod name it carries a random suffix.
    let identity = config.identity();
    let user_agent = format!("fanout/{} ({identity})", env!("CARGO_PKG_VERSION"));
    let client = client::work_client(
        kube_config.clone(),
        &ClientSettings {
            qps: config.kube_qps,
            burst: config.kube_burst,
            request_timeout: config.write_timeout,
            user_agent: user_agent.clone(),
        },
    )?;
    let leadership = if config.leader_election {
        let settings = lease_settings(&config, &identity, &api_server);
        let timeout = Timings::for_duration(settings.duration).request_timeout;
        let lease_client = client::lease_client(kube_config, timeout, &user_agent)?;
        Leadership::spawn(lease_client, settings, metrics.clone())
    } else {
        metrics.set_leader(true);
        Leadership::always()
    };
    let handles = Handles {
        client,
        api_server,
        registry,
        health,
        leader: leadership.subscribe(),
        drain: shutdown.drain_token(),
        abort: shutdown.abort_token(),
    };
    let controller_failed =
        run_controller(handles, fanout_settings(&config, identity), &shutdown).await;
    // Whether the controller stopped for a drain or failed on its own, leave
    // the way a drain does: nobody should wait for our lease to expire.
    shutdown.begin_drain("controller stopped");
    if !shutdown.aborted() {
        shutdown.enter(Phase::WorkDrained);
    }

    match tokio::time::timeout(LEASE_RELEASE_TIMEOUT, leadership.release()).await {
        Ok(Ok(())) => shutdown.enter(Phase::LeaseReleased),
        Ok(Err(err)) => warn!(error = %err, "could not release the leader lease; it will expire"),
        Err(_) => warn!("releasing the leader lease timed out; it will expire"),
    }
    background.cancel();
    if let Err(err) = admin.stop(ADMIN_STOP_TIMEOUT).await {
        warn!(error = %err, "admin server stopped with an error");
    }
    shutdown.enter(Phase::AdminStopped);

    let code = if shutdown.aborted() || controller_failed {
        1
    } else {
        0
    };
    info!(
        exit_code = code,
        drain_seconds = shutdown.elapsed().as_secs_f64(),
        "exiting"
    );
    Ok(ExitCode::from(code))
}

/// Runs the controller until it returns after a drain; if the deadline
/// aborts it, waits [`ABORT_GRACE`] more and then stops waiting. Returns
/// whether it failed.
async fn run_controller(handles: Handles, settings: fanout::Settings, shutdown: &Shutdown) -> bool {
    let abort = shutdown.abort_token();
    let mut controller = tokio::spawn(fanout::run(handles, settings));
    let finished = tokio::select! {
        finished = &mut controller => Some(finished),
        () = abort.cancelled() => tokio::time::timeout(ABORT_GRACE, &mut controller).await.ok(),
    };
    match finished {
        Some(Ok(Ok(()))) => false,
        Some(Ok(Err(err))) => {
            error!(error = %err, "controller failed");
            true
        }
        Some(Err(join)) => {
            error!(error = %join, "controller task panicked");
            true
        }
        None => {
            error!("controller did not stop within {ABORT_GRACE:?} of the abort; abandoning it");
            controller.abort();
            true
        }
    }
}

/// Pings the admin server once it is bound and then reports `admin-self-ping` ready.
fn spawn_self_ping(admin: &AdminServer, health: &Health, stop: CancellationToken) {
    let check = health.readiness_check("admin-self-ping");
    let addr = admin.local_addr();
    tokio::spawn(async move {
        if admin::self_ping(addr, Duration::from_millis(100), stop).await {
            check.set_ready(true);
        }
    });
}

/// Beats the `runtime` heartbeat from a plain timer task: if the async
/// runtime is wedged, the timer does not fire and `/livez` fails.
fn spawn_runtime_heartbeat(health: &Health, stop: CancellationToken) {
    let heartbeat = health.heartbeat("runtime", RUNTIME_MAX_SILENCE);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RUNTIME_TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => heartbeat.beat(),
                () = stop.cancelled() => return,
            }
        }
    });
}

/// The client configuration from `--kubeconfig` or the usual inference.
async fn kube_config(config: &Config) -> Result<kube::Config, AppError> {
    let boxed = |e: kube::config::KubeconfigError| AppError::KubeConfig(Box::new(e));
    match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(boxed)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(boxed)
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| AppError::KubeConfig(Box::new(e))),
    }
}

fn lease_settings(config: &Config, identity: &str, api_server: &str) -> LeaseSettings {
    LeaseSettings {
        name: config.lease_name.clone(),
        namespace: config.lease_namespace(),
        identity: identity.to_owned(),
        duration: config.lease_duration,
        server: api_server.to_owned(),
    }
}

fn fanout_settings(config: &Config, identity: String) -> fanout::Settings {
    fanout::Settings {
        concurrency: config.concurrency,
        fanout_concurrency: config.fanout_concurrency,
        write_timeout: config.write_timeout,
        status_interval: config.status_interval,
        require_consent: config.require_consent,
        fanout_selector: config.fanout_selector.clone(),
        source_access_policy: config.source_access_policy.clone(),
        instance: Some(identity),
        ..fanout::Settings::default()
    }
}
