//! [`Runtime`]: the lifecycle of a controller process, carried out in one
//! place, in the order [`crate::shutdown`] writes down.
//!
//! 1. Signal handlers first: a SIGTERM during start-up drains, it does not
//!    kill.
//! 2. Every readiness check the controller declared is registered, then the
//!    admin server binds (so `/readyz` is never 200 before the checks
//!    exist) and pings itself; the runtime's heartbeat starts.
//! 3. The clients are built (work and lease, see [`crate::client`]) and the
//!    leader election starts.
//! 4. The controller runs with its [`Handles`] until it returns: after a
//!    drain, or on its own (a failure, which drains the process too).
//! 5. If the drain deadline fires, the controller gets [`ABORT_GRACE`] more
//!    and is then abandoned.
//! 6. The Lease is released (bounded by [`LEASE_RELEASE_TIMEOUT`]).
//! 7. The admin server stops last (bounded by [`ADMIN_STOP_TIMEOUT`]).
//!
//! After the deadline, what is left (grace, release, stop: 4 s) must fit in
//! the margin between the drain deadline and the pod's grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::admin::{self, AdminError, AdminServer, AdminState};
use super::client::{self, ClientError, ClientSettings};
use super::health::Health;
use super::lease::{Leadership, LeaseSettings, Timings};
use super::metrics::RuntimeMetrics;
use super::shutdown::{self, Phase, Shutdown, SignalError};
use super::watch::SyncGate;

/// How long the controller gets to return after the abort token fired
/// before the runtime stops waiting for it.
pub const ABORT_GRACE: Duration = Duration::from_secs(2);
/// Bound on releasing the Lease: a hung API server must not eat the grace
/// period (the Lease then simply expires).
pub const LEASE_RELEASE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on stopping the admin server (in-flight probe or scrape requests).
pub const ADMIN_STOP_TIMEOUT: Duration = Duration::from_secs(1);
/// The readiness check the admin server's self-ping passes.
pub const SELF_PING: &str = "admin-self-ping";
/// The runtime's own liveness heartbeat: a tick every second, failing
/// `/livez` after 30 s of silence (a wedged async runtime).
const RUNTIME_TICK: Duration = Duration::from_secs(1);
const RUNTIME_MAX_SILENCE: Duration = Duration::from_secs(30);

/// Everything the runtime gives to the controller it runs.
///
/// The controller reconciles only while `leader` holds `true`, stops taking
/// work when `drain` fires and drops in-flight work when `abort` fires; see
/// [`crate::shutdown`] for the order.
#[derive(Clone)]
pub struct Handles {
    /// A kube client behind the client-side rate limit and the request
    /// deadline.
    pub client: kube::Client,
    /// The API server's address, for messages that must say where.
    pub api_server: String,
    /// The registry `/metrics` serves: register the controller's series here.
    pub registry: Registry,
    /// Readiness checks and liveness heartbeats and watchdogs.
    pub health: Health,
    /// `true` while this process holds the leader lease.
    pub leader: tokio::sync::watch::Receiver<bool>,
    /// Fires on the first signal: stop intake, finish in-flight work.
    pub drain: CancellationToken,
    /// Fires when the drain deadline passes: drop in-flight work now.
    pub abort: CancellationToken,
}

impl Handles {
    /// A [`SyncGate`] over the readiness check `check` (declared with
    /// [`Runtime::readiness_checks`]): ready once every watch registered
    /// with it has listed.
    pub fn sync_gate(&self, check: &'static str) -> SyncGate {
        SyncGate::new(self.health.readiness_check(check))
    }
}

/// How the process ended, for its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The drain completed: every piece of work finished or was handed
    /// back in order. Exit code 0.
    Drained,
    /// The drain deadline abandoned work, or the controller failed. Exit
    /// code 1.
    Failed,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::Drained => 0,
            Self::Failed => 1,
        }
    }
}

