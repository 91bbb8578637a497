//! What kubectl, scripts and GitOps tools make of a Fanout, against the real
//! API server and the real controller:
//! - `kubectl wait --for=condition=Ready` returns for a converged Fanout and
//!   times out for one that cannot converge (a target blocked by an object
//!   it did not make, a target whose writes the API server refuses);
//! - the kstatus conditions move Reconciling → Ready during a slow fan-out,
//!   each status and condition carrying the `observedGeneration` it
//!   describes, so `kubectl wait` after a spec change waits for the new
//!   generation;
//! - a Fanout whose source is missing is Stalled (`SourceMissing`), and
//!   Ready once the source appears;
//! - `kubectl explain` describes every field of `spec` and `status`.

use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fanout::Fanout;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use testkit::Cluster;
use testkit::process::Controller;
use testkit::world::World;

/// How long `kubectl wait` is given where it must time out: the window in
/// which a Fanout that cannot converge is watched not becoming Ready.
const NEVER_READY_WINDOW: &str = "10s";

/// `kubectl wait ARGS` for `fanout/NAME` in `namespace`, run off the async
/// workers; its output and how long it took.
async fn kubectl_wait(
    cluster: &'static Cluster,
    namespace: &str,
    name: &str,
    args: &[&str],
) -> (Output, Duration) {
    let mut command = vec![
        "wait".to_owned(),
        format!("fanout/{name}"),
        "-n".to_owned(),
        namespace.to_owned(),
    ];
    command.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        let output = cluster.kubectl_output(&args);
        (output, started.elapsed())
    })
    .await
    .unwrap()
}

/// `kubectl wait` that must succeed; how long it took.
async fn kubectl_waited(
    cluster: &'static Cluster,
    namespace: &str,
    name: &str,
    args: &[&str],
) -> Duration {
    let (output, took) = kubectl_wait(cluster, namespace, name, args).await;
    assert!(
        output.status.success(),
        "kubectl wait {args:?} on {name}: {}",
        text(&output.stderr)
    );
    took
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Creates a Fanout of `source` into `targets`, labelled for the world's
/// controllers.
fn create_fanout(cluster: &Cluster, world: &World, source: &str, targets: &[&str]) -> String {
    let name = testkit::random_name("fo");
    let fanout = json!({
        "apiVersion": "fanout.dev/v1alpha1",
        "kind": "Fanout",
        "metadata": {"name": name, "namespace": world.source.name(),
                     "labels": {"fanout.dev/test": world.shard}},
        "spec": {"source": {"kind": "Secret", "name": source},
                 "targets": {"namespaces": targets}},
    });
    cluster.apply_yaml(&fanout.to_string());
    name
}

/// The Fanout as the API server has it now.
async fn get(cluster: &Cluster, world: &World, name: &str) -> Fanout {
    Api::<Fanout>::namespaced(cluster.client(), world.source.name())
        .get(name)
        .await
        .unwrap()
}

/// One condition, as `(status, reason, observedGeneration)`.
fn condition(fanout: &Fanout, type_: &str) -> Option<(String, String, Option<i64>)> {
    fanout
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.observed_generation))
}

/// Asserts the status and each of its conditions describe the object's
/// current generation.
fn assert_observed_current_generation(fanout: &Fanout) {
    let generation = fanout.metadata.generation;
    let status = fanout.status.as_ref().expect("a status");
    assert_eq!(status.observed_generation, generation, "{status:?}");
    assert!(!status.conditions.is_empty(), "{status:?}");
    for condition in &status.conditions {
        assert_eq!(condition.observed_generation, generation, "{condition:?}");
    }
}

