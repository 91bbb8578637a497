//! Wiring: the flags become the runtime's configuration and the
//! controller's [`Settings`], and [`kube_lifecycle::Runtime`] runs the
//! controller through its whole lifecycle.

use std::num::NonZeroU32;

use kube_lifecycle::client::{ClientSettings, RateLimit};
use kube_lifecycle::lease::LeaseSettings;
use kube_lifecycle::{Exit, Runtime, RuntimeError};

use crate::config::Config;
use crate::context::Settings;
use crate::controller::{self, READINESS_CHECKS};

/// The prefix of every metric the process exports.
pub const METRICS_PREFIX: &str = "fanout";

/// Errors that stop the process before or instead of a normal drain.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No usable kubeconfig or in-cluster configuration.
    #[error("cannot configure the Kubernetes client")]
    KubeConfig(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The runtime could not start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Runs the controller until a signal drains it; returns how it ended.
pub async fn run(config: Config) -> Result<Exit, AppError> {
    let kube_config = kube_config(&config).await?;
    // Computed once: without a pod name it carries a random suffix.
    let identity = config.identity();
    let version = env!("CARGO_PKG_VERSION");
    let lease = config.leader_election.then(|| LeaseSettings {
        name: config.lease_name.clone(),
        namespace: config.lease_namespace(),
        identity: identity.clone(),
        duration: config.lease_duration,
    });
    let settings = Settings {
        concurrency: config.concurrency,
        fanout_concurrency: config.fanout_concurrency,
        write_timeout: config.write_timeout,
        status_interval: config.status_interval,
        require_consent: config.require_consent,
        fanout_selector: config.fanout_selector.clone(),
        source_access_policy: config.source_access_policy.clone(),
        instance: Some(identity.clone()),
        ..Settings::default()
    };
    let exit = Runtime::new(METRICS_PREFIX, version)
        .admin_addr(config.admin_addr)
        .shutdown_timeout(config.shutdown_timeout)
        .readiness_checks(&READINESS_CHECKS)
        .client(ClientSettings {
            rate_limit: NonZeroU32::new(config.kube_qps).map(|qps| RateLimit {
                qps,
                burst: config.kube_burst,
            }),
            request_timeout: config.write_timeout,
            user_agent: format!("fanout/{version} ({identity})"),
        })
        .leader_election(lease)
        .run(kube_config, move |handles| {
            controller::run(handles, settings)
        })
        .await?;
    Ok(exit)
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
