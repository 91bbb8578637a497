//! Debian's Prometheus on 127.0.0.1, as a test harness: started with one
//! scrape job (and, for alerting tests, a rules file and an Alertmanager),
//! queried through its HTTP API, killed on drop. Used by the scrape,
//! dashboard and alerting tests against controller processes and by the
//! node end-to-end test against pods.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// One sample of an instant query: its labels and value.
pub type Sample = (serde_json::Value, f64);

/// One series of a range query: its labels and its (unix seconds, value) points.
pub type Series = (serde_json::Value, Vec<(f64, f64)>);

/// The scrape and rule evaluation interval of every harness Prometheus.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// A Prometheus server on 127.0.0.1, killed on drop.
pub struct Prometheus {
    child: Child,
    port: u16,
    started: SystemTime,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping every [`INTERVAL`] with one job, `job` being the
    /// YAML of its targets (e.g. `static_configs: [...]`). `prepare` may
    /// write files the job refers to into the state directory first.
    pub fn start(job: &str, prepare: impl FnOnce(&Path)) -> Prometheus {
        Prometheus::launch(job, "", prepare)
    }

    /// [`Prometheus::start`], also evaluating the alerting rules `rules` (a
    /// rules file's YAML) every [`INTERVAL`] and sending its alerts to the
    /// Alertmanager at `alertmanager`.
    pub fn start_alerting(
        job: &str,
        rules: &str,
        alertmanager: SocketAddr,
        prepare: impl FnOnce(&Path),
    ) -> Prometheus {
        let alerting = format!(
            "rule_files: [rules.yaml]\n\
             alerting:\n  alertmanagers:\n  - static_configs: [{{targets: ['{alertmanager}']}}]\n"
        );
        Prometheus::launch(job, &alerting, |dir| {
            std::fs::write(dir.join("rules.yaml"), rules).expect("write rules.yaml");
            prepare(dir);
        })
    }

    fn launch(job: &str, extra: &str, prepare: impl FnOnce(&Path)) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: {s}s, evaluation_interval: {s}s}}\n\
                 scrape_configs:\n- job_name: fanout\n  {job}\n{extra}",
                s = INTERVAL.as_secs()
            ),
        )
        .unwrap();
        // Prometheus cannot report a port it picked, so take a free one.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian package prometheus; scripts/install-prereqs installs it)");
        Prometheus {
            child,
            port,
            started: SystemTime::now(),
            dir,
        }
    }

    /// Its state directory (where `prepare` wrote; a `file_sd_configs`
    /// file rewritten there is picked up within a second).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// When it was started.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// Prometheus' own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/{endpoint}` with `query`, as JSON, or why there is none.
    async fn api(
        &self,
        endpoint: &str,
        query: &[(&str, String)],
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        let url = format!("http://127.0.0.1:{}/api/v1/{endpoint}", self.port);
        reqwest::Client::new()
            .get(url)
            .query(query)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("no answer: {e}"))?
            .json()
            .await
            .map_err(|e| format!("not JSON: {e}"))
    }

    /// The samples an instant query returns; empty while Prometheus is
    /// starting or has no sample yet.
    pub async fn query(&self, expr: &str) -> Vec<Sample> {
        let Ok(body) = self
            .api(
                "query",
                &[("query", expr.to_owned())],
                Duration::from_secs(2),
            )
            .await
        else {
            return Vec::new();
        };
        body["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|sample| {
                let value = sample["value"][1].as_str()?.parse().ok()?;
                Some((sample["metric"].clone(), value))
            })
            .collect()
    }

    /// The series a range query returns from `start` to now, one point
    /// every `step`, or the error Prometheus gave (a PromQL error, or no
    /// answer).
    pub async fn query_range(
        &self,
        expr: &str,
        start: SystemTime,
        step: Duration,
    ) -> Result<Vec<Series>, String> {
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64()
                .to_string()
        };
        let query = [
            ("query", expr.to_owned()),
            ("start", unix(start)),
            ("end", unix(SystemTime::now())),
            ("step", step.as_secs_f64().to_string()),
        ];
        let body = self
            .api("query_range", &query, Duration::from_secs(5))
            .await?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|series| {
                let points = series["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|point| {
                        let at = point[0].as_f64()?;
                        let value = point[1].as_str()?.parse().ok()?;
                        Some((at, value))
                    })
                    .collect();
                (series["metric"].clone(), points)
            })
            .collect())
    }

    /// The alerts its rules hold now (`GET /api/v1/alerts`): each one's
    /// name and state (`pending` or `firing`); empty while it is starting.
    pub async fn alerts(&self) -> Vec<(String, String)> {
        let Ok(body) = self.api("alerts", &[], Duration::from_secs(2)).await else {
            return Vec::new();
        };
        body["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|alert| {
                Some((
                    alert["labels"]["alertname"].as_str()?.to_owned(),
                    alert["state"].as_str()?.to_owned(),
                ))
            })
            .collect()
    }

    /// Polls `expr` until `accept` holds for its samples, or panics after a minute.
    pub async fn wait_for(&self, expr: &str, accept: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let samples = self.query(expr).await;
            if accept(&samples) {
                return samples;
            }
            assert!(
                Instant::now() < deadline,
                "{expr} gave {samples:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
