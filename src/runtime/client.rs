//! The kube clients a controller needs, built from one configuration.
//!
//! - The **work client** carries the client-side rate limit
//!   ([`RateLimitLayer`]) and the request deadline ([`DeadlineLayer`]).
//! - The **lease client** carries the deadline only, and has connections of
//!   its own: Lease renewals never wait in the rate limiter or behind a
//!   connection busy with fan-out writes.
//!
//! For both, kube's built-in retry layer is off: it retries 429 and 503 up
//! to 15 times with waits that grow to minutes, hidden from the caller's
//! deadline and cancellation. Retrying is the caller's decision, made in one
//! place per controller. Both name the process in their `User-Agent`, so
//! the API server's audit log tells replicas apart.

use std::num::NonZeroU32;
use std::time::Duration;

use http::HeaderValue;
use http::header::USER_AGENT;
use kube::client::ClientBuilder;

use super::deadline::DeadlineLayer;
use super::ratelimit::RateLimitLayer;

/// How long a TCP and TLS connection to the API server may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the work client is built with.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// Average requests per second (client-side limit).
    pub qps: NonZeroU32,
    /// Requests allowed in a burst above `qps`.
    pub burst: NonZeroU32,
    /// Deadline of every request that is not a watch.
    pub request_timeout: Duration,
    /// The `User-Agent` header, e.g. `name/1.0 (pod-name)`.
    pub user_agent: String,
}

/// Errors building a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The user agent is not a valid header value.
    #[error("invalid User-Agent {0:?}")]
    UserAgent(String),
    /// kube could not build a client from the configuration.
    #[error("cannot build a Kubernetes client")]
    Build(#[source] kube::Error),
}

/// The client for the controller's work: rate-limited, with a deadline.
pub fn work_client(
    config: kube::Config,
    settings: &ClientSettings,
) -> Result<kube::Client, ClientError> {
    let config = prepared(config, &settings.user_agent)?;
    Ok(ClientBuilder::try_from(config)
        .map_err(ClientError::Build)?
        .with_layer(&RateLimitLayer::new(settings.qps, settings.burst))
        .with_layer(&DeadlineLayer::new(settings.request_timeout))
        .build())
}

/// The client for leader election: a deadline, no rate limit, its own
/// connections.
pub fn lease_client(
    config: kube::Config,
    request_timeout: Duration,
    user_agent: &str,
) -> Result<kube::Client, ClientError> {
    let config = prepared(config, user_agent)?;
    Ok(ClientBuilder::try_from(config)
        .map_err(ClientError::Build)?
        .with_layer(&DeadlineLayer::new(request_timeout))
        .build())
}

fn prepared(mut config: kube::Config, user_agent: &str) -> Result<kube::Config, ClientError> {
    let value = HeaderValue::from_str(user_agent)
        .map_err(|_| ClientError::UserAgent(user_agent.to_owned()))?;
    config.headers.retain(|(name, _)| name != USER_AGENT);
    config.headers.push((USER_AGENT, value));
    config.default_retry = false;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    Ok(config)
}