/// Errors that stop the process before or instead of a normal drain.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A metric could not be registered (a name clash: a programming error).
    #[error("cannot register the runtime's metrics")]
    Metrics(#[from] prometheus::Error),
    /// Signal handlers could not be installed.
    #[error(transparent)]
    Signals(#[from] SignalError),
    /// The admin server could not start.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The kube clients could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A controller process' lifecycle, configured with `#[must_use]` setters
/// and carried out by [`Runtime::run`].
///
/// ```no_run
/// use std::time::Duration;
/// use kube_lifecycle::{Exit, Handles, Runtime};
///
/// async fn controller(handles: Handles) -> Result<(), std::io::Error> {
///     // Watch, reconcile while `*handles.leader.borrow()`, return on drain.
///     handles.drain.cancelled().await;
///     Ok(())
/// }
///
/// # async fn main_() -> Result<(), Box<dyn std::error::Error>> {
/// let config = kube::Config::infer().await?;
/// let exit = Runtime::new("stamper", env!("CARGO_PKG_VERSION"))
///     .admin_addr("0.0.0.0:8080".parse()?)
///     .shutdown_timeout(Duration::from_secs(25))
///     .run(config, controller)
///     .await?;
/// std::process::exit(i32::from(exit.code()));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Runtime {
    prefix: String,
    version: String,
    admin_addr: SocketAddr,
    shutdown_timeout: Duration,
    readiness_checks: Vec<&'static str>,
    client: Option<ClientSettings>,
    lease: Option<LeaseSettings>,
}

impl Runtime {
    /// A runtime whose metrics are named `{prefix}_...` and whose build info
    /// reports `version`. Defaults: admin server on `0.0.0.0:8080`, a 25 s
    /// drain deadline, no readiness checks of the controller's, no
    /// client-side rate limit and a 10 s request deadline, no leader
    /// election.
    pub fn new(prefix: &str, version: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            version: version.to_owned(),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            shutdown_timeout: Duration::from_secs(25),
            readiness_checks: Vec::new(),
            client: None,
            lease: None,
        }
    }

    /// Where the admin server listens (`/livez`, `/readyz`, `/metrics`).
    #[must_use]
    pub fn admin_addr(mut self, addr: SocketAddr) -> Self {
        self.admin_addr = addr;
        self
    }

    /// The drain deadline; keep it under the pod's grace period.
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// The readiness checks the controller reports; they exist (failing)
    /// before the admin server first answers.
    #[must_use]
    pub fn readiness_checks(mut self, checks: &[&'static str]) -> Self {
        self.readiness_checks.extend_from_slice(checks);
        self
    }

    /// The work client's rate limit, request deadline and user agent.
    #[must_use]
    pub fn client(mut self, settings: ClientSettings) -> Self {
        self.client = Some(settings);
        self
    }

    /// Compete for this Lease and lead only while holding it; without it
    /// the process always leads (one replica only).
    #[must_use]
    pub fn leader_election(mut self, lease: Option<LeaseSettings>) -> Self {
        self.lease = lease;
        self
    }

    /// Runs the lifecycle around `controller` (see the module
    /// documentation) against the API server `config` names, and returns how
    /// it ended. A second signal exits the process at once, with code 130.
    pub async fn run<F, Fut, E>(
        self,
        config: kube::Config,
        controller: F,
    ) -> Result<Exit, RuntimeError>
    where
        F: FnOnce(Handles) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let registry = Registry::new();
        let health = Health::new();
        let metrics = RuntimeMetrics::register(&registry, &self.prefix, &self.version)?;
        metrics.set_shutdown_timeout(self.shutdown_timeout.as_secs_f64());
        let shutdown = Shutdown::new(health.clone(), metrics.clone());
        let _signals = shutdown::spawn_signal_handler(shutdown.clone(), self.shutdown_timeout)?;
        for check in self.readiness_checks.iter().copied().chain([SELF_PING]) {
            health.readiness_check(check);
        }
        let admin = AdminServer::start(
            self.admin_addr,
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

        let api_server = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_owned();
        let settings = self.client.unwrap_or_else(|| ClientSettings {
            rate_limit: None,
            request_timeout: Duration::from_secs(10),
            user_agent: format!("{}/{}", self.prefix, self.version),
        });
        let client = client::work_client(config.clone(), &settings, &metrics)?;
        let leadership = match self.lease {
            Some(lease) => {
                let timeout = Timings::for_duration(lease.duration).request_timeout;
                let lease_client =
                    client::lease_client(config, timeout, &settings.user_agent, &metrics)?;
                Leadership::spawn(lease_client, lease, api_server.clone(), metrics.clone())
            }
            None => {
                metrics.set_leader(true);
                Leadership::always()
            }
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
        let failed = supervise(controller(handles), &shutdown).await;
        // Whether the controller stopped for a drain or failed on its own,
        // leave the way a drain does: nobody should wait for our Lease to
        // expire.
        shutdown.begin_drain("controller stopped");
        if !shutdown.aborted() {
            shutdown.enter(Phase::WorkDrained);
        }
        match tokio::time::timeout(LEASE_RELEASE_TIMEOUT, leadership.release()).await {
            Ok(Ok(())) => shutdown.enter(Phase::LeaseReleased),
            Ok(Err(err)) => {
                warn!(error = %err, "could not release the leader lease; it will expire")
            }
            Err(_) => warn!("releasing the leader lease timed out; it will expire"),
        }
        background.cancel();
        if let Err(err) = admin.stop(ADMIN_STOP_TIMEOUT).await {
            warn!(error = %err, "admin server stopped with an error");
        }
        shutdown.enter(Phase::AdminStopped);
        let exit = if shutdown.aborted() || failed {
            Exit::Failed
        } else {
            Exit::Drained
        };
        info!(
            exit_code = exit.code(),
            drain_seconds = shutdown.elapsed().as_secs_f64(),
            "exiting"
        );
        Ok(exit)
    }
}

/// Runs the controller until it returns; if the deadline aborts it, waits
/// [`ABORT_GRACE`] more and then abandons it. Returns whether it failed.
async fn supervise<Fut, E>(controller: Fut, shutdown: &Shutdown) -> bool
where
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let abort = shutdown.abort_token();
    let mut controller = tokio::spawn(controller);
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

/// Pings the admin server once it is bound and then reports [`SELF_PING`] ready.
fn spawn_self_ping(admin: &AdminServer, health: &Health, stop: CancellationToken) {
    let check = health.readiness_check(SELF_PING);
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
