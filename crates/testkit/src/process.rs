//! A real controller binary as a child process: started against a
//! kubeconfig with `--admin-addr 127.0.0.1:0` and JSON logs, so the caller
//! learns the bound port from the log instead of racing for a free one.
//! Any controller built on `kube-lifecycle` takes these flags (`fanout`,
//! the examples).
//!
//! Tests and the benchmark share it, and want failures told differently:
//! - the plain methods ([`Controller::start`], [`Controller::wait_ready`],
//!   [`Controller::wait_leader`], [`Controller::wait_exit`],
//!   [`Controller::signal`], [`Controller::metrics`], ...) panic with the
//!   whole log, which is what a failing test should print;
//! - their `try_` twins return an [`Error`] that names the log file (a
//!   benchmark's logs are kept and large) and keeps the log's text, and
//!   some take more: where the log goes and how verbose it is ([`Launch`]),
//!   the readiness checks to wait for and how often to poll, and the
//!   instants things happened at, for timing;
//! - what is read from `/proc` ([`Controller::rss_kib`],
//!   [`Controller::peak_rss_kib`], [`Controller::cpu_seconds`]) fails with an
//!   `io::Error` once the process is gone.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A controller binary and the prefix of the metrics it exports.
#[derive(Clone, Debug)]
pub struct Binary {
    /// Its path (`env!("CARGO_BIN_EXE_<name>")` in the crate that builds it).
    pub path: PathBuf,
    /// The prefix of its metrics (`fanout` for `fanout_leader`).
    pub metrics_prefix: &'static str,
}

/// The `--log-filter` of [`Launch::new`]: debug for the controller and its runtime.
pub const TEST_LOG_FILTER: &str = "info,fanout=debug,kube_lifecycle=debug";

/// How often the log is read for the admin server's address.
const ADMIN_ADDR_POLL: Duration = Duration::from_millis(5);
/// How long a process may take to open its admin server.
const ADMIN_ADDR_TIMEOUT: Duration = Duration::from_secs(30);
/// How often [`Controller::wait_ready`] polls `/readyz`.
const READY_POLL: Duration = Duration::from_millis(50);
/// How often the leader metric is scraped while waiting for it.
const LEADER_POLL: Duration = Duration::from_millis(10);
/// How often the process is checked while waiting for its exit.
const EXIT_POLL: Duration = Duration::from_millis(1);
/// How long [`Controller::try_stop`] waits for the drain.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// How a controller is started: the binary, the kubeconfig and the flags
/// added to the defaults, where its log goes and how verbose it is.
#[derive(Clone, Debug)]
pub struct Launch<'a> {
    /// The binary.
    pub binary: &'a Binary,
    /// The kubeconfig it is given (`--kubeconfig`).
    pub kubeconfig: &'a Path,
    /// Flags after the defaults (`--admin-addr`, `--log-format`, `--log-filter`).
    pub args: &'a [String],
    /// Where its log (stderr) goes; `None` for a file in a temporary
    /// directory removed with the [`Controller`].
    pub log: Option<PathBuf>,
    /// Its `--log-filter` ([`TEST_LOG_FILTER`] unless set).
    pub log_filter: &'a str,
}

impl<'a> Launch<'a> {
    /// `binary` against `kubeconfig` with `args`, logging at test verbosity
    /// into a temporary file.
    pub fn new(binary: &'a Binary, kubeconfig: &'a Path, args: &'a [String]) -> Launch<'a> {
        Launch {
            binary,
            kubeconfig,
            args,
            log: None,
            log_filter: TEST_LOG_FILTER,
        }
    }

    /// The same, logging into `path` (created or truncated; kept after the process).
    pub fn log_to(mut self, path: PathBuf) -> Launch<'a> {
        self.log = Some(path);
        self
    }

    /// The same, with `--log-filter filter`.
    pub fn log_filter(mut self, filter: &'a str) -> Launch<'a> {
        self.log_filter = filter;
        self
    }
}

/// Why a controller did not do what was waited for: what happened, and
/// the log (its path, and its text when the error was made).
#[derive(Debug)]
pub struct Error {
    message: String,
    log_path: PathBuf,
    log: String,
}

impl Error {
    /// What happened (e.g. "not ready after 30s").
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The controller's log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The log's text when the error was made.
    pub fn log(&self) -> &str {
        &self.log
    }

