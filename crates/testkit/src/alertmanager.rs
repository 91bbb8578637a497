//! Debian's Alertmanager (`prometheus-alertmanager`) on 127.0.0.1, as a test
//! harness: started with one receiver that notifies nobody, its HA cluster
//! listener turned off, queried through its API v2, killed on drop. A
//! [`crate::prometheus::Prometheus`] started with
//! [`start_alerting`](crate::prometheus::Prometheus::start_alerting) sends
//! its alerts here, so a test sees what an on-call's Alertmanager would hold.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The binary of Debian's package (upstream calls it `alertmanager`).
const BINARY: &str = "prometheus-alertmanager";
/// How long Alertmanager may take to answer `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the API is polled while waiting.
const POLL: Duration = Duration::from_millis(200);

/// Every alert routed to a receiver that sends nothing: the test reads what
/// arrived through the API, not through a notification.
const CONFIG: &str = "\
route:
  receiver: none
receivers:
  - name: none
";

/// One alert as Alertmanager's `GET /api/v2/alerts` lists it.
#[derive(Clone, Debug)]
pub struct Alert {
    /// Its labels, `alertname` included.
    pub labels: BTreeMap<String, String>,
    /// Its annotations (summary, description, runbook_url, ...).
    pub annotations: BTreeMap<String, String>,
    /// `active`, `suppressed` or `unprocessed`.
    pub state: String,
    /// When it ends (Prometheus sets it in the future while the alert
    /// fires, and to the resolution time once it resolved).
    pub ends_at: Option<SystemTime>,
}

impl Alert {
    /// Its `alertname` label.
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }

    /// Whether it is still firing: its end lies in the future.
    pub fn firing(&self) -> bool {
        self.ends_at.is_none_or(|end| end > SystemTime::now())
    }

    fn from_json(alert: &serde_json::Value) -> Option<Alert> {
        let strings = |value: &serde_json::Value| -> BTreeMap<String, String> {
            value
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        };
        Some(Alert {
            labels: strings(alert.get("labels")?),
            annotations: strings(&alert["annotations"]),
            state: alert["status"]["state"].as_str()?.to_owned(),
            ends_at: alert["endsAt"].as_str().and_then(parse_rfc3339),
        })
    }
}

/// An RFC 3339 timestamp as Alertmanager writes them (`...Z`).
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let stamp: k8s_openapi::jiff::Timestamp = text.parse().ok()?;
    let nanos = u64::try_from(stamp.as_nanosecond()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos))
}

/// An Alertmanager on 127.0.0.1, killed on drop.
pub struct Alertmanager {
    child: Child,
    addr: SocketAddr,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts Alertmanager and waits until it answers `/-/ready`; panics
    /// with the reason (and its log) if it cannot.
    pub async fn start() -> Alertmanager {
        let dir = tempfile::tempdir().expect("a directory for Alertmanager");
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, CONFIG).expect("write alertmanager.yml");
        // Alertmanager cannot report a port it picked, so take a free one.
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port on 127.0.0.1");
        let log = std::fs::File::create(dir.path().join("alertmanager.log"))
            .expect("create alertmanager.log");
        let child = Command::new(BINARY)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            // Empty: no gossip listener (it would bind 0.0.0.0:9094).
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {BINARY} (Debian package prometheus-alertmanager; \
                     scripts/install-prereqs installs it): {e}"
                )
            });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("an HTTP client");
        let mut alertmanager = Alertmanager {
            child,
            addr,
            http,
            dir,
        };
        alertmanager.wait_ready().await;
        alertmanager
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!("http://{}/-/ready", self.addr);
        loop {
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().is_success()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{BINARY} exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{BINARY} not ready after {READY_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The address of its API (what Prometheus' `alerting:` names).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Alertmanager's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }

    /// What `GET /api/v2/alerts` lists now; `None` if it does not answer.
    pub async fn alerts(&self) -> Option<Vec<Alert>> {
        let url = format!("http://{}/api/v2/alerts", self.addr);
        let response = self.http.get(url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body: serde_json::Value = response.json().await.ok()?;
        Some(
            body.as_array()?
                .iter()
                .filter_map(Alert::from_json)
                .collect(),
        )
    }

    /// The firing alerts named `name`.
    pub async fn firing(&self, name: &str) -> Vec<Alert> {
        self.alerts()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|alert| alert.name() == name && alert.firing())
            .collect()
    }

    /// Polls until an alert named `name` fires; returns it. Panics after
    /// `timeout` with what Alertmanager held and its log.
    pub async fn wait_firing(&self, name: &str, timeout: Duration) -> Alert {
        match self.try_wait_firing(name, timeout).await {
            Ok(alert) => alert,
            Err(held) => panic!("{held}\n{}", self.log()),
        }
    }

    /// [`Alertmanager::wait_firing`], failing with what Alertmanager held
    /// instead of panicking, so the caller can add its own diagnostics.
    pub async fn try_wait_firing(&self, name: &str, timeout: Duration) -> Result<Alert, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(alert) = self.firing(name).await.into_iter().next() {
                return Ok(alert);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{name} did not reach Alertmanager within {timeout:?}; it holds {:#?}",
                    self.alerts().await
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls until no alert named `name` fires (it resolved, or was never
    /// there). Panics after `timeout`.
    pub async fn wait_resolved(&self, name: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(alerts) = self.alerts().await
                && !alerts.iter().any(|a| a.name() == name && a.firing())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} still firing in Alertmanager after {timeout:?}: {:#?}",
                self.alerts().await
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
