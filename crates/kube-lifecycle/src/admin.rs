//! The admin server: `/livez`, `/readyz` and `/metrics` on one port.
//!
//! It is the first thing started and the last thing stopped, so kubelet can
//! watch the whole drain. After binding, it pings itself through the network
//! stack and only then reports the `admin-self-ping` readiness check: a
//! process whose port is bound but whose router does not answer is not
//! ready.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, body::Body};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::health::{Health, Report};
use super::metrics::RuntimeMetrics;

/// What the handlers read.
#[derive(Clone, Debug)]
pub struct AdminState {
    /// Probe state.
    pub health: Health,
    /// The registry `/metrics` serves.
    pub registry: Registry,
    /// Runtime series refreshed at scrape time.
    pub metrics: RuntimeMetrics,
}

/// Errors starting or running the admin server.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address could not be bound (in use, not local, no permission).
    #[error("cannot bind the admin server to {addr}")]
    Bind {
        /// The address from `--admin-addr`.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while serving.
    #[error("admin server failed")]
    Serve(#[source] std::io::Error),
}

/// A running admin server.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<Result<(), std::io::Error>>,
}

impl AdminServer {
    /// Binds `addr` and starts serving. Binding happens here, before any
    /// other start-up work, so a taken port fails the process at once.
    pub async fn start(addr: SocketAddr, state: AdminState) -> Result<Self, AdminError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        let stop = CancellationToken::new();
        let app = Router::new()
            .route("/livez", get(livez))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(state);
        let shutdown = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        });
        info!(addr = %local_addr, "admin server listening");
        Ok(Self {
            local_addr,
            stop,
            task,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets in-flight requests finish, and waits (bounded).
    pub async fn stop(self, grace: Duration) -> Result<(), AdminError> {
        self.stop.cancel();
        match tokio::time::timeout(grace, self.task).await {
            Ok(Ok(served)) => served.map_err(AdminError::Serve),
            Ok(Err(join)) => Err(AdminError::Serve(std::io::Error::other(join))),
            Err(_) => {
                warn!("admin server did not stop within {grace:?}; leaving it");
                Ok(())
            }
        }
    }
}

/// Pings `/livez` through the network stack until it answers 200, then
/// returns; a wildcard bind is pinged on loopback. Retries every
/// `interval` until `stop` fires.
pub async fn self_ping(addr: SocketAddr, interval: Duration, stop: CancellationToken) -> bool {
    let target = if addr.ip().is_unspecified() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
    } else {
        addr
    };
    loop {
        match get_status(target, "/livez").await {
            Ok(StatusCode::OK) => {
                info!(%target, "admin server answered its self-ping");
                return true;
            }
            Ok(status) => debug!(%status, "self-ping not yet OK"),
            Err(err) => debug!(error = %err, "self-ping failed; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => return false,
        }
    }
}

/// One HTTP/1.1 GET with hyper; only the status matters.
async fn get_status(addr: SocketAddr, path: &str) -> Result<StatusCode, hyper::Error> {
    let stream = match TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(_) => return Ok(StatusCode::SERVICE_UNAVAILABLE),
    };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new());
    let status = match request {
        Ok(request) => sender.send_request(request).await?.status(),
        Err(_) => StatusCode::BAD_REQUEST,
    };
    connection.abort();
    Ok(status)
}

async fn livez(State(state): State<AdminState>, RawQuery(query): RawQuery) -> Response {
    probe_response("livez", &state.health.liveness(), query)
}

async fn readyz(State(state): State<AdminState>, RawQuery(query): RawQuery) -> Response {
    probe_response("readyz", &state.health.readiness(), query)
}

/// Kubernetes-style probe body: `ok`, or with `?verbose` one `[+]`/`[-]`
/// line per check, as kube-apiserver's own `/readyz?verbose` does.
fn probe_response(probe: &str, report: &Report, query: Option<String>) -> Response {
    let status = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let verbose =
        query.is_some_and(|q| q.split('&').any(|p| p.split('=').next() == Some("verbose")));
    let mut body = String::new();
    if verbose || !report.ok {
        for check in &report.checks {
            let mark = if check.ok { '+' } else { '-' };
            let verdict = if check.ok { "ok" } else { "failed" };
            body.push_str(&format!("[{mark}]{} {verdict}\n", check.name));
        }
        let verdict = if report.ok { "passed" } else { "failed" };
        body.push_str(&format!("{probe} check {verdict}\n"));
    } else {
        body.push_str("ok\n");
    }
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    state.metrics.refresh(&state.health);
    let encoder = TextEncoder::new();
    let mut buffer = Vec::new();
    match encoder.encode(&state.registry.gather(), &mut buffer) {
        Ok(()) => Response::builder()
            .header(header::CONTENT_TYPE, encoder.format_type())
            .body(Body::from(buffer))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn server() -> (AdminServer, Health) {
        let registry = Registry::new();
        let health = Health::new();
        let metrics = RuntimeMetrics::register(&registry, "test", "0.0.0").unwrap();
        let state = AdminState {
            health: health.clone(),
            registry,
            metrics,
        };
        let server = AdminServer::start("127.0.0.1:0".parse().unwrap(), state)
            .await
            .unwrap();
        (server, health)
    }

    #[tokio::test]
    async fn probes_follow_health_and_liveness_survives_a_drain() {
        let (server, health) = server().await;
        let addr = server.local_addr();
        let check = health.readiness_check("caches-synced");
        assert_eq!(
            get_status(addr, "/readyz").await.unwrap(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        check.set_ready(true);
        assert_eq!(get_status(addr, "/readyz").await.unwrap(), StatusCode::OK);
        assert_eq!(get_status(addr, "/livez").await.unwrap(), StatusCode::OK);
        health.begin_drain();
        assert_eq!(
            get_status(addr, "/readyz").await.unwrap(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get_status(addr, "/livez").await.unwrap(), StatusCode::OK);
        server.stop(Duration::from_secs(5)).await.unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "stopped server no longer listens"
        );
    }

    #[tokio::test]
    async fn self_ping_succeeds_against_a_wildcard_bind_via_loopback() {
        let (server, _) = server().await;
        let wildcard = SocketAddr::from(([0, 0, 0, 0], server.local_addr().port()));
        assert!(
            self_ping(
                wildcard,
                Duration::from_millis(10),
                CancellationToken::new()
            )
            .await
        );
        server.stop(Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test]
    async fn a_taken_port_is_a_bind_error_naming_the_address() {
        let (server, _) = server().await;
        let state = AdminState {
            health: Health::new(),
            registry: Registry::new(),
            metrics: RuntimeMetrics::register(&Registry::new(), "test", "0.0.0").unwrap(),
        };
        let err = AdminServer::start(server.local_addr(), state)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(&server.local_addr().to_string()),
            "{err}"
        );
        server.stop(Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test]
    async fn verbose_lists_each_check() {
        let report = Report {
            ok: false,
            checks: vec![
                crate::health::CheckResult {
                    name: "a".into(),
                    ok: true,
                },
                crate::health::CheckResult {
                    name: "b".into(),
                    ok: false,
                },
            ],
        };
        let response = probe_response("readyz", &report, Some("verbose".into()));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&body),
            "[+]a ok\n[-]b failed\nreadyz check failed\n"
        );
    }
}
