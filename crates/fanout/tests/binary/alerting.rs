//! The chart's alerting rules, end to end: a real Prometheus (Debian's)
//! scrapes a real controller process and evaluates
//! `charts/fanout/files/alerts.yaml`, and a real Alertmanager (Debian's
//! `prometheus-alertmanager`) receives what fires, both on 127.0.0.1 and
//! stopped with the test. What an on-call sees is read from Alertmanager's
//! API v2:
//! - the controller killed: `FanoutDown` arrives; a controller back up
//!   resolves it;
//! - every write of a copy failing (the fault proxy answers 500): the
//!   targets go Failed and `FanoutTargetsFailed` arrives; writes passing
//!   again resolve it.
//!
//! The chart's `for:` durations are minutes (5 to 30): the tests load the
//! chart's rules with every `for:` rewritten to [`FOR`], and nothing else
//! changed (expressions, labels, annotations are the chart's).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use http::Method;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use nix::sys::signal::Signal;
use serde_json::json;
use testkit::alertmanager::{Alert, Alertmanager};
use testkit::process::{Controller, kubeconfig_via};
use testkit::prometheus::Prometheus;
use testkit::proxy::{Fault, FaultProxy, Mode, Rule};
use testkit::world::World;

/// The chart's rules file.
const RULES_FILE: &str = "charts/fanout/files/alerts.yaml";
/// The `for:` every rule is given here instead of the chart's minutes: long
/// enough that Prometheus' first evaluations (before its first scrape, when
/// `absent(fanout_ready == 1)` holds) do not fire `FanoutDown`.
const FOR: &str = "5s";
/// How long an alert may take to reach Alertmanager, or to resolve there.
const ALERT_TIMEOUT: Duration = Duration::from_secs(90);
/// The `namespace` label the scrape adds, as the chart's PodMonitor and
/// ServiceMonitor do (the rules group by it).
const NAMESPACE_LABEL: &str = "fanout-system";

/// The chart's alerting rules with every `for:` set to [`FOR`].
fn rules_with_short_for() -> String {
    let text = std::fs::read_to_string(testkit::repo_root().join(RULES_FILE))
        .unwrap_or_else(|e| panic!("read {RULES_FILE}: {e}"));
    let mut rules: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut shortened = 0;
    for group in rules["groups"].as_sequence_mut().expect("groups") {
        for rule in group["rules"].as_sequence_mut().expect("rules") {
            let rule = rule.as_mapping_mut().expect("a rule is a mapping");
            if rule.contains_key("for") {
                rule.insert("for".into(), FOR.into());
                shortened += 1;
            }
        }
    }
    assert!(shortened > 0, "no rule of {RULES_FILE} has a for:");
    serde_yaml::to_string(&rules).unwrap()
}

/// Prometheus' one job: the targets in `targets.json` of its directory,
/// re-read every second, so a restarted controller (a new port) is found.
const JOB: &str = "file_sd_configs: [{files: ['targets.json'], refresh_interval: 1s}]";

/// Points Prometheus at the controller at `addr`, labelled as the chart's
/// monitors label a pod (written whole, then renamed, so Prometheus never
/// reads half a file).
fn scrape(dir: &Path, addr: SocketAddr, pod: &str) {
    let targets = json!([{
        "targets": [addr.to_string()],
        "labels": {"namespace": NAMESPACE_LABEL, "pod": pod},
    }]);
    let partial = dir.join("targets.json.partial");
    std::fs::write(&partial, targets.to_string()).unwrap();
    std::fs::rename(partial, dir.join("targets.json")).unwrap();
}

/// Waits until Prometheus scrapes a ready controller and neither it nor
/// Alertmanager holds `FanoutDown` (it is pending from Prometheus' first
/// evaluations, before the first scrape, until that scrape lands).
async fn watched_and_quiet(prometheus: &Prometheus, alertmanager: &Alertmanager) {
    prometheus
        .wait_for("fanout_ready == 1", |samples| samples.len() == 1)
        .await;
    testkit::eventually(
        "Prometheus to hold no FanoutDown",
        Duration::from_secs(30),
        || async {
            let alerts = prometheus.alerts().await;
            (!alerts.iter().any(|(name, _)| name == "FanoutDown")).then_some(())
        },
    )
    .await;
    alertmanager
        .wait_resolved("FanoutDown", Duration::from_secs(30))
        .await;
}

