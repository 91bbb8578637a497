//! A client-side QPS/burst limit for the kube client, like client-go's
//! `--kube-api-qps`/`--kube-api-burst`: a 10,000-namespace fan-out must not
//! flood the API server, however high the write concurrency is set.
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

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tower::{Layer, Service};

/// Builds [`RateLimited`] services that share one token bucket.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl RateLimitLayer {
    /// At most `qps` requests a second on average, with bursts of `burst`.
    #[must_use]
    pub fn new(qps: NonZeroU32, burst: NonZeroU32) -> Self {
        let quota = Quota::per_second(qps).allow_burst(burst);
        Self {
            limiter: Arc::new(RateLimiter::direct(quota)),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            limiter: self.limiter.clone(),
            permit: Permit::None,
        }
    }
}

/// A service that takes a token from the shared bucket before each request.
pub struct RateLimited<S> {
    inner: S,
    limiter: Arc<DefaultDirectRateLimiter>,
    permit: Permit,
}

/// Where the next request stands with the bucket.
enum Permit {
    None,
    Waiting(Pin<Box<dyn Future<Output = ()> + Send>>),
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
                    self.permit = Permit::Waiting(Box::pin(async move {
                        limiter.until_ready().await;
                    }));
                }
                Permit::Waiting(wait) => {
                    ready!(wait.as_mut().poll(cx));
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
    use std::time::{Duration, Instant};
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
