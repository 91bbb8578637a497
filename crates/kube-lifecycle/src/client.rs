//! The kube clients a controller needs, built from one configuration.
//!
//! - The **work client** carries the client-side rate limit
//!   ([`RateLimitLayer`]) and the request deadline ([`DeadlineLayer`]).
//! - The **lease client** carries the deadline only, and has connections of
//!   its own: Lease renewals never wait in the rate limiter or behind a
//!   connection busy with fan-out writes.
//!
//! Both count every request they make by method and answer
//! ([`RuntimeMetrics::api_request`]): the API request rate a dashboard shows
//! and the 429s an alert watches.
//!
//! For both, kube's built-in retry layer is off: it retries 429 and 503 up
//! to 15 times with waits that grow to minutes, hidden from the caller's
//! deadline and cancellation. Retrying is the caller's decision, made in one
//! place per controller. Both name the process in their `User-Agent`, so
//! the API server's audit log tells replicas apart.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::USER_AGENT;
use http::{HeaderValue, Request, Response};
use kube::client::ClientBuilder;
use tower::{Layer, Service};

use super::deadline::DeadlineLayer;
use super::metrics::RuntimeMetrics;
use super::ratelimit::RateLimitLayer;

/// How long a TCP and TLS connection to the API server may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the work client is built with.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// The client-side rate limit; `None`: none, the API server's Priority
    /// and Fairness sets the pace (what SIG API Machinery recommends, and
    /// controller-runtime's default since v0.21).
    pub rate_limit: Option<RateLimit>,
    /// Deadline of every request that is not a watch.
    pub request_timeout: Duration,
    /// The `User-Agent` header, e.g. `name/1.0 (pod-name)`.
    pub user_agent: String,
}

/// A client-side rate limit (see [`RateLimitLayer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Average requests per second.
    pub qps: NonZeroU32,
    /// Requests allowed in a burst above `qps`.
    pub burst: NonZeroU32,
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
    metrics: &RuntimeMetrics,
) -> Result<kube::Client, ClientError> {
    let config = prepared(config, &settings.user_agent)?;
    let limit = settings.rate_limit.map(|limit| {
        RateLimitLayer::new(limit.qps, limit.burst).counting_waits(metrics.rate_limit_wait())
    });
    Ok(ClientBuilder::try_from(config)
        .map_err(ClientError::Build)?
        .with_layer(&tower::util::option_layer(limit))
        .with_layer(&DeadlineLayer::new(settings.request_timeout))
        .with_layer(&CountLayer(metrics.clone()))
        .build())
}

/// The client for leader election: a deadline, no rate limit, its own
/// connections.
pub fn lease_client(
    config: kube::Config,
    request_timeout: Duration,
    user_agent: &str,
    metrics: &RuntimeMetrics,
) -> Result<kube::Client, ClientError> {
    let config = prepared(config, user_agent)?;
    Ok(ClientBuilder::try_from(config)
        .map_err(ClientError::Build)?
        .with_layer(&DeadlineLayer::new(request_timeout))
        .with_layer(&CountLayer(metrics.clone()))
        .build())
}

/// Counts each request by method and answer.
#[derive(Clone, Debug)]
struct CountLayer(RuntimeMetrics);

impl<S> Layer<S> for CountLayer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The service [`CountLayer`] makes.
#[derive(Clone, Debug)]
struct Counted<S> {
    inner: S,
    metrics: RuntimeMetrics,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Counted<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let method = request.method().as_str().to_owned();
        let metrics = self.metrics.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let code = match &response {
                Ok(response) => code_class(response.status().as_u16()),
                Err(_) => "error",
            };
            metrics.api_request(&method, code);
            response
        })
    }
}

/// The `code` label: the class, with 409 and 429 on their own (a stale view
/// and the server's rate limit are worth telling apart).
fn code_class(status: u16) -> &'static str {
    match status {
        409 => "409",
        429 => "429",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
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
