//! Fanout copies a Secret or ConfigMap from one namespace into many and
//! keeps the copies true. It runs on [`kube_lifecycle`], which gives it its
//! probes, drain, leader election and API deadlines; this crate is the
//! domain.
//!
//! One target write, from a source edit to the status patch, in the order
//! the files are met:
//!
//! 1. [`watches`]: the source's watch event becomes a reconcile request for
//!    the Fanouts that name it ([`index`] finds them);
//! 2. [`reconcile`]: the leadership gate and finalizer, then the pass: read
//!    the source, resolve and classify the targets, run the ordered batch of
//!    writes, prune, write the final status;
//! 3. [`targets`]: resolution order and consent;
//! 4. [`write`]: one target's write under the write cap (and letting go of
//!    copies);
//! 5. [`plan`]: the decision (keep, write, conflict) from what the copy must
//!    hold ([`copy`]) and what is there ([`found`], remembered in
//!    [`cache`]);
//! 6. [`status`]: the ordered status, written at most once per interval.
//!
//! Underneath them: [`api`] (every API call: deadline, retry, cancellation),
//! [`context`] (what reconciles share, and the settings), [`crd`] (the
//! resource and its admission rules), [`metrics`], [`events`], [`guard`] (is
//! the source-access admission policy in force), [`blocked`] (targets
//! blocked by objects a Fanout may not touch, watched instead of polled),
//! [`namespaces`] (the compact record of each namespace that consent and
//! selectors read). Above them: [`controller`]
//! (the run loop: watches into kube-runtime's applier, the drain) and
//! [`app`] (flags into the runtime and the controller); [`config`] parses
//! the flags. The modules form layers with no import cycle: `crd` → `api`,
//! `copy` → `found` → `plan`, `cache` → `metrics` → `status` → `targets` → `namespaces` →
//! `index`, `blocked` → `context` → `write`, `watches` → `reconcile` → `controller` →
//! `app`.

pub mod api;
pub mod app;
pub mod blocked;
pub mod cache;
pub mod config;
pub mod context;
pub mod controller;
pub mod copy;
pub mod crd;
pub mod events;
pub mod found;
pub mod guard;
pub mod index;
pub mod metrics;
pub mod namespaces;
pub mod plan;
pub mod reconcile;
pub mod status;
pub mod targets;
pub mod watches;
pub mod write;

pub use crd::{Fanout, FanoutSpec, FanoutStatus, crd_yaml};
