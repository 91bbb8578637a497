//! The runtime serves the next controller: `stamp-configmaps` against a real
//! API server is ready only once its watch has listed, leads, stamps a
//! ConfigMap and follows an edit of it, exports its metrics under its own
//! prefix, and on SIGTERM turns unready at once, drains through the
//! runtime's phases in order, releases its Lease and exits 0.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use nix::sys::signal::Signal;
use serde_json::json;
use testkit::process::{Binary, Controller};

const CHECKSUM: &str = "stamp.example.dev/checksum";

async fn checksum(api: &Api<ConfigMap>, name: &str) -> Option<String> {
    api.get(name)
        .await
        .ok()?
        .annotations()
        .get(CHECKSUM)
        .cloned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_controller_stamps_configmaps_and_drains_on_sigterm() {
    let cluster = testkit::cluster();
    let ns = cluster.namespace("stamp").await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), ns.name());
    let config: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "app-config", "labels": {"stamp.example.dev/enabled": "true"}},
        "data": {"mode": "fast"},
    }))
    .unwrap();
    api.create(&PostParams::default(), &config).await.unwrap();

    let binary = Binary {
        path: env!("CARGO_BIN_EXE_stamp-configmaps").into(),
        metrics_prefix: "stamp",
    };
    let args = ["--lease-namespace".to_owned(), ns.name().to_owned()];
    let mut controller = Controller::start(&binary, cluster.kubeconfig_path(), &args).await;
    controller.wait_ready(Duration::from_secs(30)).await;
    controller.wait_leader(Duration::from_secs(30)).await;
    let first = testkit::eventually(
        "the ConfigMap to be stamped",
        Duration::from_secs(30),
        || checksum(&api, "app-config"),
    )
    .await;
    let edit = json!({"data": {"mode": "safe"}});
    api.patch("app-config", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    testkit::eventually(
        "the stamp to follow the edit",
        Duration::from_secs(30),
        || async {
            checksum(&api, "app-config")
                .await
                .filter(|now| *now != first)
        },
    )
    .await;
    assert!(
        controller
            .metric("stamp_api_requests_total")
            .await
            .unwrap_or(0.0)
            > 0.0
    );
    let verbose = controller.body("/readyz?verbose").await;
    assert!(verbose.contains("[+]caches-synced ok"), "{verbose}");

    controller.signal(Signal::SIGTERM);
    let signalled = Instant::now();
    while controller.status("/readyz").await != Some(503) {
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "readiness never turned off"
        );
    }
    let status = controller.wait_exit(Duration::from_secs(20)).await;
    println!(
        "stamp-configmaps drained and exited {} ms after SIGTERM",
        signalled.elapsed().as_millis()
    );
    assert_eq!(status.code(), Some(0), "{}", controller.log());
    assert_eq!(
        controller.phases(),
        [
            "draining",
            "work_drained",
            "lease_released",
            "admin_stopped"
        ]
        .map(String::from)
        .to_vec(),
        "{}",
        controller.log()
    );
}
