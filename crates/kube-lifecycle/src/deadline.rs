//! A deadline on every API request that is not a watch.
//!
//! The kube client has no read timeout by default: a GET, PATCH or LIST on
//! a half-open connection (a frozen API server, a black-holed network path)
//! waits forever, and whatever waits on it — a readiness check, a finalizer
//! patch, a drain — waits too. Wrapping calls one by one misses the ones made
//! inside libraries (kube-runtime's finalizer helper, the event recorder,
//! the watcher's paginated lists), so the deadline lives in the client
//! itself, as a [`tower::Layer`] for
//! [`kube::client::ClientBuilder::with_layer`]:
//!
//! - a request whose query says `watch=true` (or `watch=1`) is left alone: a
//!   watch is meant to stay open, and kube-runtime's watcher has its own idle
//!   timeout;
//! - any other request must produce its response head *and* its whole body
//!   within the timeout, measured from when it is sent (after any client-side
//!   rate limit let it through); past it, the call fails with
//!   [`RequestTimedOut`], which callers treat like any transient failure.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Layer, Service};

/// Adds [`WithDeadline`] to a kube client's service stack.
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    timeout: Duration,
}

impl DeadlineLayer {
    /// Every non-watch request must complete within `timeout`.
    #[must_use]
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = WithDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithDeadline {
            inner,
            timeout: self.timeout,
        }
    }
}

/// A service that fails non-watch requests that outlive their deadline.
#[derive(Clone, Debug)]
pub struct WithDeadline<S> {
    inner: S,
    timeout: Duration,
}

/// The error of a request that outlived its deadline.
#[derive(Debug)]
pub struct RequestTimedOut {
    after: Duration,
}

impl fmt::Display for RequestTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the API server did not answer within {:?}", self.after)
    }
}

impl std::error::Error for RequestTimedOut {}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for WithDeadline<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    ResBody: Body + Unpin,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<DeadlineBody<ResBody>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let timeout = self.timeout;
        let deadline = (!is_watch(request.uri().query())).then(|| Instant::now() + timeout);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, response)
                    .await
                    .map_err(|_| BoxError::from(RequestTimedOut { after: timeout }))?,
                None => response.await,
            }
            .map_err(Into::into)?;
            Ok(response.map(|body| DeadlineBody {
                inner: body,
                timer: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
                timeout,
            }))
        })
    }
}

/// Whether a request's query asks for a watch.
fn is_watch(query: Option<&str>) -> bool {
    query.is_some_and(|query| {
        query
            .split('&')
            .any(|pair| matches!(pair, "watch=true" | "watch=1"))
    })
}

/// A response body that fails once the request's deadline has passed.
#[derive(Debug)]
pub struct DeadlineBody<B> {
    inner: B,
    timer: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
}

impl<B> Body for DeadlineBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if let Some(timer) = &mut this.timer {
            ready!(timer.as_mut().poll(cx));
            return Poll::Ready(Some(Err(RequestTimedOut {
                after: this.timeout,
            }
            .into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};
    use tower::ServiceExt;

    /// A body that never sends anything.
    type Silent = StreamBody<futures::stream::Pending<Result<Frame<Bytes>, std::io::Error>>>;

    /// Its answer: a head at once.
    type Answer = futures::future::Ready<Result<Response<Silent>, std::io::Error>>;

    /// A server that answers the head at once and then never sends the body.
    fn stalled_body_server() -> tower::util::ServiceFn<fn(Request<()>) -> Answer> {
        tower::service_fn(|_req: Request<()>| {
            futures::future::ready(Ok(Response::new(StreamBody::new(
                futures::stream::pending(),
            ))))
        })
    }

    fn request(uri: &str) -> Request<()> {
        Request::get(uri).body(()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_without_an_answer_fails_at_its_deadline() {
        let hung = tower::service_fn(|_req: Request<()>| async {
            futures::future::pending::<Result<Response<Full<Bytes>>, std::io::Error>>().await
        });
        let service = DeadlineLayer::new(Duration::from_secs(10)).layer(hung);
        let started = Instant::now();
        let error = service
            .oneshot(request("/api/v1/namespaces/a/secrets/b"))
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(
            error.to_string().contains("did not answer within 10s"),
            "{error}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_coming_fails_at_the_same_deadline() {
        let service = DeadlineLayer::new(Duration::from_secs(10)).layer(stalled_body_server());
        let started = Instant::now();
        let response = service
            .oneshot(request("/api/v1/secrets?limit=500"))
            .await
            .unwrap();
        let error = response.into_body().collect().await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(error.to_string().contains("did not answer"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_is_left_open() {
        let service = DeadlineLayer::new(Duration::from_secs(10)).layer(stalled_body_server());
        let response = service
            .oneshot(request("/api/v1/secrets?watch=true&resourceVersion=1"))
            .await
            .unwrap();
        let mut body = response.into_body();
        let waited = tokio::time::timeout(Duration::from_secs(3600), body.frame()).await;
        assert!(waited.is_err(), "still open after an hour");
    }

    #[test]
    fn only_watch_queries_count_as_watches() {
        assert!(is_watch(Some("watch=true")));
        assert!(is_watch(Some("labelSelector=a%3Db&watch=1")));
        assert!(!is_watch(Some("watch=false")));
        assert!(!is_watch(Some("allowWatchBookmarks=true")));
        assert!(!is_watch(None));
    }
}
