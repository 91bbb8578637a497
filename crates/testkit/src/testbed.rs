//! A real control plane (etcd + kube-apiserver) for the integration tests.
//!
//! Use it like this:
//!
//! ```ignore
//! #[tokio::test]
//! async fn copies_a_secret() {
//!     let cluster = testkit::cluster(); // starts the control plane on first use
//!     let ns = cluster.namespace("copies").await; // deleted when `ns` is dropped
//!     let secrets: kube::Api<Secret> = kube::Api::namespaced(cluster.client(), ns.name());
//!     // ...
//! }
//! ```
//!
//! Where the control plane comes from:
//! - `FANOUT_TEST_KUBECONFIG` set (`scripts/test` does this): the shared testbed
//!   that `scripts/test` started and will stop. Tests must therefore isolate
//!   themselves in their own namespaces ([`Cluster::namespace`]) and random
//!   names ([`random_name`]).
//! - otherwise: a private one for this test binary, started with
//!   `scripts/testbed up --dir <temp dir>`. Rust runs no destructor for a
//!   static, and a panicking or killed test binary runs none at all, so a
//!   watcher process (in its own session, so a Ctrl-C does not take it down
//!   first) polls this process's pid and runs `scripts/testbed down` once it is
//!   gone. `PR_SET_PDEATHSIG` would not do: it fires when the spawning
//!   *thread* exits, and each test runs on a short-lived thread.
//!
//! If the control plane cannot be started, every test that asks for it panics
//! with the reason (the tail of the failing log); none silently passes.
//!
//! A [`kube::Client`] is bound to the tokio runtime it was made in, and each
//! `#[tokio::test]` has its own runtime, so [`Cluster::client`] makes a fresh
//! client per call (cheap) instead of sharing one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rand::Rng;

/// Environment variable naming the admin kubeconfig of a control plane shared
/// by every test binary of a run (set by `scripts/test`).
pub const SHARED_KUBECONFIG_ENV: &str = "FANOUT_TEST_KUBECONFIG";

/// Label put on every namespace made by [`Cluster::namespace`], so leftovers
/// of a crashed run on a shared testbed can be found and removed.
pub const TEST_NAMESPACE_LABEL: &str = "fanout.dev/test";

/// The repository root (scripts, the chart and the tools live under it).
pub fn repo_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// The control plane of this test binary, started on first use.
///
/// Panics (in every test that calls it) if it could not be started.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match CLUSTER.get_or_init(Cluster::start) {
        Ok(cluster) => cluster,
        Err(reason) => panic!("no control plane for the tests: {reason}"),
    }
}

/// A lowercase, DNS-label-safe name: `prefix-` followed by 8 random characters.
pub fn random_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    let prefix: String = prefix.chars().take(63 - suffix.len() - 1).collect();
    format!("{prefix}-{suffix}")
}

