//! The Fanout controller, run in-process ([`fanout::controller::run`] with
//! handles made here), against a real API server: copies, consent,
//! conflicts, drift, status order, the lifecycle of a Fanout, admission,
//! and what a hostile tenant can and cannot do.
//!
//! Tests run side by side on one API server: each test's controller only
//! watches Fanouts carrying its own random label, and every object lives in
//! the test's own random namespaces (see [`harness`]).

mod harness;

mod admission;
mod conflicts;
mod consent;
mod copies;
mod cost;
mod drift;
mod lifecycle;
mod ordering;
mod security;
