//! The real `fanout` binary when the API server misbehaves.
//!
//! Two kinds of fault, both real:
//! - a fault proxy (`lifecycle/proxy.rs`) between one controller process and
//!   the API server answers 500, black-holes or stalls chosen requests, on
//!   the shared testbed (only that controller is affected);
//! - on a private testbed of this binary's own, the real kube-apiserver is
//!   frozen (SIGSTOP), killed and started again (`scripts/testbed`); those
//!   tests take turns ([`real_faults`]), since a frozen API server stops
//!   every test that uses it.
//!
//! Who wrote what, and when, comes from the API server's audit log; each
//! controller names itself in its User-Agent (`--identity`).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::Method;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use nix::sys::signal::Signal;
use serde_json::json;
use testkit::Cluster;
use testkit::process::{Controller, kubeconfig_via};
use testkit::proxy::{Fault, FaultProxy, Mode, Rule};
use testkit::world::World;
use tokio::sync::{Mutex, MutexGuard};

/// A short lease so that expiry-driven steps take seconds: renewals every
/// 4 s, step-down 5.4 s after the last good one, takeover 6 s after it.
const LEASE: &str = "6s";

/// A controller process talking to the API server through its own proxy.
struct Proxied {
    proxy: FaultProxy,
    controller: Controller,
    _dir: tempfile::TempDir,
}

impl Proxied {
    async fn start(cluster: &Cluster, world: &World, extra: &[&str], mode: Mode) -> Proxied {
        let dir = tempfile::tempdir().unwrap();
        let proxy = FaultProxy::start(&cluster.server_url(), &cluster.pki_dir(), mode).await;
        let kubeconfig = kubeconfig_via(&world.kubeconfig, proxy.addr(), dir.path());
        let controller = Controller::start(&crate::fanout(), &kubeconfig, &world.args(extra)).await;
        Proxied {
            proxy,
            controller,
            _dir: dir,
        }
    }
}

/// `--identity <prefix>-<random>` and the identity itself.
fn identity(prefix: &str) -> (String, String) {
    let identity = testkit::random_name(prefix);
    (format!("--identity={identity}"), identity)
}