/// Runs `SCRIPT up --dir DIR` (scripts/testbed or scripts/node) and reads
/// the two lines it prints: the kubeconfig and the tools' bin directory.
pub fn script_up(script: &Path, dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let name = script.display();
    let output = Command::new(script)
        .args(["up", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("{name} up failed ({}):\n{stderr}", output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let export = |variable: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(&format!("export {variable}=")))
            .map(str::to_owned)
            .ok_or_else(|| format!("{name} up printed no {variable}:\n{stdout}\n{stderr}"))
    };
    let kubeconfig = PathBuf::from(export("KUBECONFIG")?);
    let path = export("PATH")?;
    let tools_bin = PathBuf::from(path.strip_suffix(":$PATH").unwrap_or(&path));
    Ok((kubeconfig, tools_bin))
}

/// A running kube-apiserver with an admin identity (group `system:masters`).
pub struct Cluster {
    kubeconfig: PathBuf,
    tools_bin: PathBuf,
    /// Admin config, parsed once.
    config: Config,
    /// Set when this binary started its own testbed (else it is shared).
    private_dir: Option<PathBuf>,
}

impl Cluster {
    fn start() -> Result<Cluster, String> {
        match std::env::var_os(SHARED_KUBECONFIG_ENV) {
            Some(kubeconfig) => {
                Cluster::from_kubeconfig(PathBuf::from(kubeconfig), tools_bin()?, None)
            }
            None => Cluster::start_private(),
        }
    }

    /// A control plane of the caller's own, not the binary's shared one:
    /// for tests that freeze, kill and restart the API server or etcd, which
    /// would disturb every other test on a shared one. Torn down when the
    /// test binary exits (a watcher process makes sure of it).
    pub fn start_private() -> Result<Cluster, String> {
        let dir = std::env::temp_dir().join(format!(
            "{}-{}",
            random_name("fanout-testbed"),
            std::process::id()
        ));
        testbed_down_on_exit(&dir)?;
        let (kubeconfig, tools_bin) = script_up(&repo_root().join("scripts/testbed"), &dir)?;
        Cluster::from_kubeconfig(kubeconfig, tools_bin, Some(dir))
    }

    /// A control plane started by someone else (e.g. the benchmark's private
    /// `scripts/testbed`), reached with its admin kubeconfig, with the pinned
    /// tools in `tools_bin`. Nothing is torn down by this value.
    pub fn attach(kubeconfig: &Path, tools_bin: &Path) -> Result<Cluster, String> {
        Cluster::from_kubeconfig(kubeconfig.to_owned(), tools_bin.to_owned(), None)
    }

    fn from_kubeconfig(
        kubeconfig: PathBuf,
        tools_bin: PathBuf,
        private_dir: Option<PathBuf>,
    ) -> Result<Cluster, String> {
        let parsed = Kubeconfig::read_from(&kubeconfig)
            .map_err(|e| format!("cannot read {}: {e}", kubeconfig.display()))?;
        // Loading a client-certificate kubeconfig does no I/O that needs a
        // runtime, so it can be driven here, inside or outside a test runtime.
        let config = futures::executor::block_on(Config::from_custom_kubeconfig(
            parsed,
            &KubeConfigOptions::default(),
        ))
        .map_err(|e| format!("cannot load {}: {e}", kubeconfig.display()))?;
        Ok(Cluster {
            kubeconfig,
            tools_bin,
            config,
            private_dir,
        })
    }

    /// An admin client. Needs a tokio runtime (call it inside the test).
    pub fn client(&self) -> Client {
        Client::try_from(self.config.clone()).expect("admin client from the testbed kubeconfig")
    }

    /// The admin client configuration (e.g. to run a controller in-process).
    pub fn config(&self) -> Config {
        self.config.clone()
    }

    /// The admin kubeconfig (e.g. for `KUBECONFIG=` of a child process).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> String {
        self.config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_owned()
    }

    /// The directory holding the pinned kubectl, helm, etcd and kube-apiserver.
    pub fn tools_bin(&self) -> &Path {
        &self.tools_bin
    }

    /// The testbed's state directory (PKI, logs, audit log).
    pub fn testbed_dir(&self) -> &Path {
        self.kubeconfig
            .parent()
            .expect("the kubeconfig lives in the testbed directory")
    }

    /// The testbed's PKI directory (`ca.crt`, `apiserver.crt`, ...).
    pub fn pki_dir(&self) -> PathBuf {
        self.testbed_dir().join("pki")
    }

    /// Runs `scripts/testbed ACTION DAEMON` on this testbed: `freeze`,
    /// `thaw`, `kill` or `start` for `etcd` or `kube-apiserver`.
    pub fn testbed(&self, action: &str, daemon: &str) {
        let output = Command::new(repo_root().join("scripts/testbed"))
            .args([action, daemon, "--dir"])
            .arg(self.testbed_dir())
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/testbed");
        assert!(
            output.status.success(),
            "scripts/testbed {action} {daemon} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The API server's audit log so far (see `scripts/testbed`).
    pub fn audit(&self) -> Vec<AuditEvent> {
        let text =
            std::fs::read_to_string(self.testbed_dir().join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| event["stage"] == "ResponseComplete")
            .map(|event| AuditEvent::from_json(&event))
            .collect()
    }

    /// The API server's audit log, read incrementally from marks (for
    /// long runs whose log is large, and rotated at 200 MB).
    pub fn audit_log(&self) -> crate::audit::AuditLog {
        crate::audit::AuditLog::new(self.testbed_dir())
    }

    /// The testbed directory, if this test binary started its own.
    pub fn private_dir(&self) -> Option<&Path> {
        self.private_dir.as_deref()
    }

    /// A command for one of the pinned tools (`kubectl`, `helm`, ...), with
    /// `KUBECONFIG` set to the admin kubeconfig and the tools first on `PATH`.
    pub fn command(&self, tool: &str) -> Command {
        let mut command = Command::new(self.tools_bin.join(tool));
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![self.tools_bin.clone()];
        paths.extend(std::env::split_paths(&path));
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", std::env::join_paths(paths).expect("PATH entries"))
            .stdin(Stdio::null());
        command
    }

    /// Runs kubectl and returns its output, whatever its exit status.
    pub fn kubectl_output(&self, args: &[&str]) -> Output {
        self.command("kubectl")
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// Runs kubectl, panics with its stderr if it fails, returns its stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let output = self.kubectl_output(args);
        assert!(
            output.status.success(),
            "kubectl {} failed ({}):\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `kubectl apply -f -` of a YAML text (one or more documents); panics on failure.
    pub fn apply_yaml(&self, yaml: &str) -> String {
        use std::io::Write;
        let mut child = self
            .command("kubectl")
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl apply");
        child
            .stdin
            .take()
            .expect("kubectl stdin")
            .write_all(yaml.as_bytes())
            .expect("write manifest to kubectl");
        let output = child.wait_with_output().expect("wait for kubectl apply");
        assert!(
            output.status.success(),
            "kubectl apply failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A new namespace with a random name starting with `prefix`, deleted
    /// (without waiting for it to go) when the returned value is dropped.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        let name = random_name(prefix);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_NAMESPACE_LABEL.to_owned(), "true".to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        TestNamespace {
            name,
            kubectl: self.tools_bin.join("kubectl"),
            kubeconfig: self.kubeconfig.clone(),
        }
    }

    /// Creates ServiceAccount `name` in `namespace` unless it exists.
    pub async fn ensure_service_account(&self, namespace: &str, name: &str) {
        let api: Api<ServiceAccount> = Api::namespaced(self.client(), namespace);
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        match api.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => panic!("create serviceaccount {namespace}/{name}: {e}"),
        }
    }

    /// A token for an existing ServiceAccount, issued by the API server's
    /// TokenRequest API (valid for an hour), exactly as a pod would get one.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let api: Api<ServiceAccount> = Api::namespaced(self.client(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let issued: TokenRequest = api
            .create_subresource("token", name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("token request for {namespace}/{name}: {e}"));
        issued
            .status
            .unwrap_or_else(|| panic!("token request for {namespace}/{name} returned no status"))
            .token
    }

    /// A kubeconfig that authenticates with `token` (and trusts the
    /// testbed's CA), e.g. to run a process as a ServiceAccount.
    pub fn token_kubeconfig(&self, token: &str) -> String {
        let admin = Kubeconfig::read_from(&self.kubeconfig).expect("read admin kubeconfig");
        let cluster = admin
            .clusters
            .first()
            .and_then(|named| named.cluster.clone())
            .expect("admin kubeconfig has a cluster");
        let server = cluster.server.expect("admin kubeconfig has a server");
        let ca = cluster
            .certificate_authority
            .expect("admin kubeconfig names its CA file");
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "testbed", "cluster": {"server": server, "certificate-authority": ca}}],
            "users": [{"name": "token", "user": {"token": token}}],
            "contexts": [{"name": "token", "context": {"cluster": "testbed", "user": "token"}}],
            "current-context": "token",
        });
        serde_yaml::to_string(&config).expect("serialize kubeconfig")
    }

    /// A client that authenticates with a bearer token (and trusts the testbed's CA).
    pub async fn client_with_token(&self, token: &str) -> Client {
        let kubeconfig =
            Kubeconfig::from_yaml(&self.token_kubeconfig(token)).expect("parse token kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("load token kubeconfig");
        Client::try_from(config).expect("token client")
    }

    /// A client acting as ServiceAccount `namespace/name` (created if missing),
    /// with a token from the TokenRequest API: it can do exactly what RBAC grants it.
    pub async fn service_account_client(&self, namespace: &str, name: &str) -> Client {
        self.ensure_service_account(namespace, name).await;
        let token = self.service_account_token(namespace, name).await;
        self.client_with_token(&token).await
    }
}

