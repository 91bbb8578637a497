//! The domain-free runtime layer. Each module is one concern:
//!
//! - [`shutdown`]: signals → drain → deadline → exit code;
//! - [`health`]: readiness checks, drain flag and liveness heartbeat;
//! - [`admin`]: the axum server for `/livez`, `/readyz`, `/metrics`;
//! - [`lease`]: leader election on a `coordination.k8s.io/v1` Lease;
//! - [`metrics`]: the runtime's own Prometheus series;
//! - [`batch`]: bounded, ordered, cancellable concurrent batches;
//! - [`ratelimit`]: client-side QPS/burst limit for the kube client;
//! - [`deadline`]: a deadline on every API request that is not a watch;
//! - [`client`]: the work client and the lease client built from those.
//!
//! A controller receives the pieces it needs as one [`Handles`].

pub mod admin;
pub mod batch;
pub mod client;
pub mod deadline;
pub mod health;
pub mod lease;
pub mod metrics;
pub mod ratelimit;
pub mod shutdown;

/// Everything the runtime gives to a controller that plugs into it.
///
/// The controller registers its metrics and readiness checks, reconciles only
/// while `leader` holds `true`, stops taking work when `drain` fires and drops
/// in-flight work when `abort` fires; see [`shutdown`] for the order.
#[derive(Clone)]
pub struct Handles {
    /// A kube client behind the client-side rate limit and the request
    /// deadline.
    pub client: kube::Client,
    /// The API server's address, for messages that must say where.
    pub api_server: String,
    /// The registry `/metrics` serves.
    pub registry: prometheus::Registry,
    /// Readiness checks and liveness heartbeats.
    pub health: health::Health,
    /// `true` while this process holds the leader lease.
    pub leader: tokio::sync::watch::Receiver<bool>,
    /// Fires on the first signal: stop intake, finish in-flight work.
    pub drain: tokio_util::sync::CancellationToken,
    /// Fires when the drain deadline passes: drop in-flight work now.
    pub abort: tokio_util::sync::CancellationToken,
}
