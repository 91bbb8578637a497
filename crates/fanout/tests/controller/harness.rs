//! Shared by the controller tests: the Fanout CRD installed on the test
//! control plane (`testkit::testbed`), the controller run in-process
//! through `fanout::controller::run` with `Handles` built here, and helpers
//! to make namespaces, sources and Fanouts and to wait for results.
//!
//! Tests of one binary run side by side on one API server, so each test's
//! controller only watches Fanouts carrying its own random label
//! (`Settings::fanout_selector`), and every object lives in the test's own
//! random namespaces.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fanout::context::Settings;
use fanout::crd::{
    ConflictPolicy, FanoutSpec, NamespaceSelector, SourceKind, SourceRef, TargetState, Targets,
};
use fanout::{Fanout, crd_yaml};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::client::ClientBuilder;
use kube::{Api, Client, ResourceExt};
use kube_lifecycle::Handles;
use kube_lifecycle::deadline::DeadlineLayer;
use kube_lifecycle::health::Health;
use prometheus::Registry;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use testkit::{Cluster, TestNamespace};

/// Label that scopes a test's Fanouts to its own controller.
pub const SHARD_LABEL: &str = "fanout.dev/test-shard";

/// Installs the CRD (once per test binary) and waits until it is served.
/// Tests run side by side: the first one installs, the others wait for it
/// (two concurrent `kubectl apply`s of a missing CRD both try to create it,
/// and one of them fails with AlreadyExists).
pub async fn install_crd(cluster: &Cluster) {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED.get_or_init(|| establish_crd(cluster)).await;
}

async fn establish_crd(cluster: &Cluster) {
    cluster.apply_yaml(&crd_yaml());
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client());
    testkit::eventually(
        "the Fanout CRD to be established",
        Duration::from_secs(30),
        || {
            let crds = crds.clone();
            async move {
                let crd = crds.get("fanouts.fanout.dev").await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        },
    )
    .await;
}

/// A controller running in this test's runtime.
pub struct Controller {
    pub registry: Registry,
    pub health: Health,
    pub leader: watch::Sender<bool>,
    pub drain: CancellationToken,
    pub abort: CancellationToken,
    task: JoinHandle<Result<(), fanout::controller::Error>>,
}

impl Controller {
    /// Drains it (as the first signal would) and waits for `run` to return.
    pub async fn drain(self) {
        self.drain.cancel();
        let result = tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the controller drains within 60s")
            .expect("the controller task does not panic");
        result.expect("the controller returns Ok after a drain");
    }

    /// Begins a drain, fires the abort token (the drain deadline) after
    /// `deadline`, and returns how long `run` took to return after the abort.
    pub async fn drain_with_deadline(self, deadline: Duration) -> Duration {
        self.drain.cancel();
        tokio::time::sleep(deadline).await;
        self.abort.cancel();
        let aborted = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the controller returns after an abort")
            .expect("the controller task does not panic")
            .expect("the controller returns Ok after an abort");
        aborted.elapsed()
    }

    /// Stops it abruptly, as a crash or `kill -9` would: nothing is finished.
    pub fn kill(self) {
        self.task.abort();
    }

    /// A counter that may not have been incremented yet (its series then
    /// does not exist): 0 until it is.
    pub fn count(&self, name: &str, labels: &[&str]) -> f64 {
        let exists = self.registry.gather().iter().any(|f| {
            f.name() == name
                && f.get_metric().iter().any(|m| {
                    labels
                        .iter()
                        .all(|want| m.get_label().iter().any(|l| l.value() == *want))
                })
        });
        if exists {
            self.metric(name, labels)
        } else {
            0.0
        }
    }

    /// The value of a metric series whose labels include all of `labels`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let family = self
            .registry
            .gather()
            .into_iter()
            .find(|f| f.name() == name)
            .unwrap_or_else(|| panic!("no metric {name}"));
        let metric = family
            .get_metric()
            .iter()
            .find(|m| {
                labels
                    .iter()
                    .all(|want| m.get_label().iter().any(|l| l.value() == *want))
            })
            .unwrap_or_else(|| panic!("no series of {name} with {labels:?}"));
        match family.get_field_type() {
            prometheus::proto::MetricType::COUNTER => metric.get_counter().get_value(),
            prometheus::proto::MetricType::GAUGE => metric.get_gauge().get_value(),
            _ => metric.get_histogram().get_sample_count() as f64,
        }
    }
}