/// One request as the API server's audit log recorded it (stage
/// `ResponseComplete`).
#[derive(Clone, Debug)]
pub struct AuditEvent {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, ...
    pub verb: String,
    /// The authenticated user, e.g. `system:serviceaccount:ns:name`.
    pub user: String,
    /// The client's User-Agent.
    pub user_agent: String,
    /// `leases`, `secrets`, `fanouts`, ...
    pub resource: String,
    /// `status` for a status write, else empty.
    pub subresource: String,
    /// The object's namespace, if namespaced.
    pub namespace: String,
    /// The object's name, if one object.
    pub name: String,
    /// The HTTP status code answered.
    pub code: i64,
    /// When the request arrived.
    pub received: k8s_openapi::jiff::Timestamp,
    /// When the response was complete.
    pub completed: k8s_openapi::jiff::Timestamp,
}

impl AuditEvent {
    fn from_json(event: &serde_json::Value) -> AuditEvent {
        let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_owned();
        let time = |value: &serde_json::Value| {
            value
                .as_str()
                .and_then(|t| t.parse().ok())
                .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
        };
        let object = &event["objectRef"];
        AuditEvent {
            verb: text(&event["verb"]),
            user: text(&event["user"]["username"]),
            user_agent: text(&event["userAgent"]),
            resource: text(&object["resource"]),
            subresource: text(&object["subresource"]),
            namespace: text(&object["namespace"]),
            name: text(&object["name"]),
            code: event["responseStatus"]["code"].as_i64().unwrap_or_default(),
            received: time(&event["requestReceivedTimestamp"]),
            completed: time(&event["stageTimestamp"]),
        }
    }

