//! Debian's Prometheus, on 127.0.0.1, scraping the pods behind the chart's
//! metrics Service.
//!
//! Debian builds Prometheus without Kubernetes service discovery
//! (`kubernetes_sd_configs` is "field not found" in 2.42.0+ds), so the test
//! resolves the Service itself: the pod IPs of its EndpointSlices go into a
//! `file_sd_configs` file, which is what that discovery would have produced.
//! Prometheus reaches the pod IPs over the node's private bridge.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;

pub struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping every ready endpoint of `service`.
    pub async fn scraping_service(
        client: kube::Client,
        namespace: &str,
        service: &str,
    ) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let slices: Api<EndpointSlice> = Api::namespaced(client, namespace);
        let selector = format!("kubernetes.io/service-name={service}");
        let mut targets = Vec::new();
        for slice in slices
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap()
        {
            let port = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some("metrics"))
                .and_then(|p| p.port)
                .expect("the metrics Service has a port named metrics");
            for endpoint in slice.endpoints {
                let ready = endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                if ready {
                    for address in endpoint.addresses {
                        targets.push(format!("{address}:{port}"));
                    }
                }
            }
        }
        let file_sd = dir.path().join("targets.json");
        std::fs::write(
            &file_sd,
            serde_json::json!([{"targets": targets, "labels": {"service": service}}]).to_string(),
        )
        .unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n\
                 - job_name: fanout\n  file_sd_configs: [{{files: ['{}'], refresh_interval: 1s}}]\n",
                file_sd.display()
            ),
        )
        .unwrap();
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The instant vector of `query` as (instance, value) pairs; empty while
    /// Prometheus is starting or has no sample yet.
    pub async fn query(&self, query: &str) -> Vec<(String, f64)> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let response = reqwest::Client::new()
            .get(url)
            .query(&[("query", query)])
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
                let instance = sample["metric"]["instance"].as_str()?.to_owned();
                let value = sample["value"][1].as_str()?.parse().ok()?;
                Some((instance, value))
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
