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

/// The readiness checks the Fanout controller registers: until both are
/// listed and passing, `/readyz` 200 does not mean the caches are synced.
pub const CONTROLLER_CHECKS: [&str; 2] = ["crd-served", "caches-synced"];

/// When a start became ready.
#[derive(Clone, Copy, Debug)]
pub struct Ready {
    /// The first `/readyz` 200, whatever checks it listed.
    pub first_200: Instant,
    /// The first 200 listing the controller's checks as passing.
    pub ready: Instant,
}

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

    /// Polls `/readyz?verbose` every `every` until it answers 200 with the
    /// controller's own checks listed and passing ([`CONTROLLER_CHECKS`]).
    pub async fn wait_ready(&mut self, every: Duration, timeout: Duration) -> Result<Ready> {
        let deadline = Instant::now() + timeout;
        let mut first_200 = None;
        loop {
            if let Some((200, body)) = self.get("/readyz?verbose").await {
                let now = Instant::now();
                first_200.get_or_insert(now);
                if CONTROLLER_CHECKS
                    .iter()
                    .all(|check| body.contains(&format!("[+]{check} ")))
                {
                    return Ok(Ready {
                        first_200: first_200.unwrap_or(now),
                        ready: now,
                    });
                }
            }
            self.fail_if_exited("before ready")?;
            if Instant::now() > deadline {
                bail!("not ready after {timeout:?}; log {}", self.log.display());
            }
            tokio::time::sleep(every).await;
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://{}{path}", self.admin);
        let response = self.http.get(url).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
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

    /// CPU time used so far (user + system), seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(&format!("/proc/{}/stat", self.pid()))
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

/// User + system CPU time of the process whose `stat` file is `path`, seconds.
pub fn cpu_seconds(path: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // Fields after "(comm) ": state is field 3, utime 14, stime 15 (man 5 proc).
    let after = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("no field {} in {path}", i + 3))
    };
    // Clock ticks are 1/100 s on Linux (sysconf(_SC_CLK_TCK), fixed by the ABI).
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}
