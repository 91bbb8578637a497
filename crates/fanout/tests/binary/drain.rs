//! Drain under load, with the real binary: a fan-out to 500 namespaces is
//! interrupted by SIGTERM at a random moment. The process exits 0; its last
//! status write for the Fanout lists the finished targets (Synced) and then
//! the rest (Pending), in resolution order; every copy that exists is whole
//! and true; and a new process converges to all Synced. Repeated at several
//! random moments, one Fanout (and one 500-copy fan-out) per round.
//!
//! The client-side rate limit (`--kube-qps 40`) stretches a fan-out to
//! about 12 s, so a signal sent 0.5–6 s after the first copy lands is
//! mid-batch by construction, not by luck.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fanout::Fanout;
use fanout::crd::{FanoutStatus, TargetState};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_objects};
use kube::{Api, Client, ResourceExt};
use nix::sys::signal::Signal;
use rand::Rng;
use serde_json::json;
use testkit::process::Controller;
use testkit::world::install_crd;

const TARGETS: usize = 500;
const ROUNDS: usize = 3;

/// The 500 target namespaces, created (and deleted) concurrently.
struct Targets {
    client: Client,
    names: Vec<String>,
}

impl Targets {
    async fn create(client: &Client, labels: BTreeMap<String, String>) -> Targets {
        let prefix = testkit::random_name("drain");
        let mut names: Vec<String> = (0..TARGETS).map(|i| format!("{prefix}-{i:03}")).collect();
        names.sort();
        let api: Api<Namespace> = Api::all(client.clone());
        stream::iter(names.clone())
            .map(|name| {
                let api = api.clone();
                let namespace = Namespace {
                    metadata: ObjectMeta {
                        name: Some(name),
                        labels: Some(labels.clone()),
                        ..ObjectMeta::default()
                    },
                    ..Namespace::default()
                };
                async move {
                    api.create(&PostParams::default(), &namespace)
                        .await
                        .map(drop)
                }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await
            .unwrap();
        Targets {
            client: client.clone(),
            names,
        }
    }

    async fn delete(self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        stream::iter(self.names)
            .for_each_concurrent(16, |name| {
                let api = api.clone();
                async move {
                    let _ = api.delete(&name, &DeleteParams::default()).await;
                }
            })
            .await;
    }
}

/// Records every status version of one Fanout seen through a watch.
fn record(
    api: Api<Fanout>,
    name: &str,
) -> (Arc<Mutex<Vec<FanoutStatus>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let task = tokio::spawn(async move {
        let mut events = watch_objects(api, config).default_backoff().boxed();
        let mut last = None;
        while let Some(event) = events.next().await {
            if let Ok(Event::Apply(f) | Event::InitApply(f)) = event
                && f.metadata.resource_version != last
            {
                last = f.metadata.resource_version.clone();
                if let Some(status) = f.status {
                    sink.lock().unwrap().push(status);
                }
            }
        }
    });
    (seen, task)
}

fn controller_args(shard: &str, lease_namespace: &str, qps: u32) -> Vec<String> {
    [
        "--fanout-selector",
        &format!("{SHARD_LABEL}={shard}"),
        "--lease-namespace",
        lease_namespace,
        "--lease-name",
        &testkit::random_name("drain-lease"),
        "--kube-qps",
        &qps.to_string(),
        "--kube-burst",
        &qps.to_string(),
        "--fanout-concurrency",
        "16",
        "--status-interval",
        "500ms",
        "--shutdown-timeout",
        "25s",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

#[tokio::test]
async fn sigterm_mid_fan_out_loses_nothing_and_a_successor_converges() {
    let cluster = testkit::cluster();
    install_crd(cluster);
    let client = cluster.client();
    let source_ns = cluster.namespace("drain-src").await;
    let src = source_ns.name().to_owned();
    let shard = testkit::random_name("shard");
    let tier = testkit::random_name("tier");
    let labels = BTreeMap::from([
        (format!("fanout.dev/accept-from.{src}"), "true".to_owned()),
        ("tier".to_owned(), tier.clone()),
        (
            testkit::testbed::TEST_NAMESPACE_LABEL.to_owned(),
            "true".to_owned(),
        ),
    ]);
    let started = Instant::now();
    let targets = Targets::create(&client, labels).await;
    println!("created {TARGETS} namespaces in {:?}", started.elapsed());
    let fanouts: Api<Fanout> = Api::namespaced(client.clone(), &src);
    let mut rng_seconds = Vec::new();

    for round in 0..ROUNDS {
        let name = format!("drain-{round}");
        let source_name = format!("payload-{round}");
        let data = [(
            "token",
            format!("round-{round}-{}", testkit::random_name("v")),
        )];
        let data_refs: Vec<(&str, &str)> = data.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Api::<Secret>::namespaced(client.clone(), &src)
            .create(&PostParams::default(), &secret(&source_name, &data_refs))
            .await
            .unwrap();
        let mut fanout: Fanout = serde_json::from_value(json!({
            "apiVersion": "fanout.dev/v1alpha1",
            "kind": "Fanout",
            "metadata": {"name": name, "namespace": src, "labels": {SHARD_LABEL: shard}},
            "spec": {
                "source": {"kind": "Secret", "name": source_name},
                "targets": {"selector": {"matchLabels": {"tier": tier}}},
            },
        }))
        .unwrap();
        fanout = fanouts
            .create(&PostParams::default(), &fanout)
            .await
            .unwrap();
        let (seen, recorder) = record(fanouts.clone(), &name);

        // The first process: SIGTERM at a random moment after the first copy.
        let mut first = Controller::start(
            &crate::fanout(),
            cluster.kubeconfig_path(),
            &controller_args(&shard, &src, 40),
        )
        .await;
        testkit::eventually(
            "the fan-out to make progress",
            Duration::from_secs(60),
            || {
                let fanouts = fanouts.clone();
                let name = name.clone();
                async move {
                    let status = fanouts.get(&name).await.ok()?.status?;
                    (status.summary.synced >= 1).then_some(())
                }
            },
        )
        .await;
        let wait = Duration::from_millis(rand::rng().random_range(500..6000));
        rng_seconds.push(wait.as_secs_f64());
        tokio::time::sleep(wait).await;
        let signalled = Instant::now();
        first.signal(Signal::SIGTERM);
        let exit = first.wait_exit(Duration::from_secs(40)).await;
        let drain_time = signalled.elapsed();
        assert_eq!(
            exit.code(),
            Some(0),
            "round {round}: exit status {exit}\n{}",
            first.log()
        );
        let phases = first.phases();
        assert!(
            phases.iter().any(|p| p == "work_drained") && !phases.iter().any(|p| p == "aborted"),
            "round {round}: drain phases {phases:?}"
        );

        // Its last status: finished targets, then Pending, in resolution order.
        let last = fanouts.get(&name).await.unwrap();
        let status = last.status.clone().unwrap();
        let order: Vec<&str> = status
            .targets
            .iter()
            .map(|t| t.namespace.as_str())
            .collect();
        assert_eq!(
            order,
            targets.names.iter().map(String::as_str).collect::<Vec<_>>(),
            "round {round}: order"
        );
        let synced = status
            .targets
            .iter()
            .take_while(|t| t.state == TargetState::Synced)
            .count();
        assert!(
            status.targets[synced..]
                .iter()
                .all(|t| t.state == TargetState::Pending),
            "round {round}: expected Synced… then Pending…, got {:?}",
            status.targets.iter().map(|t| t.state).collect::<Vec<_>>()
        );
        assert!(
            synced > 0 && synced < TARGETS,
            "round {round}: interrupted mid-batch ({synced} synced)"
        );
        assert_eq!(status.summary.synced as usize, synced);
        assert_eq!(status.summary.pending as usize, TARGETS - synced);
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Interrupted")
        );
        assert_eq!(ready.observed_generation, last.metadata.generation);

        // No copy is half-written: each one there is whole and true, and
        // they are exactly the Synced targets.
        let hash = status.source_hash.clone().unwrap();
        let copies = copies_by_namespace(&client, &source_name, &fanout.uid().unwrap()).await;
        for (i, target) in targets.names.iter().enumerate() {
            match copies.get(target) {
                Some(copy) => {
                    assert_eq!(
                        copy.annotations().get("fanout.dev/content-hash"),
                        Some(&hash),
                        "{target}"
                    );
                    assert_eq!(
                        value(copy, "token").as_deref(),
                        Some(data[0].1.as_str()),
                        "{target}"
                    );
                    assert!(
                        i < synced,
                        "round {round}: {target} has a copy but is listed Pending"
                    );
                }
                None => assert!(
                    i >= synced,
                    "round {round}: {target} is listed Synced but has no copy"
                ),
            }
        }

        // Every status write seen while it ran was in order too.
        recorder.abort();
        for (i, seen) in seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| !s.targets.is_empty())
            .enumerate()
        {
            let seen_order: Vec<&str> = seen.targets.iter().map(|t| t.namespace.as_str()).collect();
            assert_eq!(
                seen_order, order,
                "round {round}: status write {i} out of order"
            );
        }
        println!(
            "round {round}: SIGTERM {:.1}s after the first copy, {synced}/{TARGETS} synced, drained and exited 0 in {drain_time:?}",
            wait.as_secs_f64()
        );

        // A successor converges to all Synced.
        let mut second = Controller::start(
            &crate::fanout(),
            cluster.kubeconfig_path(),
            &controller_args(&shard, &src, 200),
        )
        .await;
        testkit::eventually(
            "the successor to converge",
            Duration::from_secs(120),
            || {
                let fanouts = fanouts.clone();
                let name = name.clone();
                async move {
                    let status = fanouts.get(&name).await.ok()?.status?;
                    (status.summary.synced as usize == TARGETS).then_some(())
                }
            },
        )
        .await;
        second.signal(Signal::SIGTERM);
        let exit = second.wait_exit(Duration::from_secs(40)).await;
        assert_eq!(exit.code(), Some(0), "successor: {exit}\n{}", second.log());
        let copies = copies_by_namespace(&client, &source_name, &fanout.uid().unwrap()).await;
        assert_eq!(copies.len(), TARGETS);
    }
    println!("SIGTERM moments after first progress (s): {rng_seconds:?}");

    // Leave nothing for other controllers on a shared testbed: release the
    // Fanouts without a controller (their copies go with the namespaces).
    for round in 0..ROUNDS {
        let name = format!("drain-{round}");
        let _ = fanouts
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await;
        let _ = fanouts.delete(&name, &DeleteParams::default()).await;
    }
    targets.delete().await;
}

/// The copies named `name` owned by Fanout `uid`, by namespace.
async fn copies_by_namespace(client: &Client, name: &str, uid: &str) -> HashMap<String, Secret> {
    let selector = format!("fanout.dev/fanout-uid={uid}");
    Api::<Secret>::all(client.clone())
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| s.name_any() == name)
        .map(|s| (s.namespace().unwrap(), s))
        .collect()
}

/// Label that scopes the test's Fanouts to its own controllers.
const SHARD_LABEL: &str = "fanout.dev/test-shard";

/// A Secret object (not created).
fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// A Secret's data value as text.
fn value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}
