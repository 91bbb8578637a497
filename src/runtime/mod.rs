//! The domain-free runtime layer. Each module is one concern:
//!
//! - [`shutdown`]: signals → drain → deadline → exit code;
//! - [`health`]: readiness checks, drain flag and liveness heartbeat;
//! - [`admin`]: the axum server for `/livez`, `/readyz`, `/metrics`;
//! - [`lease`]: leader election on a `coordination.k8s.io/v1` Lease;
//! - [`metrics`]: the runtime's own Prometheus series;
//! - [`batch`]: bounded, ordered, cancellable concurrent batches;
//! - [`ratelimit`]: client-side QPS/burst limit for the kube client.

pub mod admin;
pub mod batch;
pub mod health;
pub mod lease;
pub mod metrics;
pub mod ratelimit;
pub mod shutdown;
