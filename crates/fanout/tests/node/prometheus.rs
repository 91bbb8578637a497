//! Debian's Prometheus, on 127.0.0.1, scraping the pods behind the chart's
//! metrics Service.
//!
//! Debian builds Prometheus without Kubernetes service discovery
//! (`kubernetes_sd_configs` is "field not found" in 2.42.0+ds), so the test
//! resolves the Service itself: the pod IPs of its EndpointSlices go into a
//! `file_sd_configs` file, which is what that discovery would have produced.
//! Prometheus reaches the pod IPs over the node's private bridge.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;

pub use testkit::prometheus::Prometheus;

/// Starts Prometheus scraping every ready endpoint of `service`.
pub async fn scraping_service(client: kube::Client, namespace: &str, service: &str) -> Prometheus {
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
    let file_sd =
        serde_json::json!([{"targets": targets, "labels": {"service": service}}]).to_string();
    Prometheus::start(
        "file_sd_configs: [{files: ['targets.json'], refresh_interval: 1s}]",
        |dir| std::fs::write(dir.join("targets.json"), file_sd).unwrap(),
    )
}