/// One test's world: its shard label, its namespaces, its controller.
pub struct World {
    pub cluster: &'static Cluster,
    pub client: Client,
    pub shard: String,
    /// The source namespace (where Fanouts and sources live).
    pub source_ns: TestNamespace,
    namespaces: Vec<TestNamespace>,
}

impl World {
    /// A fresh world with a source namespace.
    pub async fn new(prefix: &str) -> World {
        // Controller logs, when asked for with RUST_LOG (e.g. RUST_LOG=fanout=debug).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let cluster = testkit::cluster();
        install_crd(cluster).await;
        let source_ns = cluster.namespace(&format!("{prefix}-src")).await;
        World {
            cluster,
            client: cluster.client(),
            shard: testkit::random_name("shard"),
            source_ns,
            namespaces: Vec::new(),
        }
    }

    /// The source namespace's name.
    pub fn src(&self) -> &str {
        self.source_ns.name()
    }

    /// Settings for this world's controller: its shard selector, short
    /// intervals so tests converge quickly.
    pub fn settings(&self) -> Settings {
        Settings {
            fanout_selector: Some(format!("{SHARD_LABEL}={}", self.shard)),
            status_interval: Duration::from_millis(200),
            retry_interval: Duration::from_secs(2),
            write_timeout: Duration::from_secs(10),
            ..Settings::default()
        }
    }

    /// Starts a controller that is leader from the start.
    pub fn start(&self, settings: Settings) -> Controller {
        self.start_with_delay(settings, None)
    }

    /// Starts a controller that is not leader until its `leader` is set.
    pub fn start_standby(&self, settings: Settings) -> Controller {
        self.launch(settings, None, false)
    }

    /// Starts a controller whose writes into target namespaces each take
    /// `delay(namespace)` longer, as on a slow API server (see [`WriteDelay`]).
    pub fn start_with_delay(&self, settings: Settings, delay: Option<WriteDelay>) -> Controller {
        self.launch(settings, delay, true)
    }

    fn launch(&self, settings: Settings, delay: Option<WriteDelay>, leader: bool) -> Controller {
        let mut config = self.cluster.config();
        config.default_retry = false;
        // Names the controller in the API server's audit log.
        let agent = format!("fanout-test/{}", self.shard);
        config.headers.push((
            http::header::USER_AGENT,
            agent.parse().expect("a header value"),
        ));
        let builder = ClientBuilder::try_from(config).expect("client from the testbed config");
        let deadline = DeadlineLayer::new(settings.write_timeout);
        let client = match delay {
            Some(delay) => builder.with_layer(&delay).with_layer(&deadline).build(),
            None => builder.with_layer(&deadline).build(),
        };
        let registry = Registry::new();
        let health = Health::new();
        let (leader, leader_rx) = watch::channel(leader);
        let drain = CancellationToken::new();
        let abort = CancellationToken::new();
        let handles = Handles {
            client,
            api_server: self.cluster.server_url(),
            registry: registry.clone(),
            health: health.clone(),
            leader: leader_rx,
            drain: drain.clone(),
            abort: abort.clone(),
        };
        let task = tokio::spawn(fanout::controller::run(handles, settings));
        Controller {
            registry,
            health,
            leader,
            drain,
            abort,
            task,
        }
    }

    /// A target namespace with these labels, deleted when the world is dropped.
    pub async fn namespace(&mut self, prefix: &str, labels: &[(&str, &str)]) -> String {
        let ns = self.cluster.namespace(prefix).await;
        let name = ns.name().to_owned();
        if !labels.is_empty() {
            self.label_namespace(&name, labels).await;
        }
        self.namespaces.push(ns);
        name
    }

    /// A namespace that accepts copies from this world's source namespace.
    pub async fn consenting(&mut self, prefix: &str) -> String {
        let label = self.consent_label();
        self.namespace(prefix, &[(&label, "true")]).await
    }

