//! One `fanout` controller process under measurement: started with
//! `--admin-addr 127.0.0.1:0` and JSON logs (the bound port is read from
//! the log), observed through its admin server and `/proc/<pid>/status`,
//! stopped by a signal. Killed on drop if still running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How a controller is started.
pub struct Launch<'a> {
    /// The binary.
    pub bin: &'a Path,
    /// The admin kubeconfig.
    pub kubeconfig: &'a Path,
    /// Where its log goes (one file per process).
    pub log: PathBuf,
    /// Flags after the defaults below.
    pub args: Vec<String>,
}

/// A running controller.
pub struct Controller {
    child: Child,
    log: PathBuf,
    admin: SocketAddr,
    http: reqwest::Client,
    /// When the process was spawned.
    pub spawned: Instant,
}

impl Controller {
    /// Spawns the process and waits until its admin server listens.
    pub async fn start(launch: Launch<'_>) -> Result<Controller> {
        let log = std::fs::File::create(&launch.log)
            .with_context(|| format!("creating {}", launch.log.display()))?;
        let spawned = Instant::now();
        let child = Command::new(launch.bin)
            .arg("--kubeconfig")
            .arg(launch.kubeconfig)
            .args(["--admin-addr", "127.0.0.1:0", "--log-format", "json"])
            .args(&launch.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", launch.bin.display()))?;
        let mut controller = Controller {
            child,
            log: launch.log,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .context("building the HTTP client")?,
            spawned,
        };
        controller.admin = controller.wait_for_admin_addr().await?;
        Ok(controller)
    }

    async fn wait_for_admin_addr(&mut self) -> Result<SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for line in self.log_lines() {
                if line["message"] == "admin server listening" {
                    let addr = line["addr"]
                        .as_str()
                        .context("listening line without addr")?;
                    return addr.parse().context("parsing the admin address");
                }
            }
            self.fail_if_exited("before listening")?;
            if Instant::now() > deadline {
                bail!("admin server never listened; log {}", self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn fail_if_exited(&mut self, when: &str) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "fanout exited with {status} {when}; log {}",
                self.log.display()
            );
        }
        Ok(())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The HTTP status of `path` on the admin server, `None` if nothing answers.
    pub async fn status(&self, path: &str) -> Option<u16> {
        let url = format!("http://{}{path}", self.admin);
        self.http
            .get(url)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// Polls `/readyz` every `every` until 200; returns when it first answered 200.
    pub async fn wait_ready(&mut self, every: Duration, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.status("/readyz").await == Some(200) {
                return Ok(Instant::now());
            }
            self.fail_if_exited("before ready")?;
            if Instant::now() > deadline {
                bail!("not ready after {timeout:?}; log {}", self.log.display());
            }
            tokio::time::sleep(every).await;
        }
    }

    /// One scrape of `/metrics`.
    pub async fn metrics(&self) -> Result<Metrics> {
        let url = format!("http://{}/metrics", self.admin);
        let body = self.http.get(url).send().await?.text().await?;
        Ok(Metrics(body))
    }

    /// The sum of a series over its labels from `/metrics` (`None` if absent).
    pub async fn metric(&self, name: &str) -> Result<Option<f64>> {
        Ok(self.metrics().await?.get(name))
    }

    /// Polls until `fanout_leader` is 1.
    pub async fn wait_leader(&mut self, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.metric("fanout_leader").await? == Some(1.0) {
                return Ok(Instant::now());
            }
            self.fail_if_exited("before leading")?;
            if Instant::now() > deadline {
                bail!("not leader after {timeout:?}; log {}", self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak resident set size so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        self.proc_status_kib("VmHWM")
    }

    /// Current resident set size (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        self.proc_status_kib("VmRSS")
    }

    fn proc_status_kib(&self, field: &str) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in {path}"))
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let pid = i32::try_from(self.pid()).context("pid out of range")?;
        kill(Pid::from_raw(pid), signal).context("sending a signal to fanout")
    }

    /// Polls (every millisecond) until the process exits; returns its status and when.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<(ExitStatus, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, Instant::now()));
            }
            if Instant::now() > deadline {
                bail!(
                    "still running after {timeout:?}; log {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The exit status if the process has exited (and when that was seen).
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// SIGTERM, then waits for a clean exit (code 0).
    pub async fn stop(mut self) -> Result<()> {
        self.signal(Signal::SIGTERM)?;
        let (status, _) = self.wait_exit(Duration::from_secs(60)).await?;
        if !status.success() {
            bail!(
                "fanout exited with {status} after SIGTERM; log {}",
                self.log.display()
            );
        }
        Ok(())
    }

    /// The log's JSON lines.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Where the log is.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A scrape of the admin server's `/metrics`.
pub struct Metrics(String);

impl Metrics {
    /// The sum of series `name` over its labels (`None` if absent).
    pub fn get(&self, name: &str) -> Option<f64> {
        self.sum(name, |_| true)
    }

    /// Reconciles that did work (every result but `skipped`, which a
    /// standby counts for each request it ignores).
    pub fn reconciles_done(&self) -> f64 {
        self.sum("fanout_reconciles_total", |labels| {
            !labels.contains(r#"result="skipped""#)
        })
        .unwrap_or(0.0)
    }

    fn sum(&self, name: &str, labels: impl Fn(&str) -> bool) -> Option<f64> {
        let values: Vec<f64> = self
            .0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter(|l| labels(l))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }
}
