//! The Fanout controller: the custom resource and everything that reconciles it.

pub mod consent;
pub mod copy;
pub mod crd;
pub mod plan;
pub mod status;
pub mod targets;

pub use crd::{Fanout, FanoutSpec, FanoutStatus, crd_yaml};
