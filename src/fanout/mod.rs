//! The Fanout controller: the custom resource and everything that reconciles it.
