//! A real Prometheus (Debian's package) scrapes the real controller on
//! 127.0.0.1, and its HTTP API answers queries over the reconcile and target
//! series, so what we export is what a user's Prometheus will store.

use std::time::Duration;

use testkit::process::Controller;
use testkit::prometheus::Prometheus;
use testkit::world::World;

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_reconcile_and_target_series() {
    let cluster = testkit::cluster();
    let world = World::new(cluster, 3).await;
    let mut controller =
        Controller::start(&crate::fanout(), &world.kubeconfig, &world.args(&[])).await;
    controller.wait_ready(Duration::from_secs(30)).await;
    let fanout = world.create_fanout(cluster).await;
    world.wait_synced(cluster, &fanout, 3).await;

    let target = controller.admin_addr();
    let prometheus = Prometheus::start(
        &format!("static_configs: [{{targets: ['{target}']}}]"),
        |_| {},
    );
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

    controller.stop().await;
}
