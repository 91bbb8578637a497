//! The disposable cluster the bench runs against: clients, bulk set-up and
//! clean-up done fast (no client-side limit: set-up is not what is measured),
//! and the API server's own request metrics.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use kube_lifecycle::ratelimit::RateLimitLayer;
use nix::unistd::Pid;
use serde_json::json;

/// Requests in flight at once during set-up and clean-up.
const BULK_CONCURRENCY: usize = 64;
/// Page size when listing many objects.
const PAGE: u32 = 500;

/// The cluster, reached with its admin kubeconfig.
pub struct Cluster {
    kubeconfig: PathBuf,
    config: Config,
    /// An admin client without any client-side limit.
    pub client: Client,
}

impl Cluster {
    /// Connects with the admin kubeconfig at `kubeconfig` and checks that the API answers.
    pub async fn connect(kubeconfig: &Path) -> Result<Cluster> {
        let parsed = Kubeconfig::read_from(kubeconfig)
            .with_context(|| format!("reading {}", kubeconfig.display()))?;
        let config = Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("loading {}", kubeconfig.display()))?;
        let client = Client::try_from(config.clone()).context("building the admin client")?;
        client
            .apiserver_version()
            .await
            .context("the API server does not answer")?;
        Ok(Cluster {
            kubeconfig: kubeconfig.to_owned(),
            config,
            client,
        })
    }

    /// CPU seconds used so far by the testbed's kube-apiserver and etcd
    /// (their pids are in `<testbed dir>/*.pid`, beside the kubeconfig);
    /// `None` when this is not a `scripts/testbed` cluster.
    pub fn control_plane_cpu_seconds(&self) -> Option<f64> {
        let dir = self.kubeconfig.parent()?;
        let mut total = 0.0;
        for daemon in ["kube-apiserver", "etcd"] {
            let pid = std::fs::read_to_string(dir.join(format!("{daemon}.pid"))).ok()?;
            let pid = Pid::from_raw(pid.trim().parse().ok()?);
            total += testkit::process::cpu_seconds(pid).ok()?;
        }
        Some(total)
    }

    /// The admin kubeconfig (for the controller processes).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL (`https://127.0.0.1:PORT`).
    pub fn server_url(&self) -> String {
        self.config.cluster_url.to_string()
    }

    /// The testbed's PKI (`pki/` beside the kubeconfig), which the fault
    /// proxy serves and trusts.
    pub fn pki_dir(&self) -> Result<PathBuf> {
        let dir = self
            .kubeconfig
            .parent()
            .context("the kubeconfig has no directory")?;
        Ok(dir.join("pki"))
    }

    /// The admin identity's client certificate and key files (the
    /// kubeconfig's `client-certificate` and `client-key`).
    pub fn client_cert(&self) -> Result<(PathBuf, PathBuf)> {
        let auth = &self.config.auth_info;
        match (&auth.client_certificate, &auth.client_key) {
            (Some(cert), Some(key)) => Ok((cert.into(), key.into())),
            _ => bail!(
                "{} names no client-certificate and client-key files",
                self.kubeconfig.display()
            ),
        }
    }

    /// A client behind the same client-side QPS/burst limit as the
    /// controller's (`kube_lifecycle::ratelimit`, as `fanout::app` builds it).
    pub fn limited_client(&self, qps: u32, burst: u32) -> Result<Client> {
        limited(self.config.clone(), qps, burst)
    }

    /// [`Cluster::limited_client`] authenticating with the kubeconfig `text`
    /// (e.g. a ServiceAccount token) instead of the admin identity.
    pub async fn limited_client_as(&self, text: &str, qps: u32, burst: u32) -> Result<Client> {
        let parsed = Kubeconfig::from_yaml(text).context("parsing a kubeconfig")?;
        let config = Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
            .await
            .context("loading a kubeconfig")?;
        limited(config, qps, burst)
    }

    /// Creates each namespace with its labels; an existing one gets the labels patched in.
    pub async fn ensure_namespaces(
        &self,
        namespaces: Vec<(String, BTreeMap<String, String>)>,
    ) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        stream::iter(namespaces)
            .map(|(name, labels)| {
                let api = api.clone();
                async move {
                    let namespace = Namespace {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            labels: Some(labels.clone()),
                            ..ObjectMeta::default()
                        },
                        ..Namespace::default()
                    };
                    match api.create(&PostParams::default(), &namespace).await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(status)) if status.code == 409 => {
                            let patch = json!({"metadata": {"labels": labels}});
                            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                                .await
                                .map(drop)
                                .with_context(|| format!("labelling namespace {name}"))
                        }
                        Err(e) => Err(e).with_context(|| format!("creating namespace {name}")),
                    }
                }
            })
            .buffer_unordered(BULK_CONCURRENCY)
            .try_collect::<()>()
            .await
    }

    /// Creates every Secret (namespace taken from each one's metadata).
    pub async fn create_secrets(&self, secrets: Vec<Secret>) -> Result<()> {
        stream::iter(secrets)
            .map(|secret| {
                let client = self.client.clone();
                async move {
                    let namespace = secret.namespace().context("secret without a namespace")?;
                    Api::<Secret>::namespaced(client, &namespace)
                        .create(&PostParams::default(), &secret)
                        .await
                        .with_context(|| {
                            format!("creating secret {namespace}/{}", secret.name_any())
                        })?;
                    Ok(())
                }
            })
            .buffer_unordered(BULK_CONCURRENCY)
            .try_collect::<()>()
            .await
    }

    /// Names (namespace, name) of every Secret matching `selector`, cluster-wide.
    pub async fn secrets_labelled(&self, selector: &str) -> Result<Vec<(String, String)>> {
        let api: Api<Secret> = Api::all(self.client.clone());
        let mut found = Vec::new();
        let mut params = ListParams::default().labels(selector).limit(PAGE);
        loop {
            let page = api
                .list_metadata(&params)
                .await
                .with_context(|| format!("listing secrets {selector}"))?;
            found.extend(
                page.items
                    .iter()
                    .map(|s| (s.namespace().unwrap_or_default(), s.name_any())),
            );
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => return Ok(found),
            }
        }
    }

    /// Deletes the Secrets matching `selector` in each of `namespaces`, one
    /// `deletecollection` per namespace (much faster than one delete per
    /// Secret when there are many).
    pub async fn delete_collection_labelled(
        &self,
        namespaces: &[String],
        selector: &str,
    ) -> Result<()> {
        stream::iter(namespaces)
            .map(|namespace| {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                let params = ListParams::default().labels(selector);
                async move {
                    api.delete_collection(&DeleteParams::default(), &params)
                        .await
                        .map(drop)
                        .with_context(|| format!("deleting secrets {selector} in {namespace}"))
                }
            })
            .buffer_unordered(BULK_CONCURRENCY / 4)
            .try_collect::<()>()
            .await
    }

    /// Deletes every Secret matching `selector`; returns how many.
    pub async fn delete_secrets_labelled(&self, selector: &str) -> Result<usize> {
        let found = self.secrets_labelled(selector).await?;
        let count = found.len();
        stream::iter(found)
            .map(|(namespace, name)| {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
                async move {
                    match api.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                        Err(e) => {
                            Err(e).with_context(|| format!("deleting secret {namespace}/{name}"))
                        }
                    }
                }
            })
            .buffer_unordered(BULK_CONCURRENCY)
            .try_collect::<()>()
            .await?;
        Ok(count)
    }

    /// The API server's own metrics (`kubectl get --raw /metrics`).
    pub fn apiserver_metrics(&self) -> Result<ApiserverMetrics> {
        let output = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["get", "--raw", "/metrics"])
            .stdin(Stdio::null())
            .output()
            .context("running kubectl (scripts/bench puts the testbed's kubectl on PATH)")?;
        if !output.status.success() {
            bail!(
                "kubectl get --raw /metrics failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(ApiserverMetrics::parse(&String::from_utf8_lossy(
            &output.stdout,
        )))
    }
}

