//! A client-side QPS/burst limit for the kube client, like client-go's
//! `--kube-api-qps`/`--kube-api-burst`: a fan-out to thousands of objects
//! must not flood the API server, however high the write concurrency is set.
//!
//! It is a [`tower::Layer`] for [`kube::client::ClientBuilder::with_layer`],
//! backed by `governor`'s token bucket. The limit applies in `poll_ready`, so
//! a request waits for a token before it is dispatched; kube's client calls
//! the stack behind a buffer, so waiting here queues requests in order
//! instead of rejecting them.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use std::time::Instant;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus::Counter;
use tower::{Layer, Service};

/// Builds [`RateLimited`] services that share one token bucket.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limiter: Arc<DefaultDirectRateLimiter>,
    waited: Option<Counter>,
}

impl RateLimitLayer {
    /// At most `qps` requests a second on average, with bursts of `burst`.
    #[must_use]
    pub fn new(qps: NonZeroU32, burst: NonZeroU32) -> Self {
        let quota = Quota::per_second(qps).allow_burst(burst);
        Self {
            limiter: Arc::new(RateLimiter::direct(quota)),
            waited: None,
        }
    }

    /// Adds the seconds each request waits for a token to `waited`: a limit
    /// that binds shows there, not as slow API answers.
    #[must_use]
    pub fn counting_waits(mut self, waited: Counter) -> Self {
        self.waited = Some(waited);
        self
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            limiter: self.limiter.clone(),
            waited: self.waited.clone(),
            permit: Permit::None,
        }
    }
}

/// A service that takes a token from the shared bucket before each request.
pub struct RateLimited<S> {
    inner: S,
    limiter: Arc<DefaultDirectRateLimiter>,
    waited: Option<Counter>,
    permit: Permit,
}

/// Where the next request stands with the bucket.
enum Permit {
    None,
    Waiting(Pin<Box<dyn Future<Output = ()> + Send>>, Instant),
    Granted,
}

impl<S, Request> Service<Request> for RateLimited<S>
where
    S: Service<Request>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            match &mut self.permit {
                Permit::None => {
                    let limiter = self.limiter.clone();
                    let wait = Box::pin(async move {
                        limiter.until_ready().await;
                    });
                    self.permit = Permit::Waiting(wait, Instant::now());
                }
                Permit::Waiting(wait, since) => {
                    ready!(wait.as_mut().poll(cx));
                    if let Some(waited) = &self.waited {
                        waited.inc_by(since.elapsed().as_secs_f64());
                    }
                    self.permit = Permit::Granted;
                }
                Permit::Granted => return self.inner.poll_ready(cx),
            }
        }
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.permit = Permit::None;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::time::Duration;
    use tower::ServiceExt;

    #[tokio::test]
    async fn requests_beyond_the_burst_wait_for_the_rate() {
        let layer = RateLimitLayer::new(NonZeroU32::new(20).unwrap(), NonZeroU32::new(5).unwrap());
        let mut service = layer.layer(tower::service_fn(|()| async { Ok::<_, Infallible>(()) }));
        let started = Instant::now();
        for _ in 0..5 {
            service.ready().await.unwrap().call(()).await.unwrap();
        }
        for _ in 0..10 {
            service.ready().await.unwrap().call(()).await.unwrap();
        }
        // Past the burst of 5, 10 more requests at 20/s cannot finish in under 0.5s.
        // Only the lower bound is asserted: a busy machine can make it slower, never faster.
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "rate enforced"
        );
    }
}