/// A controller of this world's Fanouts, ready (its caches synced) and
/// leading, so what a test times is the Fanout's work, not the start.
async fn leading_controller(world: &World, extra: &[&str]) -> Controller {
    let mut controller =
        Controller::start(&crate::fanout(), &world.kubeconfig, &world.args(extra)).await;
    controller.wait_ready(Duration::from_secs(120)).await;
    controller.wait_leader(Duration::from_secs(30)).await;
    controller
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_wait_ready_returns_for_a_converged_fanout_and_times_out_for_blocked_or_failing_ones()
 {
    let cluster = testkit::cluster();
    let world = World::new(cluster, 3).await;
    let [free, blocked, refusing] = [0, 1, 2].map(|i| world.targets[i].name());
    // Blocked: an object of the copy's name this Fanout did not make.
    let unmanaged: Secret = serde_json::from_value(json!({
        "metadata": {"name": "creds"}, "stringData": {"mine": "yes"},
    }))
    .unwrap();
    Api::<Secret>::namespaced(cluster.client(), blocked)
        .create(&PostParams::default(), &unmanaged)
        .await
        .unwrap();
    // Refusing: a ResourceQuota of zero Secrets, so the API server refuses
    // every copy (its status is set by hand: this control plane runs no
    // quota controller).
    let quotas: Api<ResourceQuota> = Api::namespaced(cluster.client(), refusing);
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "no-secrets"}, "spec": {"hard": {"count/secrets": "0"}},
    }))
    .unwrap();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    let status =
        json!({"status": {"hard": {"count/secrets": "0"}, "used": {"count/secrets": "0"}}});
    quotas
        .patch_status(
            "no-secrets",
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .unwrap();

    let controller = leading_controller(&world, &[]).await;
    let ns = world.source.name();
    let converging = create_fanout(cluster, &world, "creds", &[free]);
    let conflicting = create_fanout(cluster, &world, "creds", &[blocked]);
    let failing = create_fanout(cluster, &world, "creds", &[refusing]);

    let took = kubectl_waited(
        cluster,
        ns,
        &converging,
        &["--for=condition=Ready", "--timeout=60s"],
    )
    .await;
    println!(
        "kubectl wait --for=condition=Ready on the converging Fanout returned 0 after {} ms",
        took.as_millis()
    );
    assert_observed_current_generation(&get(cluster, &world, &converging).await);

    // The blocked one is Stalled (a person must act), the failing one
    // Reconciling (retried with backoff): both judged before the windows.
    kubectl_waited(
        cluster,
        ns,
        &conflicting,
        &["--for=condition=Stalled", "--timeout=60s"],
    )
    .await;
    kubectl_waited(
        cluster,
        ns,
        &failing,
        &["--for=condition=Reconciling", "--timeout=60s"],
    )
    .await;
    let object = get(cluster, &world, &conflicting).await;
    assert_eq!(
        condition(&object, "Ready").map(|c| (c.0, c.1)),
        Some(("False".into(), "TargetsConflicting".into()))
    );
    let object = get(cluster, &world, &failing).await;
    assert_eq!(
        condition(&object, "Ready").map(|c| (c.0, c.1)),
        Some(("False".into(), "TargetsFailing".into()))
    );
    let message = object.status.as_ref().unwrap().targets[0].message.clone();
    println!("the refused target's message: {message:?}");

    // Neither becomes Ready: kubectl wait times out, non-zero, both watched
    // at once for the same window.
    let timeout = format!("--timeout={NEVER_READY_WINDOW}");
    let ready = ["--for=condition=Ready", timeout.as_str()];
    let (stalled, failed) = tokio::join!(
        kubectl_wait(cluster, ns, &conflicting, &ready),
        kubectl_wait(cluster, ns, &failing, &ready),
    );
    for (what, (output, took)) in [("blocked", stalled), ("failing", failed)] {
        assert!(
            !output.status.success(),
            "kubectl wait Ready returned 0 for the {what} Fanout"
        );
        assert!(
            text(&output.stderr).contains("timed out"),
            "{what}: {}",
            text(&output.stderr)
        );
        println!(
            "kubectl wait --for=condition=Ready on the {what} Fanout: {} after {} ms ({})",
            output.status,
            took.as_millis(),
            text(&output.stderr).trim()
        );
    }
    controller.stop().await;
}

/// Every status of one Fanout a watch saw: `(generation, status
/// observedGeneration, [(type, status, reason, observedGeneration)])`.
type Seen = Vec<(
    Option<i64>,
    Option<i64>,
    Vec<(String, String, String, Option<i64>)>,
)>;

/// Records every version of Fanout `name` until dropped.
struct StatusRecorder {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusRecorder {
    fn start(cluster: &Cluster, namespace: &str, name: &str) -> StatusRecorder {
        let api: Api<Fanout> = Api::namespaced(cluster.client(), namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher::watcher(api, config).boxed();
            while let Some(event) = events.next().await {
                let (Ok(Event::Apply(fanout)) | Ok(Event::InitApply(fanout))) = event else {
                    continue;
                };
                let Some(status) = fanout.status else {
                    continue;
                };
                let conditions = status
                    .conditions
                    .iter()
                    .map(|c| {
                        (
                            c.type_.clone(),
                            c.status.clone(),
                            c.reason.clone(),
                            c.observed_generation,
                        )
                    })
                    .collect();
                sink.lock().unwrap().push((
                    fanout.metadata.generation,
                    status.observed_generation,
                    conditions,
                ));
            }
        });
        StatusRecorder { seen, task }
    }

    fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for StatusRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `Ready=False Reconciling=True (Progressing)`: one status's conditions.
fn summary(conditions: &[(String, String, String, Option<i64>)]) -> String {
    let mut parts: Vec<String> = conditions
        .iter()
        .map(|(t, s, _, _)| format!("{t}={s}"))
        .collect();
    if let Some((_, _, reason, _)) = conditions.first() {
        parts.push(format!("({reason})"));
    }
    parts.join(" ")
}

fn is(conditions: &[(String, String, String, Option<i64>)], type_: &str, status: &str) -> bool {
    conditions
        .iter()
        .any(|(t, s, _, _)| t == type_ && s == status)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_fan_out_is_reconciling_then_ready_and_kubectl_wait_follows_the_generation() {
    const TARGETS: usize = 12;
    let cluster = testkit::cluster();
    let world = World::new(cluster, TARGETS).await;
    // One write at a time, four a second: the fan-out takes seconds, and
    // statuses are written in between (every second).
    let controller = leading_controller(
        &world,
        &[
            "--fanout-concurrency",
            "1",
            "--kube-qps",
            "4",
            "--kube-burst",
            "1",
            "--status-interval",
            "1s",
        ],
    )
    .await;
    let ns = world.source.name();
    let name = testkit::random_name("fo");
    let recorder = StatusRecorder::start(cluster, ns, &name);
    let targets: Vec<&str> = world.targets.iter().map(|t| t.name()).collect();
    let fanout = json!({
        "apiVersion": "fanout.dev/v1alpha1",
        "kind": "Fanout",
        "metadata": {"name": name, "namespace": ns, "labels": {"fanout.dev/test": world.shard}},
        "spec": {"source": {"kind": "Secret", "name": "creds"}, "targets": {"namespaces": targets}},
    });
    cluster.apply_yaml(&fanout.to_string());

    let took = kubectl_waited(
        cluster,
        ns,
        &name,
        &["--for=condition=Ready", "--timeout=120s"],
    )
    .await;
    println!(
        "slow fan-out of {TARGETS}: kubectl wait --for=condition=Ready returned 0 after {} ms",
        took.as_millis()
    );
    let object = get(cluster, &world, &name).await;
    assert_observed_current_generation(&object);
    assert_eq!(
        object.status.as_ref().unwrap().summary.synced as usize,
        TARGETS
    );
    let final_conditions: Vec<String> = object
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .map(|c| format!("{}={}", c.type_, c.status))
        .collect();
    assert_eq!(
        final_conditions,
        ["Ready=True"],
        "no Reconciling or Stalled once Ready"
    );

    // What the watch saw: Reconciling while the copies were being written,
    // then Ready; never Stalled; every status of generation 1 said so.
    let seen = testkit::eventually("the watch to see Ready", Duration::from_secs(10), || {
        let seen = recorder.seen();
        async move {
            seen.last()
                .is_some_and(|(_, _, c)| is(c, "Ready", "True"))
                .then_some(seen)
        }
    })
    .await;
    let story: Vec<String> = seen.iter().map(|(_, _, c)| summary(c)).collect();
    println!("conditions as the watch saw them: {story:#?}");
    let reconciling: Vec<usize> = (0..seen.len())
        .filter(|&i| is(&seen[i].2, "Reconciling", "True"))
        .collect();
    let first_ready = seen
        .iter()
        .position(|(_, _, c)| is(c, "Ready", "True"))
        .unwrap();
    assert!(!reconciling.is_empty(), "never Reconciling: {story:?}");
    assert!(
        reconciling.iter().all(|&i| i < first_ready),
        "Reconciling after Ready: {story:?}"
    );
    for (generation, observed, conditions) in &seen {
        assert!(!is(conditions, "Stalled", "True"), "{story:?}");
        if is(conditions, "Reconciling", "True") {
            assert!(is(conditions, "Ready", "False"), "{story:?}");
            assert_eq!(conditions[0].2, "Progressing", "{story:?}");
        }
        assert_eq!(observed, generation, "status observedGeneration");
        for (type_, _, _, condition_generation) in conditions {
            assert_eq!(
                condition_generation, generation,
                "{type_}'s observedGeneration"
            );
        }
    }

    // A spec change: generation 2, whose Ready condition kubectl waits for
    // (it ignores conditions whose observedGeneration is older).
    let extra = cluster.namespace("lc-dst").await;
    let consent = json!({"metadata": {"labels": {"fanout.dev/accept-from-all": "true"}}});
    Api::<Namespace>::all(cluster.client())
        .patch(
            extra.name(),
            &PatchParams::default(),
            &Patch::Merge(&consent),
        )
        .await
        .unwrap();
    let mut more = targets.clone();
    more.push(extra.name());
    let change = json!({"spec": {"targets": {"namespaces": more}}});
    Api::<Fanout>::namespaced(cluster.client(), ns)
        .patch(&name, &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    let took = kubectl_waited(
        cluster,
        ns,
        &name,
        &["--for=condition=Ready", "--timeout=120s"],
    )
    .await;
    let object = get(cluster, &world, &name).await;
    assert_eq!(object.metadata.generation, Some(2));
    assert_observed_current_generation(&object);
    let listed = &object.status.as_ref().unwrap().targets;
    assert!(
        listed
            .iter()
            .any(|t| t.namespace == extra.name() && t.state.as_str() == "Synced"),
        "{listed:?}"
    );
    println!(
        "generation 2: kubectl wait returned 0 after {} ms, with observedGeneration 2 and the new target Synced",
        took.as_millis()
    );
    drop(recorder);
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fanout_whose_source_is_missing_is_stalled_until_the_source_appears() {
    let cluster = testkit::cluster();
    let world = World::new(cluster, 1).await;
    let controller = leading_controller(&world, &[]).await;
    let ns = world.source.name();
    let source = testkit::random_name("absent");
    let name = create_fanout(cluster, &world, &source, &[world.targets[0].name()]);

    let took = kubectl_waited(
        cluster,
        ns,
        &name,
        &["--for=condition=Stalled", "--timeout=60s"],
    )
    .await;
    println!(
        "missing source: kubectl wait --for=condition=Stalled returned 0 after {} ms",
        took.as_millis()
    );
    let object = get(cluster, &world, &name).await;
    assert_observed_current_generation(&object);
    assert_eq!(
        condition(&object, "Stalled").map(|c| (c.0, c.1)),
        Some(("True".into(), "SourceMissing".into()))
    );
    assert_eq!(
        condition(&object, "Ready").map(|c| (c.0, c.1)),
        Some(("False".into(), "SourceMissing".into()))
    );
    assert_eq!(condition(&object, "Reconciling"), None);

    // The source appears: Ready, and no longer Stalled.
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": source}, "stringData": {"token": "l4t3"},
    }))
    .unwrap();
    Api::<Secret>::namespaced(cluster.client(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let took = kubectl_waited(
        cluster,
        ns,
        &name,
        &["--for=condition=Ready", "--timeout=60s"],
    )
    .await;
    println!(
        "source created: kubectl wait --for=condition=Ready returned 0 after {} ms",
        took.as_millis()
    );
    let object = get(cluster, &world, &name).await;
    assert_eq!(condition(&object, "Stalled"), None);
    controller.stop().await;
}

/// The field paths `kubectl explain ROOT --recursive` lists under ROOT
/// (`fanout.spec.targets.selector.matchLabels`, ...).
fn explained_fields(cluster: &Cluster, root: &str) -> Vec<String> {
    let output = cluster.kubectl(&["explain", root, "--recursive"]);
    let mut fields = Vec::new();
    let mut path: Vec<String> = Vec::new();
    let mut in_fields = false;
    for line in output.lines() {
        if line.starts_with("FIELDS:") {
            in_fields = true;
            continue;
        }
        // A field is `<indent>name<TAB><type>`; `enum: ...` lines are not.
        let Some((name, _)) = line.split_once('\t') else {
            continue;
        };
        if !in_fields {
            continue;
        }
        let indent = name.len() - name.trim_start().len();
        let depth = indent / 2 - 1;
        path.truncate(depth);
        path.push(name.trim().to_owned());
        fields.push(format!("{root}.{}", path.join(".")));
    }
    fields
}

/// The DESCRIPTION section of `kubectl explain PATH`, trimmed.
fn description(cluster: &Cluster, path: &str) -> String {
    let output = cluster.kubectl(&["explain", path]);
    let mut lines = output
        .lines()
        .skip_while(|l| !l.starts_with("DESCRIPTION:"));
    lines.next();
    lines
        .take_while(|l| !l.starts_with("FIELDS:"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_explain_describes_every_field_of_spec_and_status() {
    let cluster = testkit::cluster();
    testkit::world::install_crd(cluster);
    // The API server publishes a new CRD's OpenAPI a moment after it is
    // Established.
    testkit::eventually(
        "kubectl explain fanout.spec to answer",
        Duration::from_secs(60),
        || async {
            cluster
                .kubectl_output(&["explain", "fanout.spec"])
                .status
                .success()
                .then_some(())
        },
    )
    .await;
    let mut missing = Vec::new();
    let mut checked = 0;
    for root in ["fanout.spec", "fanout.status"] {
        let fields = explained_fields(cluster, root);
        assert!(fields.len() > 5, "{root}: {fields:?}");
        for path in std::iter::once(root.to_owned()).chain(fields) {
            let text = description(cluster, &path);
            checked += 1;
            if text.is_empty() || text == "<empty>" {
                missing.push(path);
            }
        }
    }
    println!("kubectl explain: {checked} fields of spec and status, each described");
    assert!(
        missing.is_empty(),
        "fields kubectl explain shows without a description: {missing:?}"
    );
    for required in [
        "fanout.spec.targets.selector.matchExpressions.operator",
        "fanout.status.conditions.observedGeneration",
        "fanout.status.targets.lastSyncTime",
    ] {
        assert!(
            !description(cluster, required).is_empty(),
            "{required} is not explained"
        );
    }
}