    /// The consent label for this world's source namespace.
    pub fn consent_label(&self) -> String {
        format!("fanout.dev/accept-from.{}", self.src())
    }

    /// Sets (`Some`) or removes (`None`) namespace labels.
    pub async fn set_namespace_labels(&self, name: &str, labels: &[(&str, Option<&str>)]) {
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    v.map_or(serde_json::Value::Null, |v| json!(v)),
                )
            })
            .collect();
        Api::<Namespace>::all(self.client.clone())
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": labels}})),
            )
            .await
            .unwrap();
    }

    async fn label_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: Vec<(&str, Option<&str>)> =
            labels.iter().map(|(k, v)| (*k, Some(*v))).collect();
        self.set_namespace_labels(name, &labels).await;
    }

    /// Creates a Secret in the source namespace.
    pub async fn secret(&self, name: &str, data: &[(&str, &str)]) -> Secret {
        let secret = secret(name, data);
        Api::<Secret>::namespaced(self.client.clone(), self.src())
            .create(&PostParams::default(), &secret)
            .await
            .unwrap()
    }

    /// A Fanout of this world's shard; not yet created.
    pub fn fanout(&self, name: &str, source: &str, targets: Targets) -> Fanout {
        let mut fanout = Fanout::new(
            name,
            FanoutSpec {
                source: SourceRef {
                    kind: SourceKind::Secret,
                    name: source.to_owned(),
                },
                targets,
                copy_name: None,
                conflict_policy: ConflictPolicy::Skip,
                prune: true,
            },
        );
        fanout.metadata.namespace = Some(self.src().to_owned());
        fanout.metadata.labels = Some(BTreeMap::from([(
            SHARD_LABEL.to_owned(),
            self.shard.clone(),
        )]));
        fanout
    }

    /// Creates `fanout`.
    pub async fn create(&self, fanout: &Fanout) -> Fanout {
        self.fanouts()
            .create(&PostParams::default(), fanout)
            .await
            .unwrap()
    }

    /// The Fanout API of the source namespace.
    pub fn fanouts(&self) -> Api<Fanout> {
        Api::namespaced(self.client.clone(), self.src())
    }

    /// Secrets in `namespace`.
    pub fn secrets(&self, namespace: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Secrets in every namespace.
    pub fn secrets_all(&self) -> Api<Secret> {
        Api::all(self.client.clone())
    }

    /// ConfigMaps in `namespace`.
    pub fn config_maps(&self, namespace: &str) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Waits until the Fanout's status satisfies `check`, and returns it.
    pub async fn wait_fanout(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Fanout) -> bool,
    ) -> Fanout {
        let api = self.fanouts();
        testkit::eventually(what, Duration::from_secs(60), || {
            let api = api.clone();
            let check = &check;
            async move { api.get(name).await.ok().filter(|f| check(f)) }
        })
        .await
    }

    /// Waits until every listed target of the Fanout is Synced with the
    /// current generation observed.
    pub async fn wait_synced(&self, name: &str, targets: usize) -> Fanout {
        self.wait_fanout(
            name,
            &format!("Fanout {name} to have {targets} Synced targets"),
            |f| {
                f.status.as_ref().is_some_and(|s| {
                    s.observed_generation == f.metadata.generation
                        && s.summary.desired as usize == targets
                        && s.summary.synced as usize == targets
                        && ready_reason(f).as_deref() == Some("Synced")
                })
            },
        )
        .await
    }

    /// Waits until `namespace/name` satisfies `check` (`None`: absent).
    pub async fn wait_secret(
        &self,
        namespace: &str,
        name: &str,
        what: &str,
        check: impl Fn(Option<&Secret>) -> bool,
    ) {
        let api = self.secrets(namespace);
        testkit::eventually(what, Duration::from_secs(60), || {
            let api = api.clone();
            let check = &check;
            async move {
                let found = api.get_opt(name).await.ok()?;
                check(found.as_ref()).then_some(())
            }
        })
        .await
    }

    /// Deletes a Fanout and waits until it is gone (its controller must run).
    pub async fn delete_fanout(&self, name: &str) {
        let api = self.fanouts();
        let _ = api.delete(name, &DeleteParams::default()).await;
        testkit::eventually(
            &format!("Fanout {name} to be gone"),
            Duration::from_secs(60),
            || {
                let api = api.clone();
                async move { matches!(api.get_opt(name).await, Ok(None)).then_some(()) }
            },
        )
        .await;
    }

    /// Waits for an Event about Fanout `name` whose `reason: note` line
    /// starts with `prefix` (Events follow the status write they describe).
    pub async fn wait_event(&self, name: &str, prefix: &str) -> String {
        testkit::eventually(
            &format!("an Event {prefix:?} on {name}"),
            Duration::from_secs(30),
            || async {
                self.events(name)
                    .await
                    .into_iter()
                    .find(|e| e.starts_with(prefix))
            },
        )
        .await
    }

    /// Events about the Fanout `name`, as `reason: note` lines.
    pub async fn events(&self, name: &str) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), self.src());
        let params = ListParams::default().fields(&format!("regarding.name={name}"));
        events
            .list(&params)
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default()
                )
            })
            .collect()
    }
}