/// What the bench's own clients send as `User-Agent` (the controller's is
/// `fanout/<version> (<identity>)`): the audit log tells them apart.
pub const BENCH_USER_AGENT: &str = "fanout-bench/baseline";

/// A client of `config` behind `kube_lifecycle::ratelimit::RateLimitLayer`
/// with `qps`/`burst` (none when `qps` is 0, as `--kube-qps 0` turns the
/// controller's off), built as the controller's work client is
/// (`kube_lifecycle::client`): kube's own retry of 429/503 off.
fn limited(mut config: Config, qps: u32, burst: u32) -> Result<Client> {
    config.default_retry = false;
    config
        .headers
        .retain(|(name, _)| name.as_str() != "user-agent");
    config
        .headers
        .push(("user-agent".parse()?, BENCH_USER_AGENT.parse()?));
    let builder = ClientBuilder::try_from(config).context("building the limited client")?;
    let Some(qps) = NonZeroU32::new(qps) else {
        return Ok(builder.build());
    };
    let burst = NonZeroU32::new(burst).context("--kube-burst must be positive")?;
    Ok(builder.with_layer(&RateLimitLayer::new(qps, burst)).build())
}

/// Request counters of the API server, by (verb, resource).
#[derive(Clone, Debug, Default)]
pub struct ApiserverMetrics {
    /// `apiserver_request_total`, summed over codes, scopes and versions.
    pub requests: BTreeMap<(String, String), f64>,
    /// `apiserver_longrunning_requests` (open watches), by (verb, resource).
    pub long_running: BTreeMap<(String, String), f64>,
    /// API Priority and Fairness, by priority level: requests rejected
    /// (`apiserver_flowcontrol_rejected_requests_total`).
    pub apf_rejected: BTreeMap<String, f64>,
    /// APF, by priority level: seconds requests waited in its queues
    /// (`apiserver_flowcontrol_request_wait_duration_seconds_sum`).
    pub apf_wait_seconds: BTreeMap<String, f64>,
    /// APF, by priority level: requests dispatched or rejected
    /// (`apiserver_flowcontrol_request_wait_duration_seconds_count`).
    pub apf_requests: BTreeMap<String, f64>,
}

