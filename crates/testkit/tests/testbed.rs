//! Proves that the test control plane (`scripts/testbed`, `testkit::testbed`) is a
//! real Kubernetes API server: it serves CRDs and enforces their schemas,
//! authenticates ServiceAccount tokens and authorises them with RBAC, reports
//! the pinned version, listens on loopback only, and leaves no process behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, ListParams, ObjectMeta, PostParams};
use kube::core::GroupVersionKind;
use kube::{Api, Client};

const WIDGET_CRD: &str = "widgets.testbed.fanout.dev";

/// The Kubernetes version pinned in tools/versions.env.
fn pinned_kubernetes_version() -> String {
    let versions =
        std::fs::read_to_string(testkit::repo_root().join("tools/versions.env")).unwrap();
    versions
        .lines()
        .find_map(|line| line.strip_prefix("KUBERNETES_VERSION="))
        .expect("KUBERNETES_VERSION in tools/versions.env")
        .trim()
        .to_owned()
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an error status from the API server, got {other:?}"),
    }
}

async fn establish_widget_crd(client: Client) -> ApiResource {
    let cluster = testkit::cluster();
    let manifest = testkit::repo_root().join("testdata/testbed/widget-crd.yaml");
    cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    testkit::eventually(
        "the Widget CRD to be Established",
        Duration::from_secs(30),
        || {
            let crds = crds.clone();
            async move {
                let crd = crds.get(WIDGET_CRD).await.ok()?;
                let established = crd
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            }
        },
    )
    .await;
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("testbed.fanout.dev", "v1", "Widget"),
        "widgets",
    )
}

fn widget(name: &str, spec: serde_json::Value) -> DynamicObject {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("testbed.fanout.dev", "v1", "Widget"),
        "widgets",
    );
    let mut object = DynamicObject::new(name, &resource);
    object.data = serde_json::json!({ "spec": spec });
    object
}

#[tokio::test]
async fn a_crd_is_served_once_established() {
    let cluster = testkit::cluster();
    let client = cluster.client();
    let resource = establish_widget_crd(client.clone()).await;
    let ns = cluster.namespace("crd").await;
    let widgets: Api<DynamicObject> = Api::namespaced_with(client, ns.name(), &resource);

    let created = widgets
        .create(
            &PostParams::default(),
            &widget("ok", serde_json::json!({"size": "small", "count": 3})),
        )
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some(), "the server assigns a uid");

    let read = widgets.get("ok").await.unwrap();
    assert_eq!(
        read.data["spec"],
        serde_json::json!({"size": "small", "count": 3})
    );
    let names: Vec<String> = widgets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|w| w.metadata.name)
        .collect();
    assert_eq!(names, ["ok"]);
}