/// A test-made latency in front of every write (POST, PUT, PATCH, DELETE)
/// of a Secret or ConfigMap, chosen per target namespace: what a slow API
/// server does. It sits under the controller's request deadline, so it
/// counts against `--write-timeout` like real latency would. A tower layer
/// on the test's own client: the controller has no test hook.
#[derive(Clone)]
pub struct WriteDelay(Arc<dyn Fn(&str) -> Duration + Send + Sync>);

impl WriteDelay {
    /// Delays each write into namespace `ns` by `delay(ns)`.
    pub fn new(delay: impl Fn(&str) -> Duration + Send + Sync + 'static) -> Self {
        Self(Arc::new(delay))
    }
}

impl<S> tower::Layer<S> for WriteDelay {
    type Service = Delayed<S>;

    fn layer(&self, inner: S) -> Delayed<S> {
        Delayed {
            inner,
            delay: self.clone(),
        }
    }
}

/// The service [`WriteDelay`] makes.
pub struct Delayed<S> {
    inner: S,
    delay: WriteDelay,
}

impl<S, B> tower::Service<http::Request<B>> for Delayed<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let delay = write_target(&request).map(|ns| (self.delay.0)(&ns));
        // The client's request future does nothing until polled, so
        // sleeping first delays the request itself.
        let response = self.inner.call(request);
        Box::pin(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            response.await
        })
    }
}

/// The namespace of a write to a Secret or ConfigMap, from its path
/// (`/api/v1/namespaces/{ns}/secrets[/name]`).
fn write_target<B>(request: &http::Request<B>) -> Option<String> {
    if request.method() == http::Method::GET {
        return None;
    }
    let mut parts = request.uri().path().trim_start_matches('/').split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("api"), Some("v1"), Some("namespaces"), Some(ns), Some("secrets" | "configmaps")) => {
            Some(ns.to_owned())
        }
        _ => None,
    }
}

/// A Secret object (not created).
pub fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Targets listing these namespaces.
pub fn names(namespaces: &[&str]) -> Targets {
    Targets {
        namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
        ..Targets::default()
    }
}

/// Targets selected by these labels.
pub fn selected(labels: &[(&str, &str)]) -> Targets {
    Targets {
        selector: Some(NamespaceSelector {
            match_labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            match_expressions: vec![],
        }),
        ..Targets::default()
    }
}

/// The Ready condition's reason.
pub fn ready_reason(fanout: &Fanout) -> Option<String> {
    fanout
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.clone())
}

/// The listed targets as `(namespace, state)`.
pub fn states(fanout: &Fanout) -> Vec<(String, TargetState)> {
    fanout
        .status
        .iter()
        .flat_map(|s| &s.targets)
        .map(|t| (t.namespace.clone(), t.state))
        .collect()
}

/// A Secret's data value as text.
pub fn value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

/// Whether a Secret carries the ownership labels of Fanout `uid`.
pub fn owned_by(secret: &Secret, uid: &str) -> bool {
    secret
        .labels()
        .get("fanout.dev/fanout-uid")
        .map(String::as_str)
        == Some(uid)
}