    /// The event of one parsed line of the audit log (any stage; see
    /// [`crate::audit`] for reading the log incrementally).
    pub fn from_audit_json(event: &serde_json::Value) -> AuditEvent {
        AuditEvent::from_json(event)
    }

    /// Whether it changed something (a write verb).
    pub fn is_write(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete")
    }
}

/// A namespace that exists for one test; deleted when dropped, panic or not.
pub struct TestNamespace {
    name: String,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

impl TestNamespace {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    /// Asks for the deletion and returns: the namespace controller is not
    /// running here, so waiting for it to disappear would be waiting forever;
    /// what matters is that later tests never see this namespace's objects.
    /// kubectl (blocking, bounded by a timeout) rather than the async client,
    /// because a test's runtime may already be shutting down.
    fn drop(&mut self) {
        let result = Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--request-timeout=10s",
            ])
            .args(["--ignore-not-found"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        match result {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "warning: could not delete test namespace {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(e) => eprintln!(
                "warning: could not run kubectl to delete namespace {}: {e}",
                self.name
            ),
        }
    }
}

/// Where the pinned tools are: `FANOUT_TEST_TOOLS_BIN` (set by `scripts/test`),
/// else what `scripts/tools-build` prints (instant when they are built).
fn tools_bin() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("FANOUT_TEST_TOOLS_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let output = Command::new(repo_root().join("scripts/tools-build"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run scripts/tools-build: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "scripts/tools-build failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

/// Starts a process, in its own session, that waits for this test binary to
/// end (however it ends, SIGKILL included) and then runs
/// `scripts/testbed down --dir <dir>`. For a test that starts a testbed of its
/// own: call it before `scripts/testbed up`.
pub fn testbed_down_on_exit(dir: &Path) -> Result<(), String> {
    const WATCH: &str = r#"
        pid=$1 testbed=$2 dir=$3
        # Gone, or a zombie waiting for its parent: either way it is over.
        while state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) && [ "$state" != Z ]; do
            sleep 0.5
        done
        exec "$testbed" down --dir "$dir"
    "#;
    Command::new("setsid")
        .args(["bash", "-c", WATCH, "fanout-testbed-watcher"])
        .arg(std::process::id().to_string())
        .arg(repo_root().join("scripts/testbed"))
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|e| format!("cannot start the testbed watcher (setsid, from util-linux): {e}"))
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout`
/// with `what` (for things the API server does asynchronously, like a CRD
/// becoming Established or RBAC reaching the authorizer's cache).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
