//! Debian's Prometheus on 127.0.0.1, as a test harness: started with one
//! scrape job, queried through its HTTP API, killed on drop. Used by the
//! scrape test against a controller process and by the node end-to-end test
//! against pods.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One sample of an instant query: its labels and value.
pub type Sample = (serde_json::Value, f64);

/// A Prometheus server on 127.0.0.1, killed on drop.
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping every second with one job, `job` being the
    /// YAML of its targets (e.g. `static_configs: [...]`). `prepare` may
    /// write files the job refers to into the state directory first.
    pub fn start(job: &str, prepare: impl FnOnce(&Path)) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n- job_name: fanout\n  {job}\n"
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
        Prometheus { child, port, dir }
    }

    /// Prometheus' own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The samples an instant query returns; empty while Prometheus is
    /// starting or has no sample yet.
    pub async fn query(&self, expr: &str) -> Vec<Sample> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let response = reqwest::Client::new()
            .get(url)
            .query(&[("query", expr)])
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        let Ok(response) = response else {
            return Vec::new();
        };
        let Ok(body) = response.json::<serde_json::Value>().await else {
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
