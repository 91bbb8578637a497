//! How a Kubernetes controller lives in a cluster, domain-free: plug a
//! controller into [`Runtime`] and it gets probes that mean something, a
//! drain on SIGTERM that loses nothing, leader election that never leaves
//! two leaders, a deadline on every API call, and ordered bounded batches.
//!
//! | module | one concern |
//! |---|---|
//! | [`runtime`] | the lifecycle in order: signals → admin server → clients and leader election → the controller → drain → Lease release → admin stop → exit code |
//! | [`shutdown`] | signals, the drain and its deadline, the phases |
//! | [`health`] | readiness checks, the drain flag, liveness heartbeats and watchdogs |
//! | [`admin`] | the axum server for `/livez`, `/readyz`, `/metrics`, and its self-ping |
//! | [`watch`] | readiness that waits for watches to list once |
//! | [`lease`] | leader election on a `coordination.k8s.io/v1` Lease (client-go's protocol) |
//! | [`client`] | the work client and the lease client |
//! | [`deadline`] | a deadline on every API request that is not a watch |
//! | [`ratelimit`] | a client-side QPS/burst limit |
//! | [`batch`] | bounded, ordered, cancellable concurrent batches |
//! | [`metrics`] | the runtime's own Prometheus series, under the controller's prefix |
//!
//! Data flow: [`Runtime::run`] builds [`Handles`] (a client, the metrics
//! registry, health, the leader flag, the drain and abort tokens) and hands
//! them to the controller's future; the controller watches, reconciles while
//! it leads, stops taking work when `drain` fires and returns; the runtime
//! then releases the Lease, stops the admin server and reports an [`Exit`].
//!
//! There are no cargo features: everything here is what every controller
//! needs.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod batch;
pub mod client;
pub mod deadline;
pub mod health;
pub mod lease;
pub mod metrics;
pub mod ratelimit;
pub mod runtime;
pub mod shutdown;
pub mod watch;

pub use runtime::{Exit, Handles, Runtime, RuntimeError};
