//! The real single-node cluster of `scripts/node`, owned by one test at a time.
//!
//! `Node::up` runs `scripts/node up --dir <own dir>`: the testbed's control
//! plane plus kube-controller-manager, kube-scheduler, containerd and kubelet.
//! It is stopped by `Drop` and, should the test binary die without unwinding
//! (SIGKILL, abort), by a watcher process started first, in its own session,
//! that waits for this process to end and then runs `scripts/node down`.
//!
//! A machine runs one node at a time (its bridge, iptables chains and
//! kubepods cgroups are machine-wide), so the tests of this binary take
//! turns ([`turn`]), each on a fresh node: nothing one test installs (a
//! release, a controller that would reconcile the other's Fanouts) is left
//! for the next.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Setting this to `0` opts out of the node tests (they then print why and
/// pass without running). Any other value, or none, runs them; a node that
/// cannot start then FAILS the test with the reason.
pub const OPT_OUT_ENV: &str = "FANOUT_NODE_E2E";

/// Whether the node tests were explicitly turned off.
pub fn opted_out() -> bool {
    std::env::var(OPT_OUT_ENV).is_ok_and(|v| v == "0")
}

pub struct Node {
    dir: PathBuf,
    kubeconfig: PathBuf,
    tools_bin: PathBuf,
}

fn script() -> PathBuf {
    testkit::repo_root().join("scripts/node")
}

/// The turn of one test to run a node; hold it until the node is down.
pub async fn turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

impl Node {
    /// Starts a node for the test `name` (a minute or less when the tools
    /// are cached); call it holding the [`turn`].
    pub fn up(name: &str) -> Result<Node, String> {
        let dir =
            std::env::temp_dir().join(format!("fanout-node-e2e-{}-{name}", std::process::id()));
        down_on_exit(&dir)?;
        let (kubeconfig, tools_bin) = testkit::testbed::script_up(&script(), &dir)?;
        Ok(Node {
            dir,
            kubeconfig,
            tools_bin,
        })
    }

    /// An admin client. Needs a tokio runtime.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// `tool` (kubectl, helm) from the pinned tools, pointed at this node.
    pub fn command(&self, tool: &str) -> Command {
        let mut command = Command::new(self.tools_bin.join(tool));
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null());
        command
    }

    /// Runs `tool args`; returns its output, whatever its exit status.
    pub fn output(&self, tool: &str, args: &[&str]) -> Output {
        self.command(tool).args(args).output().unwrap()
    }

    /// Runs `tool args` and returns its stdout; panics with stderr (and the
    /// state of `namespace`'s pods) if it fails.
    pub fn run(&self, tool: &str, args: &[&str], namespace: &str) -> String {
        let output = self.output(tool, args);
        assert!(
            output.status.success(),
            "{tool} {} failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr),
            self.diagnostics(namespace)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Builds the Fanout image from `binary` (the Dockerfile's runtime layout)
    /// and loads it into the node's containerd.
    pub fn load_image(&self, image: &str, binary: &Path) {
        let output = Command::new(script())
            .args(["image", image, "--binary"])
            .arg(binary)
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "scripts/node image failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// What a failed assertion should show: pods, recent events, each pod's
    /// log tail, and the tail of kubelet's log.
    pub fn diagnostics(&self, namespace: &str) -> String {
        let mut report = String::new();
        let mut section = |title: &str, output: Output| {
            report.push_str(&format!(
                "--- {title} ---\n{}{}\n",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        };
        section(
            "pods",
            self.output("kubectl", &["get", "pods", "-n", namespace, "-o", "wide"]),
        );
        section(
            "events",
            self.output(
                "kubectl",
                &["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"],
            ),
        );
        section(
            "pod logs",
            self.output(
                "kubectl",
                &[
                    "logs",
                    "-n",
                    namespace,
                    "-l",
                    "app.kubernetes.io/name=fanout",
                    "--prefix",
                    "--tail=20",
                ],
            ),
        );
        let kubelet_log = std::fs::read_to_string(self.dir.join("kubelet.log")).unwrap_or_default();
        let tail: Vec<&str> = kubelet_log.lines().rev().take(20).collect();
        report.push_str("--- kubelet.log (last lines) ---\n");
        for line in tail.iter().rev() {
            report.push_str(line);
            report.push('\n');
        }
        report
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["down", "--dir"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A process in its own session that waits for this test binary to end,
/// however it ends, and then runs `scripts/node down --dir <dir>` (a no-op if
/// `Drop` already did).
fn down_on_exit(dir: &Path) -> Result<(), String> {
    const WATCH: &str = r#"
        pid=$1 node=$2 dir=$3
        while state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) && [ "$state" != Z ]; do
            sleep 0.5
        done
        exec "$node" down --dir "$dir"
    "#;
    Command::new("setsid")
        .args(["bash", "-c", WATCH, "fanout-node-watcher"])
        .arg(std::process::id().to_string())
        .arg(script())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|e| format!("cannot start the node watcher (setsid, from util-linux): {e}"))
}
