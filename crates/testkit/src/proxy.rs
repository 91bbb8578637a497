//! A fault-injecting HTTPS proxy on 127.0.0.1 between a controller and the
//! real API server.
//!
//! It terminates TLS with the API server's own serving certificate (the
//! testbed's, valid for 127.0.0.1 and trusted through the kubeconfig's CA),
//! reads each request, and either forwards it to the API server over TLS or
//! answers it with a fault. Bearer-token identities (the chart's
//! ServiceAccount, as every binary-level test uses) pass through untouched;
//! client-certificate identities do not, which is why tests put only the
//! controller behind it (or start it with
//! [`FaultProxy::start_with_client_cert`], which forwards every request as
//! the identity it is given).
//!
//! Two kinds of control:
//! - a **mode** for all traffic: [`Mode::Open`] forwards; [`Mode::Hold`]
//!   keeps new requests waiting (answered once the mode is `Open` again);
//!   [`Mode::Stall`] also freezes every response already streaming (a
//!   black-holed network path: nothing moves, nothing fails);
//! - **rules** per request, by method and path: answer 500, 409 or 429 with
//!   `Retry-After`, delay, never answer ([`Fault::BlackHole`]) or reset the
//!   connection ([`Fault::Reset`]); a rule may apply a given number of times.
//!
//! Every request is recorded ([`FaultProxy::requests`]) so a test can count
//! what a controller sent.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

type ProxyBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// What the proxy does with all traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Requests are forwarded (unless a rule says otherwise).
    Open,
    /// New requests wait, unanswered, until the mode is `Open` again.
    Hold,
    /// Like `Hold`, and responses already streaming stop moving too.
    Stall,
}

/// What a rule does to a request it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a Kubernetes `Status` body.
    Status(u16),
    /// Answer 429 with `Retry-After` (and `retryAfterSeconds`) of this many seconds.
    TooManyRequests(u32),
    /// Wait this long, then forward.
    Delay(Duration),
    /// Never answer (the connection stays open).
    BlackHole,
    /// Close the connection without an answer.
    Reset,
}

/// Which requests a rule applies to, and how often.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Only this method, if set (`PUT` for an update, `GET` for reads...).
    pub method: Option<Method>,
    /// Only paths containing this (e.g. `/leases/`).
    pub path: String,
    /// Only watches (`Some(true)`), only non-watches (`Some(false)`), or both.
    pub watch: Option<bool>,
    /// What to do.
    pub fault: Fault,
    /// How many more requests it applies to; `None` for every one.
    pub times: Option<usize>,
}

impl Rule {
    /// A rule for every request with `method` on a path containing `path`.
    pub fn new(method: Option<Method>, path: &str, fault: Fault) -> Rule {
        Rule {
            method,
            path: path.to_owned(),
            watch: None,
            fault,
            times: None,
        }
    }

    /// The same rule, for the next `n` matching requests only.
    pub fn times(mut self, n: usize) -> Rule {
        self.times = Some(n);
        self
    }

    /// The same rule, for non-watch requests only.
    pub fn not_watch(mut self) -> Rule {
        self.watch = Some(false);
        self
    }

    fn matches(&self, method: &Method, uri: &Uri) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && uri.path().contains(&self.path)
            && self.watch.is_none_or(|watch| watch == is_watch(uri))
            && self.times != Some(0)
    }
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// When it arrived.
    pub at: Instant,
    /// Its method.
    pub method: Method,
    /// Its path and query.
    pub uri: String,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
}

struct Shared {
    upstream: Uri,
    client: Client<HttpsConnector<HttpConnector>, Incoming>,
    mode: watch::Sender<Mode>,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
}