#[tokio::test]
async fn an_object_violating_the_crd_schema_is_rejected_by_the_server() {
    let cluster = testkit::cluster();
    let client = cluster.client();
    let resource = establish_widget_crd(client.clone()).await;
    let ns = cluster.namespace("schema").await;
    let widgets: Api<DynamicObject> = Api::namespaced_with(client, ns.name(), &resource);

    let status = api_error(
        widgets
            .create(
                &PostParams::default(),
                &widget("huge", serde_json::json!({"size": "huge", "count": 1})),
            )
            .await,
    );
    assert_eq!(status.code, 422, "{status:?}");
    assert!(status.is_invalid(), "{status:?}");
    assert!(
        status
            .message
            .contains(r#"spec.size: Unsupported value: "huge""#),
        "server message: {}",
        status.message
    );
    assert!(
        status.message.contains(r#""small", "large""#),
        "server message: {}",
        status.message
    );

    let status = api_error(
        widgets
            .create(
                &PostParams::default(),
                &widget("none", serde_json::json!({"size": "small", "count": 0})),
            )
            .await,
    );
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains(
            "spec.count: Invalid value: 0: spec.count in body should be greater than or equal to 1"
        ),
        "server message: {}",
        status.message
    );

    let status = api_error(
        widgets
            .create(
                &PostParams::default(),
                &widget("bare", serde_json::json!({"size": "large"})),
            )
            .await,
    );
    assert!(
        status.message.contains("spec.count: Required value"),
        "server message: {}",
        status.message
    );

    assert!(
        widgets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing invalid was stored"
    );
}

#[tokio::test]
async fn a_service_account_token_can_do_only_what_rbac_grants() {
    let cluster = testkit::cluster();
    let admin = cluster.client();
    let ns = cluster.namespace("rbac").await;
    let account = testkit::random_name("reader");
    let as_account = cluster.service_account_client(ns.name(), &account).await;

    // The token really authenticates as the ServiceAccount.
    let review = Api::<SelfSubjectReview>::all(as_account.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap();
    let user = review.status.unwrap().user_info.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some(format!("system:serviceaccount:{}:{account}", ns.name()).as_str())
    );

    // Nothing granted yet: listing ConfigMaps is forbidden, with the server's reason.
    let config_maps: Api<ConfigMap> = Api::namespaced(as_account.clone(), ns.name());
    let status = api_error(config_maps.list(&ListParams::default()).await);
    assert_eq!(status.code, 403, "{status:?}");
    assert!(status.is_forbidden());
    assert!(
        status.message.contains(&format!(
            r#"User "system:serviceaccount:{}:{account}" cannot list resource "configmaps""#,
            ns.name()
        )),
        "server message: {}",
        status.message
    );

    // Grant get/list on ConfigMaps in this namespace only.
    let role = Role {
        metadata: ObjectMeta {
            name: Some("read-config-maps".into()),
            ..ObjectMeta::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            verbs: vec!["get".into(), "list".into()],
            ..PolicyRule::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), ns.name())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("read-config-maps".into()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "read-config-maps".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: account.clone(),
            namespace: Some(ns.name().into()),
            ..Subject::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), ns.name())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    // The authorizer's cache catches up within moments.
    testkit::eventually(
        "the RoleBinding to take effect",
        Duration::from_secs(10),
        || {
            let config_maps = config_maps.clone();
            async move { config_maps.list(&ListParams::default()).await.ok() }
        },
    )
    .await;

    // Exactly what was granted: still no create, and nothing in another namespace.
    let new_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some("made-by-reader".into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    let status = api_error(config_maps.create(&PostParams::default(), &new_map).await);
    assert_eq!(status.code, 403, "{status:?}");
    assert!(
        status
            .message
            .contains(r#"cannot create resource "configmaps""#),
        "{}",
        status.message
    );
    let other = cluster.namespace("rbac-other").await;
    let status = api_error(
        Api::<ConfigMap>::namespaced(as_account, other.name())
            .list(&ListParams::default())
            .await,
    );
    assert_eq!(status.code, 403, "{status:?}");
}

#[tokio::test]
async fn the_server_and_kubectl_report_the_pinned_version() {
    let cluster = testkit::cluster();
    let pinned = pinned_kubernetes_version();
    let info = cluster.client().apiserver_version().await.unwrap();
    assert_eq!(info.git_version, pinned);
    assert_ne!(info.git_version, "v0.0.0-master");
    assert_eq!(
        format!("v{}.{}", info.major, info.minor),
        pinned.rsplit_once('.').unwrap().0
    );

    let versions: serde_json::Value =
        serde_json::from_str(&cluster.kubectl(&["version", "--output=json"])).unwrap();
    assert_eq!(versions["clientVersion"]["gitVersion"], pinned.as_str());
    assert_eq!(versions["serverVersion"]["gitVersion"], pinned.as_str());
}

// --- scripts/testbed up/down on a directory of its own -----------------------------

/// Runs `scripts/testbed down` on drop, so a failing assertion below does not
/// leave a control plane running (and a watcher does, should the binary be killed).
struct OwnTestbed {
    dir: PathBuf,
}

impl OwnTestbed {
    fn up() -> (OwnTestbed, String) {
        let dir = std::env::temp_dir().join(testkit::random_name("fanout-testbed-updown"));
        testkit::testbed::testbed_down_on_exit(&dir).unwrap();
        let testbed = OwnTestbed { dir };
        let stdout = testbed.run("up");
        (testbed, stdout)
    }

    fn run(&self, command: &str) -> String {
        let output = Command::new(testkit::repo_root().join("scripts/testbed"))
            .args([command, "--dir"])
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "scripts/testbed {command} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn pid(&self, name: &str) -> u32 {
        std::fs::read_to_string(self.dir.join(format!("{name}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for OwnTestbed {
    fn drop(&mut self) {
        if self.dir.exists() {
            let _ = Command::new(testkit::repo_root().join("scripts/testbed"))
                .args(["down", "--dir"])
                .arg(&self.dir)
                .status();
        }
    }
}

/// The process's state letter from /proc/PID/stat; None once it is gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Running: exists and is not a zombie (nothing may reap it in a container).
fn is_running(pid: u32) -> bool {
    process_state(pid).is_some_and(|state| state != 'Z')
}

fn command_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Local addresses of the TCP sockets process `pid` listens on (IPv4 and IPv6).
fn listening_addresses(pid: u32) -> Vec<String> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut addresses = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1, st (0A = LISTEN) field 3, inode field 9.
            if fields.len() > 9 && fields[3] == "0A" && inodes.iter().any(|i| i == fields[9]) {
                addresses.push(format!("{table} {}", fields[1]));
            }
        }
    }
    addresses
}

fn assert_exports(stdout: &str, dir: &Path) {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "exactly two lines on stdout: {stdout}");
    assert_eq!(
        lines[0],
        format!("export KUBECONFIG={}", dir.join("kubeconfig").display())
    );
    assert!(
        lines[1].starts_with("export PATH=") && lines[1].ends_with(":$PATH"),
        "{}",
        lines[1]
    );
}

#[test]
fn testbed_up_listens_on_loopback_only_and_down_leaves_no_process() {
    let (testbed, stdout) = OwnTestbed::up();
    assert_exports(&stdout, &testbed.dir);
    let pids = [testbed.pid("etcd"), testbed.pid("kube-apiserver")];
    assert_eq!(command_name(pids[0]), "etcd");
    assert_eq!(command_name(pids[1]), "kube-apiserver");

    for pid in pids {
        assert!(is_running(pid));
        let addresses = listening_addresses(pid);
        assert!(
            !addresses.is_empty(),
            "{} listens somewhere",
            command_name(pid)
        );
        for address in addresses {
            // 0100007F:port is 127.0.0.1 in /proc/net/tcp's little-endian hex.
            assert!(
                address.starts_with("tcp 0100007F:"),
                "{} listens on {address}",
                command_name(pid)
            );
        }
    }

    // A second `up` on the same directory reuses the running testbed.
    let again = testbed.run("up");
    assert_eq!(again, stdout);
    assert_eq!([testbed.pid("etcd"), testbed.pid("kube-apiserver")], pids);

    testbed.run("down");
    assert!(!testbed.dir.exists(), "down removes the directory");
    // `down` returns only once they are gone.
    for pid in pids {
        assert!(!is_running(pid), "pid {pid} survived scripts/testbed down");
    }
}
