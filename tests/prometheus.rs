//! A real Prometheus (Debian's package) scrapes the real controller on
//! 127.0.0.1, and its HTTP API answers queries over the reconcile and target
//! series, so what we export is what a user's Prometheus will store.

#[path = "lifecycle/process.rs"]
mod process;
mod support;
#[path = "lifecycle/world.rs"]
mod world;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use process::Controller;
use world::World;

/// A Prometheus server on 127.0.0.1, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn scraping(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n\
                 - job_name: fanout\n  static_configs: [{{targets: ['{target}']}}]\n"
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
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian package prometheus; scripts/install-prereqs installs it)");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The samples an instant query returns, as (labels, value) pairs.
    async fn query(&self, expr: &str) -> Vec<(serde_json::Value, f64)> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let Ok(response) = reqwest::Client::new()
            .get(url)
            .query(&[("query", expr)])
            .send()
            .await
        else {
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

    /// Polls `expr` until `accept` holds for its samples, or panics.
    async fn wait_for(
        &self,
        expr: &str,
        accept: impl Fn(&[(serde_json::Value, f64)]) -> bool,
    ) -> Vec<(serde_json::Value, f64)> {
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

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_reconcile_and_target_series() {
    let cluster = support::cluster();
    let world = World::new(cluster, 3).await;
    let mut controller = Controller::start(&world.kubeconfig, &world.args(&[])).await;
    controller.wait_ready(Duration::from_secs(30)).await;
    let fanout = world.create_fanout(cluster).await;
    world.wait_synced(cluster, &fanout, 3).await;

    let prometheus = Prometheus::scraping(&controller.admin_addr().to_string());
    prometheus
        .wait_for("up{job=\"fanout\"}", |s| s.len() == 1 && s[0].1 == 1.0)
        .await;
    let reconciles = prometheus
        .wait_for("sum by (result) (fanout_reconciles_total)", |s| {
            !s.is_empty()
        })
        .await;
    assert!(
        reconciles
            .iter()
            .any(|(labels, value)| labels["result"] == "ok" && *value >= 1.0),
        "{reconciles:?}"
    );
    prometheus
        .wait_for("sum(fanout_targets{state=\"Synced\"})", |s| {
            s.len() == 1 && s[0].1 == 3.0
        })
        .await;
    let writes = prometheus
        .wait_for(
            "sum by (operation, result) (fanout_target_writes_total)",
            |s| !s.is_empty(),
        )
        .await;
    assert!(
        writes
            .iter()
            .any(|(labels, value)| labels["operation"] == "create"
                && labels["result"] == "ok"
                && *value >= 3.0),
        "{writes:?}"
    );
    prometheus
        .wait_for("sum(fanout_reconcile_duration_seconds_count)", |s| {
            s.len() == 1 && s[0].1 >= 1.0
        })
        .await;

    controller.signal(Signal::SIGTERM);
    assert!(
        controller
            .wait_exit(Duration::from_secs(20))
            .await
            .success()
    );
}