    /// Panics with the message and the whole log: how a test fails.
    fn panic(self) -> ! {
        panic!("{}:\n{}", self.message, self.log)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; log {}", self.message, self.log_path.display())
    }
}

impl std::error::Error for Error {}

/// When a start became ready ([`Controller::try_wait_ready`]).
#[derive(Clone, Copy, Debug)]
pub struct Ready {
    /// The first `/readyz` 200, whatever checks it listed.
    pub first_200: Instant,
    /// The first 200 that listed every awaited check as passing (the same
    /// instant as `first_200` when no check was named).
    pub ready: Instant,
}

/// A running controller process; killed on drop if still running.
pub struct Controller {
    prefix: &'static str,
    child: Mutex<Child>,
    spawned: Instant,
    log_path: PathBuf,
    admin: SocketAddr,
    http: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

impl Controller {
    /// Starts `binary` with `args` added to the test defaults, and waits
    /// until its admin server is listening; panics with the log if it does not.
    pub async fn start(binary: &Binary, kubeconfig: &Path, args: &[String]) -> Controller {
        Controller::try_start(Launch::new(binary, kubeconfig, args))
            .await
            .unwrap_or_else(|e| e.panic())
    }

    /// Starts a controller as `launch` says, and waits until its admin
    /// server is listening (the address is read from its log).
    pub async fn try_start(launch: Launch<'_>) -> Result<Controller, Error> {
        let (dir, log_path) = match launch.log {
            Some(path) => (None, path),
            None => {
                let dir = tempfile::tempdir().map_err(|e| Error {
                    message: format!("creating a directory for the log: {e}"),
                    log_path: PathBuf::new(),
                    log: String::new(),
                })?;
                let path = dir.path().join("controller.log");
                (Some(dir), path)
            }
        };
        let early = |message: String| Error {
            message,
            log_path: log_path.clone(),
            log: String::new(),
        };
        let log = std::fs::File::create(&log_path)
            .map_err(|e| early(format!("creating {}: {e}", log_path.display())))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| early(format!("building the HTTP client: {e}")))?;
        let binary = launch.binary;
        let spawned = Instant::now();
        let child = Command::new(&binary.path)
            .arg("--kubeconfig")
            .arg(launch.kubeconfig)
            .args(["--admin-addr", "127.0.0.1:0", "--log-format", "json"])
            .args(["--log-filter", launch.log_filter])
            .args(launch.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| early(format!("starting {}: {e}", binary.path.display())))?;
        let mut controller = Controller {
            prefix: binary.metrics_prefix,
            child: Mutex::new(child),
            spawned,
            log_path,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            http,
            _dir: dir,
        };
        controller.admin = controller.wait_for_admin_addr().await?;
        Ok(controller)
    }

    async fn wait_for_admin_addr(&self) -> Result<SocketAddr, Error> {
        let deadline = Instant::now() + ADMIN_ADDR_TIMEOUT;
        loop {
            for line in self.log_lines() {
                if line["message"] == "admin server listening" {
                    let addr = line["addr"].as_str().unwrap_or_default();
                    return addr
                        .parse()
                        .map_err(|e| self.error(format!("admin address {addr:?}: {e}")));
                }
            }
            self.fail_if_exited("before listening")?;
            if Instant::now() > deadline {
                return Err(self.error("admin server never listened".to_owned()));
            }
            tokio::time::sleep(ADMIN_ADDR_POLL).await;
        }
    }

    /// An error about this process, with its log as it is now.
    fn error(&self, message: String) -> Error {
        Error {
            message,
            log_path: self.log_path.clone(),
            log: self.log(),
        }
    }

    fn fail_if_exited(&self, when: &str) -> Result<(), Error> {
        match self.try_exit_status()? {
            Some(status) => Err(self.error(format!("the controller exited with {status} {when}"))),
            None => Ok(()),
        }
    }

    /// Where the admin server listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The process id.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.lock().unwrap().id() as i32)
    }

    /// When the process was spawned.
    pub fn spawned(&self) -> Instant {
        self.spawned
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        self.try_signal(signal).unwrap_or_else(|e| e.panic());
    }