impl ApiserverMetrics {
    fn parse(text: &str) -> ApiserverMetrics {
        let mut metrics = ApiserverMetrics::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let label = |key: &str| {
                labels
                    .split(",")
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.trim_matches('"').to_owned())
                    .unwrap_or_default()
            };
            let apf = match name {
                "apiserver_flowcontrol_rejected_requests_total" => Some(&mut metrics.apf_rejected),
                "apiserver_flowcontrol_request_wait_duration_seconds_sum" => {
                    Some(&mut metrics.apf_wait_seconds)
                }
                "apiserver_flowcontrol_request_wait_duration_seconds_count" => {
                    Some(&mut metrics.apf_requests)
                }
                _ => None,
            };
            if let Some(apf) = apf {
                *apf.entry(label("priority_level")).or_default() += value;
                continue;
            }
            let target = match name {
                "apiserver_request_total" => &mut metrics.requests,
                "apiserver_longrunning_requests" => &mut metrics.long_running,
                _ => continue,
            };
            let resource = match label("subresource").as_str() {
                "" => label("resource"),
                sub => format!("{}/{sub}", label("resource")),
            };
            if resource.is_empty() {
                continue; // non-resource URLs (/metrics, /readyz, discovery)
            }
            *target.entry((label("verb"), resource)).or_default() += value;
        }
        metrics
    }

    /// Requests made between `earlier` and `self`, by (verb, resource), zeros left out.
    pub fn requests_since(&self, earlier: &ApiserverMetrics) -> BTreeMap<(String, String), u64> {
        self.requests
            .iter()
            .filter_map(|(key, now)| {
                let before = earlier.requests.get(key).copied().unwrap_or(0.0);
                let delta = (now - before).round();
                (delta >= 1.0).then(|| (key.clone(), delta as u64))
            })
            .collect()
    }

    /// APF per priority level between `earlier` and `self`: requests,
    /// seconds waited in queues, rejections (levels without requests left out).
    pub fn apf_since(&self, earlier: &ApiserverMetrics) -> Vec<crate::results::ApfDelta> {
        let delta = |now: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>, key: &str| {
            now.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
        };
        self.apf_requests
            .keys()
            .chain(self.apf_rejected.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|level| crate::results::ApfDelta {
                priority_level: level.clone(),
                requests: delta(&self.apf_requests, &earlier.apf_requests, level).round() as u64,
                wait_seconds: delta(&self.apf_wait_seconds, &earlier.apf_wait_seconds, level),
                rejected: delta(&self.apf_rejected, &earlier.apf_rejected, level).round() as u64,
            })
            .filter(|d| d.requests > 0 || d.rejected > 0)
            .collect()
    }

    /// Watches opened between `earlier` and `self` and still open, by (verb, resource).
    pub fn watches_since(&self, earlier: &ApiserverMetrics) -> BTreeMap<(String, String), u64> {
        self.long_running
            .iter()
            .filter_map(|(key, now)| {
                let before = earlier.long_running.get(key).copied().unwrap_or(0.0);
                let delta = (now - before).round();
                (delta >= 1.0).then(|| (key.clone(), delta as u64))
            })
            .collect()
    }
}
