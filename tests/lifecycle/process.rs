//! The real `fanout` binary as a child process: started against a
//! kubeconfig with `--admin-addr 127.0.0.1:0` and JSON logs, so the test
//! learns the bound port from the log instead of racing for a free one.

// Shared by several test binaries, each of which uses only a part.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running controller process; killed on drop if still running.
pub struct Controller {
    child: Child,
    log_path: PathBuf,
    admin: SocketAddr,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Controller {
    /// Starts the binary with `args` added to the test defaults, and waits
    /// until its admin server is listening.
    pub async fn start(kubeconfig: &Path, args: &[String]) -> Controller {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("fanout.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fanout"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--admin-addr", "127.0.0.1:0", "--log-format", "json"])
            .args(["--log-filter", "info,fanout=debug"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut controller = Controller {
            child,
            log_path,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            _dir: dir,
        };
        controller.admin = controller.wait_for_admin_addr().await;
        controller
    }

    async fn wait_for_admin_addr(&mut self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for line in self.log_lines() {
                if line["message"] == "admin server listening" {
                    return line["addr"].as_str().unwrap().parse().unwrap();
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "fanout exited with {status} before listening:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "admin server never listened:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where the admin server listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The process id.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }

    /// GETs `path` on the admin server; `None` if nothing answers.
    pub async fn status(&self, path: &str) -> Option<u16> {
        let url = format!("http://{}{path}", self.admin);
        self.http
            .get(url)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// The body of `path` on the admin server.
    pub async fn body(&self, path: &str) -> String {
        let url = format!("http://{}{path}", self.admin);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of an unlabelled series (or the sum over its labels) from `/metrics`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let body = self.body("/metrics").await;
        let values: Vec<f64> = body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// Polls `/readyz` until 200 or panics after `timeout`.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.status("/readyz").await != Some(200) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("fanout exited with {status} before ready:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "not ready after {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until `fanout_leader` is 1, returning how long it took.
    pub async fn wait_leader(&self, timeout: Duration) -> Duration {
        let started = Instant::now();
        while self.metric("fanout_leader").await != Some(1.0) {
            assert!(
                started.elapsed() < timeout,
                "not leader after {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started.elapsed()
    }

    /// Waits for the process to exit, panicking after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The log's JSON lines (lines that are not JSON are skipped).
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The `phase` fields of the "shutdown phase" log lines, in order.
    pub fn phases(&self) -> Vec<String> {
        self.log_lines()
            .iter()
            .filter(|l| l["message"] == "shutdown phase")
            .filter_map(|l| l["phase"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A copy of `kubeconfig` whose server is `server` (e.g. a test proxy),
/// written into `dir`. The CA still matches: the proxy passes TLS through and
/// the serving certificate covers 127.0.0.1.
pub fn kubeconfig_via(kubeconfig: &Path, server: SocketAddr, dir: &Path) -> PathBuf {
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    for cluster in config["clusters"].as_sequence_mut().unwrap() {
        cluster["cluster"]["server"] = format!("https://{server}").into();
    }
    let path = dir.join("kubeconfig-via-proxy");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}