    /// Sends `signal` to the process.
    pub fn try_signal(&self, signal: Signal) -> Result<(), Error> {
        kill(self.pid(), signal).map_err(|e| self.error(format!("sending {signal}: {e}")))
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

    /// The status and body of `path` on the admin server; `None` if nothing answers.
    pub async fn response(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://{}{path}", self.admin);
        let response = self.http.get(url).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
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

    /// One scrape of `/metrics`.
    pub async fn metrics(&self) -> Metrics {
        self.try_metrics().await.unwrap_or_else(|e| e.panic())
    }

    /// One scrape of `/metrics`.
    pub async fn try_metrics(&self) -> Result<Metrics, Error> {
        let url = format!("http://{}/metrics", self.admin);
        let scrape = async { self.http.get(url).send().await?.text().await };
        match scrape.await {
            Ok(text) => Ok(Metrics {
                prefix: self.prefix,
                text,
            }),
            Err(e) => Err(self.error(format!("scraping /metrics: {e}"))),
        }
    }

    /// The value of an unlabelled series (or the sum over its labels) from `/metrics`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        self.metrics().await.get(name)
    }

    /// Polls `/readyz` until 200 or panics after `timeout`.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        self.try_wait_ready(&[], READY_POLL, timeout)
            .await
            .unwrap_or_else(|e| e.panic());
    }

    /// Polls `/readyz` every `every` until it answers 200 and, if `checks`
    /// are named, `/readyz?verbose` lists each of them as passing (until a
    /// controller has registered its own checks, a 200 says nothing about
    /// its caches). Fails after `timeout` or if the process exits.
    pub async fn try_wait_ready(
        &self,
        checks: &[&str],
        every: Duration,
        timeout: Duration,
    ) -> Result<Ready, Error> {
        let path = if checks.is_empty() {
            "/readyz"
        } else {
            "/readyz?verbose"
        };
        let deadline = Instant::now() + timeout;
        let mut first_200 = None;
        loop {
            if let Some((200, body)) = self.response(path).await {
                let now = Instant::now();
                let first_200 = *first_200.get_or_insert(now);
                if checks
                    .iter()
                    .all(|check| body.contains(&format!("[+]{check} ")))
                {
                    return Ok(Ready {
                        first_200,
                        ready: now,
                    });
                }
            }
            self.fail_if_exited("before ready")?;
            if Instant::now() > deadline {
                return Err(self.error(format!("not ready after {timeout:?}")));
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Polls until `<prefix>_leader` is 1, returning how long it took.
    pub async fn wait_leader(&self, timeout: Duration) -> Duration {
        let started = Instant::now();
        let leading = self
            .try_wait_leader(timeout)
            .await
            .unwrap_or_else(|e| e.panic());
        leading - started
    }

    /// Polls until `<prefix>_leader` is 1, returning when it was seen.
    /// Fails after `timeout` or if the process exits.
    pub async fn try_wait_leader(&self, timeout: Duration) -> Result<Instant, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.try_metrics().await?.leader() {
                return Ok(Instant::now());
            }
            self.fail_if_exited("before leading")?;
            if Instant::now() > deadline {
                return Err(self.error(format!("not leader after {timeout:?}")));
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }

    /// Waits for the process to exit, panicking after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let (status, _) = self
            .try_wait_exit(timeout)
            .await
            .unwrap_or_else(|e| e.panic());
        status
    }

    /// Waits (checking every millisecond) for the process to exit; returns
    /// its status and when the exit was seen.
    pub async fn try_wait_exit(&self, timeout: Duration) -> Result<(ExitStatus, Instant), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status()? {
                return Ok((status, Instant::now()));
            }
            if Instant::now() > deadline {
                return Err(self.error(format!("still running after {timeout:?}")));
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// The exit status if the process has exited, `None` while it runs.
    pub fn try_exit_status(&self) -> Result<Option<ExitStatus>, Error> {
        let polled = self.child.lock().unwrap().try_wait();
        polled.map_err(|e| self.error(format!("waiting for the process: {e}")))
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.lock().unwrap().try_wait().unwrap().is_none()
    }

    /// SIGTERM, then waits (up to a minute) for the drain to end in exit
    /// code 0; panics with the reason and the log otherwise.
    pub async fn stop(self) {
        if let Err(error) = self.try_stop().await {
            error.panic();
        }
    }

    /// SIGTERM, then waits (up to a minute) for the drain to end in exit code 0.
    pub async fn try_stop(self) -> Result<(), Error> {
        self.try_signal(Signal::SIGTERM)?;
        let (status, _) = self.try_wait_exit(STOP_TIMEOUT).await?;
        if !status.success() {
            return Err(self.error(format!("the controller exited with {status} after SIGTERM")));
        }
        Ok(())
    }

    /// Current resident set size (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> io::Result<u64> {
        self.proc_status_kib("VmRSS")
    }

    /// Peak resident set size so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> io::Result<u64> {
        self.proc_status_kib("VmHWM")
    }

    /// CPU time used so far (user + system), seconds.
    pub fn cpu_seconds(&self) -> io::Result<f64> {
        cpu_seconds(self.pid())
    }

    fn proc_status_kib(&self, field: &str) -> io::Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = read_proc(&path)?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| invalid(format!("no {field} in {path}")))
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
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
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One scrape of a controller's `/metrics` (Prometheus text format).
#[derive(Clone, Debug)]
pub struct Metrics {
    prefix: &'static str,
    text: String,
}

impl Metrics {
    /// The value of series `name`, summed over its labels (`None` if absent).
    pub fn get(&self, name: &str) -> Option<f64> {
        self.sum_where(name, |_| true)
    }