/// The running proxy; dropping it closes every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _tasks: JoinSet<()>,
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:<free port>` for the API server at
    /// `upstream` (`https://127.0.0.1:<port>`), with the testbed's PKI in
    /// `pki` (`ca.crt`, `apiserver.crt`, `apiserver.key`).
    pub async fn start(upstream: &str, pki: &Path, mode: Mode) -> FaultProxy {
        FaultProxy::launch(upstream, pki, mode, None).await
    }

    /// [`FaultProxy::start`] for a client that authenticates with a client
    /// certificate (the testbed's admin kubeconfig), which cannot pass
    /// through a proxy that terminates TLS: the proxy presents the
    /// certificate `cert` and key `key` (PEM files, e.g. `pki/admin.crt` and
    /// `pki/admin.key`) to the API server for every request it forwards,
    /// whoever sent it.
    pub async fn start_with_client_cert(
        upstream: &str,
        pki: &Path,
        mode: Mode,
        cert: &Path,
        key: &Path,
    ) -> FaultProxy {
        FaultProxy::launch(upstream, pki, mode, Some((cert, key))).await
    }

    async fn launch(
        upstream: &str,
        pki: &Path,
        mode: Mode,
        client_cert: Option<(&Path, &Path)>,
    ) -> FaultProxy {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(pki.join("apiserver.crt"))
                .expect("read the API server certificate")
                .collect::<Result<_, _>>()
                .expect("parse the API server certificate");
        let key = PrivateKeyDer::from_pem_file(pki.join("apiserver.key"))
            .expect("read the API server key");
        let mut server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("a TLS server configuration");
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(server));

        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(pki.join("ca.crt")).expect("read the CA") {
            roots.add(ca.expect("parse the CA")).expect("add the CA");
        }
        let tls = rustls::ClientConfig::builder().with_root_certificates(roots);
        let tls = match client_cert {
            None => tls.with_no_client_auth(),
            Some((cert, key)) => tls
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(cert)
                        .expect("read the client certificate")
                        .collect::<Result<_, _>>()
                        .expect("parse the client certificate"),
                    PrivateKeyDer::from_pem_file(key).expect("read the client key"),
                )
                .expect("a TLS client configuration with the client certificate"),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream: upstream.parse().expect("the API server URL"),
            client,
            mode: watch::channel(mode).0,
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
        });
        let mut tasks = JoinSet::new();
        let accepting = shared.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let shared = accepting.clone();
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { shared.handle(request).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        FaultProxy {
            addr,
            shared,
            _tasks: tasks,
        }
    }

    /// The address to give the controller instead of the API server's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what the proxy does with all traffic from now on.
    pub fn set(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// Adds a rule; the first matching rule applies.
    pub fn add(&self, rule: Rule) {
        self.shared.rules.lock().unwrap().push(rule);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// Every request seen so far, in order of arrival.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }
}

impl Shared {
    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, std::io::Error> {
        let fault = self.fault_for(request.method(), request.uri());
        self.seen.lock().unwrap().push(Seen {
            at: Instant::now(),
            method: request.method().clone(),
            uri: request.uri().to_string(),
            fault,
        });
        match fault {
            Some(Fault::Status(code)) => return Ok(status_response(code, None)),
            Some(Fault::TooManyRequests(seconds)) => {
                return Ok(status_response(429, Some(seconds)));
            }
            Some(Fault::BlackHole) => std::future::pending::<()>().await,
            Some(Fault::Reset) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "fault proxy: reset",
                ));
            }
            Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
            None => {}
        }
        // Held or stalled: wait, unanswered, until the traffic is open.
        let mut mode = self.mode.subscribe();
        if mode.wait_for(|m| *m == Mode::Open).await.is_err() {
            return Err(std::io::Error::other("fault proxy stopped"));
        }
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        parts.uri = format!(
            "{}{}",
            self.upstream.to_string().trim_end_matches('/'),
            path
        )
        .parse()
        .expect("an upstream URI");
        parts.headers.remove(http::header::HOST);
        let response = self
            .client
            .request(Request::from_parts(parts, body))
            .await
            .map_err(std::io::Error::other)?;
        Ok(response.map(|body| {
            Gated {
                inner: body,
                mode: self.mode.subscribe(),
                waiting: None,
            }
            .boxed_unsync()
        }))
    }

    fn fault_for(&self, method: &Method, uri: &Uri) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        let rule = rules.iter_mut().find(|rule| rule.matches(method, uri))?;
        if let Some(times) = &mut rule.times {
            *times -= 1;
        }
        Some(rule.fault)
    }
}

/// A Kubernetes `Status` answer, as the API server writes one.
fn status_response(code: u16, retry_after: Option<u32>) -> Response<ProxyBody> {
    let reason = match code {
        409 => "Conflict",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        _ => "InternalError",
    };
    let mut details = serde_json::json!({});
    if let Some(seconds) = retry_after {
        details["retryAfterSeconds"] = seconds.into();
    }
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("fault proxy: {code}"), "reason": reason, "details": details, "code": code,
    });
    let mut response = Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(seconds) = retry_after {
        response = response.header(http::header::RETRY_AFTER, seconds.to_string());
    }
    response
        .body(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap()
}

fn is_watch(uri: &Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"))
}

/// A response body that stops moving while the proxy is stalled.
struct Gated {
    inner: Incoming,
    mode: watch::Receiver<Mode>,
    waiting: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl Body for Gated {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.waiting.is_none() && *self.mode.borrow() == Mode::Stall {
            let mut mode = self.mode.clone();
            self.waiting = Some(Box::pin(async move {
                let _ = mode.wait_for(|m| *m != Mode::Stall).await;
            }));
        }
        if let Some(waiting) = &mut self.waiting {
            std::task::ready!(waiting.as_mut().poll(cx));
            self.waiting = None;
        }
        std::pin::Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as Self::Error)
    }
}
