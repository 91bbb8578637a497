//! Fanout copies a Secret or ConfigMap from one namespace into many and keeps
//! the copies true. It is also a reference for how a Rust controller lives in a
//! cluster, so the crate is two layers:
//!
//! - [`runtime`]: domain-free lifecycle: admin server with probes and metrics,
//!   signal-driven drain, leader election, ordered concurrent batches, client
//!   rate limits. Any controller can plug into it.
//! - [`fanout`]: the Fanout custom resource and its reconciler, built on the
//!   runtime.
//!
//! [`config`] parses flags; [`app`] wires the two layers together; `main.rs`
//! only maps the outcome to an exit code.
//!
//! Data flow: watches (Fanouts, sources, copies by label, namespaces) feed the
//! kube-runtime controller queue → the leader's reconciler resolves targets →
//! an ordered batch writes copies under a global cap and rate limit → results
//! flow back in list order to a coalescing status writer.

pub mod app;
pub mod config;
pub mod fanout;
pub mod runtime;