    /// The sum of the samples of series `name` whose line (labels and all)
    /// passes `labels`, e.g. `|l| !l.contains(r#"result="skipped""#)`
    /// (`None` if none does).
    pub fn sum_where(&self, name: &str, labels: impl Fn(&str) -> bool) -> Option<f64> {
        let values: Vec<f64> = self
            .text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter(|l| labels(l))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// Every sample of series `name`: its labels (name to value) and value.
    pub fn samples(&self, name: &str) -> Vec<(std::collections::BTreeMap<String, String>, f64)> {
        self.text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let value = value.parse().ok()?;
                let labels = series
                    .split_once('{')
                    .map(|(_, rest)| parse_labels(rest.trim_end_matches('}')))
                    .unwrap_or_default();
                Some((labels, value))
            })
            .collect()
    }

    /// Whether `<prefix>_leader` is 1.
    pub fn leader(&self) -> bool {
        self.get(&format!("{}_leader", self.prefix)) == Some(1.0)
    }

    /// The scrape as it was read.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// `a="x",b="y"` as a map (values unescaped).
fn parse_labels(text: &str) -> std::collections::BTreeMap<String, String> {
    let mut labels = std::collections::BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    labels
}

/// CPU time (user + system) used so far by process `pid`, seconds
/// (`Pid::this()` for the caller's own).
pub fn cpu_seconds(pid: Pid) -> io::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = read_proc(&path)?;
    // Fields after "(comm) ": state is field 3, utime 14, stime 15 (man 5 proc).
    let after = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> io::Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| invalid(format!("no field {} in {path}", i + 3)))
    };
    // Clock ticks are 1/100 s on Linux (sysconf(_SC_CLK_TCK), fixed by the ABI).
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

fn read_proc(path: &str) -> io::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {path}: {e}")))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// A copy of `kubeconfig` whose server is `server` (e.g. a test proxy),
/// written into `dir`. The CA still matches: the proxy serves the API
/// server's own certificate, which covers 127.0.0.1.
pub fn kubeconfig_via(kubeconfig: &Path, server: SocketAddr, dir: &Path) -> PathBuf {
    try_kubeconfig_via(kubeconfig, server, dir).unwrap()
}

/// [`kubeconfig_via`], failing instead of panicking: writes
/// `dir/kubeconfig-via-proxy` and returns its path.
pub fn try_kubeconfig_via(
    kubeconfig: &Path,
    server: SocketAddr,
    dir: &Path,
) -> io::Result<PathBuf> {
    let text = std::fs::read_to_string(kubeconfig)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", kubeconfig.display())))?;
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).map_err(io::Error::other)?;
    let clusters = config["clusters"]
        .as_sequence_mut()
        .ok_or_else(|| invalid(format!("{} has no clusters", kubeconfig.display())))?;
    for cluster in clusters {
        cluster["cluster"]["server"] = format!("https://{server}").into();
    }
    let path = dir.join("kubeconfig-via-proxy");
    std::fs::write(
        &path,
        serde_yaml::to_string(&config).map_err(io::Error::other)?,
    )?;
    Ok(path)
}
