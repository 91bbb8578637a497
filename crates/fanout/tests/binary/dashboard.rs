//! Every query of the Grafana dashboard (`charts/fanout/files/dashboard.json`)
//! returns data from a real Prometheus that scraped a working controller
//! through a fan-out: no panel left empty by a misspelt series, a label the
//! scrape does not carry, or a legend naming a label the query drops.
//!
//! Grafana's variables are replaced as Grafana would for this Prometheus:
//! `$namespace` by the one namespace the scrape labels the controller with,
//! `$__rate_interval` by Grafana's formula for a data source whose scrape
//! interval is set to Prometheus' 1 s (`max(4 × 1 s, step + 1 s)`, so 4 s
//! with one point per second). Each query runs as the panel runs it, a range
//! query over the time Prometheus has been up.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use testkit::process::Controller;
use testkit::prometheus::{INTERVAL, Prometheus};
use testkit::world::World;

const DASHBOARD_FILE: &str = "charts/fanout/files/dashboard.json";
/// The `namespace` and `pod` labels the chart's PodMonitor and
/// ServiceMonitor put on every series, which the panels filter and group by.
const NAMESPACE_LABEL: &str = "fanout-system";
const POD_LABEL: &str = "fanout-7d9f8-abcde";
/// One point per scrape, as a dashboard over a short range draws.
const STEP: Duration = INTERVAL;
/// Grafana's `$__rate_interval`: `max(4 × scrape interval, step + scrape interval)`.
const RATE_INTERVAL: &str = "4s";
const TARGETS: usize = 5;

/// One query of one panel.
struct Query {
    panel: String,
    expr: String,
    legend: String,
}

/// Every query of the dashboard, with Grafana's variables replaced.
fn dashboard_queries() -> Vec<Query> {
    let text = std::fs::read_to_string(testkit::repo_root().join(DASHBOARD_FILE))
        .unwrap_or_else(|e| panic!("read {DASHBOARD_FILE}: {e}"));
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_default()
                .replace("$namespace", NAMESPACE_LABEL)
                .replace("$__rate_interval", RATE_INTERVAL);
            assert!(
                !expr.contains('$'),
                "{title}: a variable this test does not know: {expr}"
            );
            queries.push(Query {
                panel: title.to_owned(),
                expr,
                legend: target["legendFormat"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
    }
    assert!(!queries.is_empty(), "{DASHBOARD_FILE} has no query");
    queries
}

/// The labels a legend format names (`{{pod}}` -> `pod`).
fn legend_labels(legend: &str) -> BTreeSet<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|rest| rest.split_once("}}"))
        .map(|(label, _)| label.trim().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_query_returns_data_from_prometheus_scraping_a_working_controller() {
    let cluster = testkit::cluster();
    let world = World::new(cluster, TARGETS).await;
    let controller = Controller::start(&crate::fanout(), &world.kubeconfig, &world.args(&[])).await;
    controller.wait_leader(Duration::from_secs(30)).await;
    let admin = controller.admin_addr();
    let prometheus = Prometheus::start(
        &format!(
            "static_configs: [{{targets: ['{admin}'], \
             labels: {{namespace: {NAMESPACE_LABEL}, pod: {POD_LABEL}}}}}]"
        ),
        |_| {},
    );
    prometheus
        .wait_for("up == 1", |samples| samples.len() == 1)
        .await;

    // A fan-out, scraped while it happens and after it converged.
    let fanout = world.create_fanout(cluster).await;
    world.wait_synced(cluster, &fanout, TARGETS).await;
    prometheus
        .wait_for(r#"sum(fanout_targets{state="Synced"})"#, |s| {
            s.len() == 1 && s[0].1 == TARGETS as f64
        })
        .await;
    // Scraped on past the fan-out for more than a rate window, so every
    // rate() has two samples around the writes it counts.
    let scrapes = "count_over_time(fanout_ready[1h])";
    let converged = prometheus.wait_for(scrapes, |s| s.len() == 1).await[0].1;
    prometheus
        .wait_for(scrapes, |s| s.len() == 1 && s[0].1 >= converged + 6.0)
        .await;

    let queries = dashboard_queries();
    let mut empty = Vec::new();
    for query in &queries {
        let series = match prometheus
            .query_range(&query.expr, prometheus.started(), STEP)
            .await
        {
            Ok(series) => series,
            Err(error) => {
                empty.push(format!("{}: {} -> error {error}", query.panel, query.expr));
                continue;
            }
        };
        let drawn: Vec<&(Value, Vec<(f64, f64)>)> = series
            .iter()
            .filter(|(_, points)| points.iter().any(|(_, v)| v.is_finite()))
            .collect();
        if drawn.is_empty() {
            empty.push(format!(
                "{}: {} -> no finite point in {} series",
                query.panel,
                query.expr,
                series.len()
            ));
            continue;
        }
        for label in legend_labels(&query.legend) {
            for (labels, _) in &drawn {
                if labels.get(&label).and_then(Value::as_str).is_none() {
                    empty.push(format!(
                        "{}: legend {:?} names {label}, which {labels} lacks",
                        query.panel, query.legend
                    ));
                }
            }
        }
        let last: Vec<String> = drawn
            .iter()
            .map(|(labels, points)| {
                let value = points
                    .iter()
                    .rev()
                    .find(|(_, v)| v.is_finite())
                    .map_or(f64::NAN, |(_, v)| *v);
                let legend = legend_labels(&query.legend)
                    .iter()
                    .filter_map(|l| labels.get(l).and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(" ");
                format!("{legend}={value}")
            })
            .collect();
        println!(
            "panel {:?} [{}]: {} series, last finite values {last:?}",
            query.panel,
            query.legend,
            drawn.len()
        );
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}\n{}",
        empty.join("\n"),
        prometheus.log()
    );

    // The panels say what happened: all targets synced, the writes seen.
    let synced = prometheus
        .query(&queries_of(&queries, "Targets synced")[0].expr)
        .await;
    assert_eq!(synced.len(), 1, "{synced:?}");
    assert_eq!(synced[0].1, 1.0, "the synced ratio after convergence");

    controller.stop().await;
}

fn queries_of<'a>(queries: &'a [Query], panel: &str) -> Vec<&'a Query> {
    let found: Vec<&Query> = queries.iter().filter(|q| q.panel == panel).collect();
    assert!(!found.is_empty(), "no panel {panel:?}");
    found
}