/// The message of a Failed target in the Fanout's status (waiting for one).
async fn failed_target_message(cluster: &testkit::Cluster, world: &World, fanout: &str) -> String {
    testkit::eventually(
        "a Failed target in the status",
        Duration::from_secs(30),
        || async {
            world.fanout_json(cluster, fanout)["status"]["targets"]
                .as_array()?
                .iter()
                .find(|t| t["state"] == "Failed")
                .map(|t| t["message"].as_str().unwrap_or_default().to_owned())
        },
    )
    .await
}

/// What an on-call reads: the severity, and a summary, a description and a
/// runbook link that are not empty.
fn assert_actionable(alert: &Alert, severity: &str) {
    assert_eq!(alert.state, "active", "{alert:?}");
    assert_eq!(
        alert.labels.get("severity").map(String::as_str),
        Some(severity),
        "{alert:?}"
    );
    for annotation in ["summary", "description", "runbook_url"] {
        assert!(
            alert
                .annotations
                .get(annotation)
                .is_some_and(|text| !text.trim().is_empty()),
            "{} has no {annotation}: {alert:?}",
            alert.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_controller_raises_fanout_down_in_alertmanager_and_a_new_one_resolves_it() {
    let cluster = testkit::cluster();
    let world = World::new(cluster, 1).await;
    let alertmanager = Alertmanager::start().await;
    let mut controller =
        Controller::start(&crate::fanout(), &world.kubeconfig, &world.args(&[])).await;
    controller.wait_ready(Duration::from_secs(30)).await;
    let first = controller.admin_addr();
    let prometheus =
        Prometheus::start_alerting(JOB, &rules_with_short_for(), alertmanager.addr(), |dir| {
            scrape(dir, first, "fanout-first")
        });
    watched_and_quiet(&prometheus, &alertmanager).await;

    // The only controller is killed (SIGKILL: no drain, as an OOM kill or a
    // lost node would leave it).
    controller.signal(Signal::SIGKILL);
    let killed = Instant::now();
    assert!(
        !controller
            .wait_exit(Duration::from_secs(10))
            .await
            .success()
    );
    let alert = alertmanager.wait_firing("FanoutDown", ALERT_TIMEOUT).await;
    let reached = killed.elapsed();
    println!(
        "controller killed: FanoutDown reached Alertmanager after {:.1} s (for: {FOR}, scrape and evaluation every {:?})",
        reached.as_secs_f64(),
        testkit::prometheus::INTERVAL
    );
    assert_actionable(&alert, "critical");

    // A controller is back (a new process, on a new port): it resolves.
    let mut replacement =
        Controller::start(&crate::fanout(), &world.kubeconfig, &world.args(&[])).await;
    replacement.wait_ready(Duration::from_secs(30)).await;
    let ready = Instant::now();
    scrape(prometheus.dir(), replacement.admin_addr(), "fanout-second");
    alertmanager
        .wait_resolved("FanoutDown", ALERT_TIMEOUT)
        .await;
    println!(
        "controller back: FanoutDown resolved in Alertmanager {:.1} s after the new process was ready",
        ready.elapsed().as_secs_f64()
    );

    replacement.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_copy_writes_raise_fanout_targets_failed_and_passing_writes_resolve_it() {
    let cluster = testkit::cluster();
    let world = World::new(cluster, 3).await;
    let alertmanager = Alertmanager::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(&cluster.server_url(), &cluster.pki_dir(), Mode::Open).await;
    let kubeconfig = kubeconfig_via(&world.kubeconfig, proxy.addr(), dir.path());
    let controller = Controller::start(
        &crate::fanout(),
        &kubeconfig,
        &world.args(&["--write-timeout", "2s"]),
    )
    .await;
    controller.wait_leader(Duration::from_secs(30)).await;
    let admin = controller.admin_addr();
    let prometheus =
        Prometheus::start_alerting(JOB, &rules_with_short_for(), alertmanager.addr(), |dir| {
            scrape(dir, admin, "fanout-leader")
        });
    let fanout = world.create_fanout(cluster).await;
    world
        .wait_synced(cluster, &fanout, world.targets.len())
        .await;
    watched_and_quiet(&prometheus, &alertmanager).await;
    prometheus
        .wait_for(r#"sum(fanout_targets{state="Synced"})"#, |s| {
            s.len() == 1 && s[0].1 == 3.0
        })
        .await;
    assert!(
        alertmanager.firing("FanoutTargetsFailed").await.is_empty(),
        "FanoutTargetsFailed fired while every target was Synced"
    );

    // Every write of a copy is answered 500 from now on (the Lease, the
    // Fanout's status and reads pass: failing the Lease is FanoutNoLeader's
    // case, and a status that cannot be written reports no Failed target).
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        proxy.add(Rule::new(Some(method), "/secrets", Fault::Status(500)).not_watch());
    }
    // The controller watches the source's namespace (its list is done and
    // its watch open, as the proxy saw): the edit below is an event it sees.
    let source_watch = format!("/namespaces/{}/secrets?", world.source.name());
    testkit::eventually(
        "the controller to watch the source namespace",
        Duration::from_secs(30),
        || async {
            proxy
                .requests()
                .iter()
                .any(|r| r.uri.contains(&source_watch) && r.uri.contains("watch=true"))
                .then_some(())
        },
    )
    .await;
    // The source changes (straight to the API server): every copy must be
    // rewritten, and every rewrite fails.
    let sources: Api<Secret> = Api::namespaced(cluster.client(), world.source.name());
    let rotated = json!({"stringData": {"token": "r0t4t3d"}});
    sources
        .patch("creds", &PatchParams::default(), &Patch::Merge(&rotated))
        .await
        .unwrap();
    let failing = Instant::now();
    let alert = match alertmanager
        .try_wait_firing("FanoutTargetsFailed", ALERT_TIMEOUT)
        .await
    {
        Ok(alert) => alert,
        Err(held) => panic!(
            "{held}\nPrometheus: fanout_targets {:?}, fanout_leader {:?}, alerts {:?}\n\
             status targets: {:?}\ncontroller log:\n{}",
            prometheus.query("fanout_targets").await,
            prometheus.query("fanout_leader").await,
            prometheus.alerts().await,
            world.target_states(cluster, &fanout),
            controller.log()
        ),
    };
    println!(
        "copy writes failing: FanoutTargetsFailed reached Alertmanager after {:.1} s (for: {FOR})",
        failing.elapsed().as_secs_f64()
    );
    assert_actionable(&alert, "warning");
    assert_eq!(
        alert.labels.get("namespace").map(String::as_str),
        Some(NAMESPACE_LABEL),
        "grouped by the controller's namespace, for routing: {alert:?}"
    );
    let message = failed_target_message(cluster, &world, &fanout).await;
    println!("a Failed target's message: {message}");
    let rejected = proxy
        .requests()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    assert!(rejected >= 3, "{rejected} writes failed");
    assert!(
        alertmanager.firing("FanoutDown").await.is_empty(),
        "the controller is up: FanoutDown must not fire"
    );

    // Writes pass again: the retry (backoff of at most 10 s) converges, and
    // the alert resolves.
    proxy.clear();
    let restored = Instant::now();
    world
        .wait_synced(cluster, &fanout, world.targets.len())
        .await;
    println!(
        "copy writes restored: all targets Synced after {:.1} s",
        restored.elapsed().as_secs_f64()
    );
    alertmanager
        .wait_resolved("FanoutTargetsFailed", ALERT_TIMEOUT)
        .await;
    println!(
        "copy writes restored: FanoutTargetsFailed resolved in Alertmanager after {:.1} s",
        restored.elapsed().as_secs_f64()
    );
    for target in &world.targets {
        let copies: Api<Secret> = Api::namespaced(cluster.client(), target.name());
        let copy = copies.get("creds").await.unwrap();
        let token = copy.data.and_then(|d| d.get("token").map(|v| v.0.clone()));
        assert_eq!(token.as_deref(), Some(&b"r0t4t3d"[..]));
    }

    controller.stop().await;
}