/// Samples both processes' `fanout_leader` until `b` leads; fails if both
/// ever lead at once. Returns when `a` stopped leading and when `b` started.
async fn watch_handover(a: &Controller, b: &Controller, since: Instant) -> (Duration, Duration) {
    let mut a_stopped = None;
    loop {
        let a_leads = a.metric("fanout_leader").await == Some(1.0);
        let b_leads = b.metric("fanout_leader").await == Some(1.0);
        assert!(
            !(a_leads && b_leads),
            "two leaders at once:\n{}\n{}",
            a.log(),
            b.log()
        );
        if !a_leads && a_stopped.is_none() {
            a_stopped = Some(since.elapsed());
        }
        if b_leads {
            let a_stopped = a_stopped.expect("b leads, so a had stopped");
            return (a_stopped, since.elapsed());
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "no handover within 30s:\n{}\n{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_renewals_hand_over_and_exactly_one_process_reconciles() {
    let cluster = testkit::cluster();
    let world = World::new(cluster, 2).await;
    let (a_flag, _) = identity("renew-a");
    let (b_flag, b_identity) = identity("renew-b");
    let a = Proxied::start(
        cluster,
        &world,
        &["--lease-duration", LEASE, &a_flag],
        Mode::Open,
    )
    .await;
    a.controller.wait_leader(Duration::from_secs(30)).await;
    let mut b = Controller::start(
        &crate::fanout(),
        &world.kubeconfig,
        &world.args(&["--lease-duration", LEASE, &b_flag]),
    )
    .await;
    b.wait_ready(Duration::from_secs(30)).await;
    let lease_path = format!("/leases/{}", world.lease);

    // One renewal answered 500: retried at once, and leadership stays.
    a.proxy
        .add(Rule::new(Some(Method::PUT), &lease_path, Fault::Status(500)).times(1));
    testkit::eventually(
        "a renewal answered 500, then one that passes",
        Duration::from_secs(20),
        || async {
            let seen = a.proxy.requests();
            let failed = seen.iter().position(|r| r.fault.is_some())?;
            seen[failed + 1..]
                .iter()
                .any(|r| r.method == Method::PUT && r.uri.contains(&lease_path))
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        a.controller.metric("fanout_leader").await,
        Some(1.0),
        "one failure is not a step-down"
    );
    assert_eq!(b.metric("fanout_leader").await, Some(0.0));

    // Every renewal fails from now on: a steps down, b takes over.
    a.proxy.add(Rule::new(
        Some(Method::PUT),
        &lease_path,
        Fault::Status(500),
    ));
    let failing = Instant::now();
    let (stepped_down, taken_over) = watch_handover(&a.controller, &b, failing).await;
    println!(
        "renewals failing: the leader stepped down after {} ms, the standby led after {} ms",
        stepped_down.as_millis(),
        taken_over.as_millis()
    );
    assert!(
        taken_over - stepped_down <= Duration::from_secs(6),
        "nobody led for {:?}",
        taken_over - stepped_down
    );

    // The one leader reconciles: a Fanout created now converges, written by b.
    let fanout = world.create_fanout(cluster).await;
    world.wait_synced(cluster, &fanout, 2).await;
    let writers: Vec<String> = copy_writes(cluster, &world, &fanout)
        .into_iter()
        .map(|w| w.user_agent)
        .collect();
    assert!(
        !writers.is_empty() && writers.iter().all(|ua| ua.contains(&b_identity)),
        "{writers:?}"
    );
    assert_eq!(a.controller.metric("fanout_leader").await, Some(0.0));
}

/// What to cut between the leader and the API server.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// Only its Lease requests hang: its copy and status writes still get
    /// through, so a leader that did not step down would keep writing.
    LeaseOnly,
    /// Everything hangs, streams included (a black-holed network path).
    Everything,
}

async fn black_holed_leader(cut: Cut) {
    let cluster = testkit::cluster();
    let world = World::new(cluster, 30).await;
    let (a_flag, a_identity) = identity("cut-a");
    let (b_flag, b_identity) = identity("cut-b");
    let slow = [
        "--kube-qps",
        "5",
        "--kube-burst",
        "1",
        "--fanout-concurrency",
        "1",
    ];
    let mut a_args = vec!["--lease-duration", LEASE, a_flag.as_str()];
    a_args.extend(slow);
    let mut b_args = vec!["--lease-duration", LEASE, b_flag.as_str()];
    b_args.extend(slow);
    let a = Proxied::start(cluster, &world, &a_args, Mode::Open).await;
    a.controller.wait_leader(Duration::from_secs(30)).await;
    let mut b = Controller::start(&crate::fanout(), &world.kubeconfig, &world.args(&b_args)).await;
    b.wait_ready(Duration::from_secs(30)).await;
    let fanout = world.create_fanout(cluster).await;
    world.wait_synced(cluster, &fanout, 3).await;

    let cut_at = Instant::now();
    match cut {
        Cut::LeaseOnly => a
            .proxy
            .add(Rule::new(None, "/leases/", Fault::BlackHole).not_watch()),
        Cut::Everything => a.proxy.set(Mode::Stall),
    }
    let (stepped_down, taken_over) = watch_handover(&a.controller, &b, cut_at).await;
    println!(
        "{cut:?} black-holed: the leader reported fanout_leader 0 after {} ms, the standby led after {} ms",
        stepped_down.as_millis(),
        taken_over.as_millis()
    );
    assert!(
        stepped_down < Duration::from_secs(6),
        "stepped down only after {stepped_down:?}"
    );
    world
        .wait_synced(cluster, &fanout, world.targets.len())
        .await;

    // The audit log: every write of a (copies, status) ended before the
    // first write of b arrived.
    let writes = copy_writes(cluster, &world, &fanout);
    let last_of_a = writes
        .iter()
        .filter(|w| w.user_agent.contains(&a_identity))
        .map(|w| w.completed)
        .max();
    let first_of_b = writes
        .iter()
        .filter(|w| w.user_agent.contains(&b_identity))
        .map(|w| w.received)
        .min();
    let (Some(last_of_a), Some(first_of_b)) = (last_of_a, first_of_b) else {
        panic!("both processes wrote: {writes:#?}");
    };
    println!(
        "audit: a's last write ended {} ms before b's first arrived",
        (first_of_b - last_of_a).get_milliseconds()
    );
    assert!(
        last_of_a < first_of_b,
        "a wrote at {last_of_a}, after b began at {first_of_b}"
    );
    drop(a);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_cut_off_from_its_lease_stops_writing_before_the_standby_takes_over() {
    black_holed_leader(Cut::LeaseOnly).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_black_holed_leader_steps_down_and_the_standby_finishes_its_fan_out() {
    black_holed_leader(Cut::Everything).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_leader_renews_at_the_cadence_its_lease_duration_implies() {
    let cluster = testkit::cluster();
    let world = World::new(cluster, 0).await;
    let (flag, identity) = identity("idle");
    let controller =
        Controller::start(&crate::fanout(), &world.kubeconfig, &world.args(&[&flag])).await;
    controller.wait_leader(Duration::from_secs(30)).await;
    // The measurement window itself: a minute of doing nothing.
    let from = k8s_openapi::jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let to = k8s_openapi::jiff::Timestamp::now();
    let mut by_verb = std::collections::BTreeMap::<String, usize>::new();
    for event in cluster.audit() {
        if event.resource == "leases"
            && event.name == world.lease
            && event.user_agent.contains(&identity)
            && event.received >= from
            && event.received < to
        {
            *by_verb.entry(event.verb).or_default() += 1;
        }
    }
    let requests: usize = by_verb
        .iter()
        .filter(|(verb, _)| *verb != "watch")
        .map(|(_, n)| n)
        .sum();
    println!("idle leader, 15s lease: {requests} Lease requests in 60 s ({by_verb:?})");
    assert!((4..=7).contains(&requests), "{by_verb:?}");
}

/// The controllers' writes of copies (in the world's targets) and of the
/// Fanout (status, finalizer).
fn copy_writes(cluster: &Cluster, world: &World, fanout: &str) -> Vec<testkit::AuditEvent> {
    let targets: Vec<&str> = world.targets.iter().map(|ns| ns.name()).collect();
    cluster
        .audit()
        .into_iter()
        .filter(|e| e.is_write() && e.code < 300 && e.user_agent.starts_with("fanout/"))
        .filter(|e| {
            (e.resource == "secrets" && targets.contains(&e.namespace.as_str()))
                || (e.resource == "fanouts" && e.name == fanout)
        })
        .collect()
}

// --- faults of the real API server, on this binary's own testbed ----------

/// This binary's private control plane, and the turn to fault it.
async fn real_faults() -> (&'static Cluster, MutexGuard<'static, ()>) {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    static TURN: Mutex<()> = Mutex::const_new(());
    let turn = TURN.lock().await;
    match CLUSTER.get_or_init(Cluster::start_private) {
        Ok(cluster) => (cluster, turn),
        Err(reason) => panic!("no private control plane for the fault tests: {reason}"),
    }
}

/// Polls `/livez` for `window`, failing on anything but 200.
async fn alive_throughout(controller: &Controller, window: Duration) {
    let started = Instant::now();
    while started.elapsed() < window {
        assert_eq!(
            controller.status("/livez").await,
            Some(200),
            "{}",
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes one copy and edits another, straight to the API server.
async fn damage(cluster: &Cluster, world: &World, deleted: usize, edited: usize) {
    let copy =
        |i: usize| -> Api<Secret> { Api::namespaced(cluster.client(), world.targets[i].name()) };
    copy(deleted)
        .delete("creds", &DeleteParams::default())
        .await
        .unwrap();
    let patch = json!({"data": {"token": "ZWRpdGVk"}});
    copy(edited)
        .patch("creds", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Waits until every target holds a true copy again: status Synced for all,
/// and each copy's data equal to the source's.
async fn converged(cluster: &Cluster, world: &World, fanout: &str) -> Duration {
    let started = Instant::now();
    world
        .wait_synced(cluster, fanout, world.targets.len())
        .await;
    for target in &world.targets {
        let api: Api<Secret> = Api::namespaced(cluster.client(), target.name());
        testkit::eventually(
            "every copy to hold the source's data",
            Duration::from_secs(60),
            || {
                let api = api.clone();
                async move {
                    let copy = api.get_opt("creds").await.ok()??;
                    let value = copy.data?.get("token")?.0.clone();
                    (value == b"t0k3n").then_some(())
                }
            },
        )
        .await;
    }
    started.elapsed()
}

const BUSY: [&str; 8] = [
    "--kube-qps",
    "5",
    "--kube-burst",
    "1",
    "--fanout-concurrency",
    "1",
    "--write-timeout",
    "2s",
];

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_api_server_leaves_the_controller_alive_and_it_converges_after() {
    let (cluster, _turn) = real_faults().await;
    let world = World::new(cluster, 20).await;
    let mut args = vec!["--lease-duration", LEASE];
    args.extend(BUSY);
    let controller =
        Controller::start(&crate::fanout(), &world.kubeconfig, &world.args(&args)).await;
    controller.wait_leader(Duration::from_secs(30)).await;
    let fanout = world.create_fanout(cluster).await;
    world.wait_synced(cluster, &fanout, 2).await;

    cluster.testbed("freeze", "kube-apiserver");
    alive_throughout(&controller, Duration::from_secs(8)).await;
    cluster.testbed("thaw", "kube-apiserver");
    let took = converged(cluster, &world, &fanout).await;
    println!(
        "frozen 8 s mid-fan-out: converged {} ms after the thaw",
        took.as_millis()
    );
    assert_eq!(controller.status("/livez").await, Some(200));
    let log = controller.log();
    assert!(
        log.contains(&cluster.server_url()),
        "a warning names the API server:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_black_holed_controller_repairs_what_changed_meanwhile() {
    let (cluster, _turn) = real_faults().await;
    let world = World::new(cluster, 20).await;
    let mut args = vec!["--lease-duration", LEASE];
    args.extend(BUSY);
    let controller = Proxied::start(cluster, &world, &args, Mode::Open).await;
    controller
        .controller
        .wait_leader(Duration::from_secs(30))
        .await;
    let fanout = world.create_fanout(cluster).await;
    world.wait_synced(cluster, &fanout, 3).await;

    controller.proxy.set(Mode::Stall);
    damage(cluster, &world, 0, 1).await;
    alive_throughout(&controller.controller, Duration::from_secs(8)).await;
    controller.proxy.set(Mode::Open);
    let took = converged(cluster, &world, &fanout).await;
    println!(
        "black-holed 8 s mid-fan-out: converged {} ms after, copies repaired",
        took.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_api_server_makes_the_controller_relist_and_repair() {
    let (cluster, _turn) = real_faults().await;
    let world = World::new(cluster, 20).await;
    let mut args = vec!["--lease-duration", LEASE];
    args.extend(BUSY);
    let controller = Proxied::start(cluster, &world, &args, Mode::Open).await;
    controller
        .controller
        .wait_leader(Duration::from_secs(30))
        .await;
    let fanout = world.create_fanout(cluster).await;
    world.wait_synced(cluster, &fanout, 3).await;

    // Cut the controller off, delete a copy it made, then restart the API
    // server: its watches resume from a version the new server does not
    // keep, so the caches relist, and the deletion is seen only that way.
    controller.proxy.set(Mode::Stall);
    damage(cluster, &world, 0, 1).await;
    cluster.testbed("kill", "kube-apiserver");
    alive_throughout(&controller.controller, Duration::from_secs(3)).await;
    cluster.testbed("start", "kube-apiserver");
    controller.proxy.set(Mode::Open);
    alive_throughout(&controller.controller, Duration::from_secs(2)).await;
    let took = converged(cluster, &world, &fanout).await;
    println!(
        "API server restarted mid-fan-out: converged {} ms after, copies repaired",
        took.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_fault_exits_0_within_two_seconds_when_idle() {
    let (cluster, _turn) = real_faults().await;
    let world = World::new(cluster, 0).await;
    for fault in ["frozen", "black-holed", "down"] {
        let mut controller =
            Proxied::start(cluster, &world, &["--lease-duration", LEASE], Mode::Open).await;
        controller
            .controller
            .wait_ready(Duration::from_secs(30))
            .await;
        controller
            .controller
            .wait_leader(Duration::from_secs(30))
            .await;
        match fault {
            "frozen" => cluster.testbed("freeze", "kube-apiserver"),
            "black-holed" => controller.proxy.set(Mode::Stall),
            _ => cluster.testbed("kill", "kube-apiserver"),
        }
        controller.controller.signal(Signal::SIGTERM);
        let signalled = Instant::now();
        let status = controller
            .controller
            .wait_exit(Duration::from_secs(30))
            .await;
        let took = signalled.elapsed();
        match fault {
            "frozen" => cluster.testbed("thaw", "kube-apiserver"),
            "black-holed" => {}
            _ => cluster.testbed("start", "kube-apiserver"),
        }
        println!(
            "SIGTERM with the API server {fault}: exit {:?} after {} ms",
            status.code(),
            took.as_millis()
        );
        assert_eq!(status.code(), Some(0), "{}", controller.controller.log());
        assert!(
            took < Duration::from_secs(2),
            "{fault}: took {took:?}\n{}",
            controller.controller.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_frozen_mid_fan_out_abandons_by_name_at_the_deadline() {
    let (cluster, _turn) = real_faults().await;
    let world = World::new(cluster, 20).await;
    let mut args = vec!["--lease-duration", "15s", "--shutdown-timeout", "3s"];
    args.extend(BUSY[..6].iter());
    args.extend(["--write-timeout", "30s"]);
    let mut controller =
        Controller::start(&crate::fanout(), &world.kubeconfig, &world.args(&args)).await;
    controller.wait_leader(Duration::from_secs(30)).await;
    let fanout = world.create_fanout(cluster).await;
    world.wait_synced(cluster, &fanout, 2).await;

    cluster.testbed("freeze", "kube-apiserver");
    controller.signal(Signal::SIGTERM);
    let signalled = Instant::now();
    let status = controller.wait_exit(Duration::from_secs(30)).await;
    let took = signalled.elapsed();
    cluster.testbed("thaw", "kube-apiserver");
    println!(
        "SIGTERM frozen mid-fan-out, 3 s deadline: exit {:?} after {} ms",
        status.code(),
        took.as_millis()
    );
    assert_eq!(status.code(), Some(1), "{}", controller.log());
    assert!(
        took < Duration::from_secs(8),
        "the deadline plus the grace: {took:?}"
    );
    let named = controller
        .log_lines()
        .iter()
        .any(|line| line.to_string().contains("abandon") && line.to_string().contains(&fanout));
    assert!(
        named,
        "the log names the abandoned Fanout {fanout}:\n{}",
        controller.log()
    );
}
