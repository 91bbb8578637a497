//! The real `fanout` binary's lifecycle against a real API server: probes,
//! the SIGTERM drain, the deadline, a second signal, leader handover, and
//! the metrics it exports.
//!
//! Each test runs its own controller processes with their own Lease, and
//! labels its Fanouts so that only its own controllers (`--fanout-selector`)
//! reconcile them on the shared testbed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use testkit::process::{Controller, kubeconfig_via};
use testkit::proxy::{FaultProxy, Mode};
use testkit::world::World;

#[tokio::test(flavor = "multi_thread")]
async fn readiness_waits_for_the_caches_and_liveness_does_not() {
    let cluster = testkit::cluster();
    let world = World::new(cluster, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(&cluster.server_url(), &cluster.pki_dir(), Mode::Hold).await;
    let kubeconfig = kubeconfig_via(&world.kubeconfig, proxy.addr(), dir.path());
    let mut controller = Controller::start(&crate::fanout(), &kubeconfig, &world.args(&[])).await;

    // The API server is unreachable: alive, but not ready, and it says why.
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_secs(2) {
        assert_eq!(controller.status("/livez").await, Some(200));
        assert_eq!(controller.status("/readyz").await, Some(503));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let verbose = controller.body("/readyz?verbose").await;
    assert!(verbose.contains("[-]caches-synced failed"), "{verbose}");
    assert!(verbose.contains("[+]admin-self-ping ok"), "{verbose}");

    proxy.set(Mode::Open);
    controller.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(controller.metric("fanout_ready").await, Some(1.0));
    controller.stop().await;
}

/// A controller behind a [`Proxy`], leading, in the middle of a slow
/// fan-out (one write at a time, rate-limited) into `targets` namespaces,
/// with `synced` of them done: a drain started now has a write in flight.
/// Bind every field when destructuring: dropping `world` deletes the
/// namespaces under the controller's feet.
struct MidFanout {
    world: World,
    proxy: FaultProxy,
    controller: Controller,
    fanout: String,
    _dir: tempfile::TempDir,
}

impl MidFanout {
    async fn start(targets: usize, synced: usize, extra: &[&str]) -> MidFanout {
        let cluster = testkit::cluster();
        let world = World::new(cluster, targets).await;
        let dir = tempfile::tempdir().unwrap();
        let proxy = FaultProxy::start(&cluster.server_url(), &cluster.pki_dir(), Mode::Open).await;
        let kubeconfig = kubeconfig_via(&world.kubeconfig, proxy.addr(), dir.path());
        let mut args = vec![
            "--fanout-concurrency",
            "1",
            "--kube-qps",
            "10",
            "--kube-burst",
            "1",
        ];
        args.extend_from_slice(extra);
        let mut controller =
            Controller::start(&crate::fanout(), &kubeconfig, &world.args(&args)).await;
        controller.wait_ready(Duration::from_secs(30)).await;
        controller.wait_leader(Duration::from_secs(30)).await;
        let fanout = world.create_fanout(cluster).await;
        world.wait_synced(cluster, &fanout, synced).await;
        MidFanout {
            world,
            proxy,
            controller,
            fanout,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_turns_readiness_off_at_once_and_drains_to_exit_0() {
    let cluster = testkit::cluster();
    let MidFanout {
        world,
        proxy,
        mut controller,
        fanout,
        _dir,
    } = MidFanout::start(20, 2, &[]).await;

    // Hang the API server so the drain has a write in flight.
    proxy.set(Mode::Stall);
    controller.signal(Signal::SIGTERM);
    let signalled = Instant::now();
    while controller.status("/readyz").await != Some(503) {
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "readiness never turned off"
        );
    }
    let readiness_off = signalled.elapsed();
    println!(
        "readiness 503 {} ms after SIGTERM",
        readiness_off.as_millis()
    );
    assert!(
        readiness_off < Duration::from_millis(100),
        "took {readiness_off:?}"
    );
    for _ in 0..5 {
        assert_eq!(
            controller.status("/livez").await,
            Some(200),
            "liveness during the drain"
        );
        assert!(
            controller.running(),
            "the drain waits for the write in flight"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    proxy.set(Mode::Open);
    let status = controller.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", controller.log());
    assert_eq!(
        controller.phases(),
        [
            "draining",
            "work_drained",
            "lease_released",
            "admin_stopped"
        ]
        .map(String::from)
        .to_vec(),
        "{}",
        controller.log()
    );

    // The final status: every target, in order; finished ones first, the rest Pending.
    let states = world.target_states(cluster, &fanout);
    let expected: Vec<&str> = world.targets.iter().map(|ns| ns.name()).collect();
    let listed: Vec<&str> = states.iter().map(|(ns, _)| ns.as_str()).collect();
    assert_eq!(
        listed, expected,
        "status lists every target in resolution order"
    );
    let first_pending = states
        .iter()
        .position(|(_, s)| s == "Pending")
        .unwrap_or(states.len());
    assert!(
        first_pending >= 2,
        "at least the targets synced before the signal: {states:?}"
    );
    assert!(
        first_pending < states.len(),
        "the drain interrupted the fan-out: {states:?}"
    );
    for (ns, state) in &states[first_pending..] {
        assert_eq!(state, "Pending", "{ns} after the first Pending: {states:?}");
    }
    for (ns, state) in &states[..first_pending] {
        assert_eq!(
            state, "Synced",
            "{ns} finished before the drain: {states:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_deadline_work_is_abandoned_by_name_and_the_exit_code_is_1() {
    let MidFanout {
        world: _world,
        proxy,
        mut controller,
        fanout,
        _dir,
    } = MidFanout::start(
        30,
        1,
        &["--shutdown-timeout", "2s", "--write-timeout", "60s"],
    )
    .await;

    proxy.set(Mode::Stall); // the write in flight never finishes
    controller.signal(Signal::SIGTERM);
    let signalled = Instant::now();
    let status = controller.wait_exit(Duration::from_secs(20)).await;
    println!(
        "exited {} ms after SIGTERM with a 2s deadline",
        signalled.elapsed().as_millis()
    );
    assert_eq!(status.code(), Some(1), "{}", controller.log());
    assert!(
        controller.phases().contains(&"aborted".to_owned()),
        "{}",
        controller.log()
    );
    let abandoned: Vec<String> = controller
        .log_lines()
        .iter()
        .filter(|l| l.to_string().contains("abandon"))
        .map(|l| l.to_string())
        .collect();
    assert!(
        abandoned.iter().any(|l| l.contains(&fanout)),
        "a log line names the abandoned Fanout {fanout}:\n{}",
        controller.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_exits_at_once_with_a_non_zero_code() {
    let MidFanout {
        world: _world,
        proxy,
        mut controller,
        _dir,
        ..
    } = MidFanout::start(30, 1, &["--write-timeout", "60s"]).await;

    proxy.set(Mode::Stall); // the drain cannot finish on its own
    controller.signal(Signal::SIGTERM);
    // The first signal has been taken once readiness turns 503.
    testkit::eventually("the drain to begin", Duration::from_secs(10), || async {
        (controller.status("/readyz").await == Some(503)).then_some(())
    })
    .await;
    assert!(controller.running(), "still draining");
    controller.signal(Signal::SIGINT);
    let second = Instant::now();
    let status = controller.wait_exit(Duration::from_secs(5)).await;
    println!(
        "exited {} ms after the second signal",
        second.elapsed().as_millis()
    );
    assert_eq!(status.code(), Some(130), "{}", controller.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_released_lease_hands_over_at_once_and_a_killed_leader_only_after_expiry() {
    let cluster = testkit::cluster();
    let world = World::new(cluster, 0).await;
    let kubeconfig = &world.kubeconfig;
    let args = world.args(&["--lease-duration", "6s"]);

    // Drain: the standby leads as soon as the leader lets go.
    let mut first = Controller::start(&crate::fanout(), kubeconfig, &args).await;
    first.wait_leader(Duration::from_secs(30)).await;
    let mut second = Controller::start(&crate::fanout(), kubeconfig, &args).await;
    second.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(
        second.metric("fanout_leader").await,
        Some(0.0),
        "a ready standby"
    );
    first.signal(Signal::SIGTERM);
    let handover = second.wait_leader(Duration::from_secs(30)).await;
    println!("handover after SIGTERM: {} ms", handover.as_millis());
    assert!(handover < Duration::from_secs(2), "took {handover:?}");
    assert_eq!(
        first.wait_exit(Duration::from_secs(20)).await.code(),
        Some(0)
    );

    // SIGKILL: no release, so the standby waits for the lease to expire.
    let mut third = Controller::start(&crate::fanout(), kubeconfig, &args).await;
    third.wait_ready(Duration::from_secs(30)).await;
    second.signal(Signal::SIGKILL);
    second.wait_exit(Duration::from_secs(5)).await;
    let takeover = third.wait_leader(Duration::from_secs(30)).await;
    println!(
        "takeover after SIGKILL with a 6s lease: {} ms",
        takeover.as_millis()
    );
    // Renewals happen every 2s, so at least 4s of the lease remained.
    assert!(
        takeover >= Duration::from_secs(3),
        "took over before expiry: {takeover:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_valid_prometheus_text_with_the_lifecycle_series() {
    let cluster = testkit::cluster();
    let world = World::new(cluster, 0).await;
    let mut controller =
        Controller::start(&crate::fanout(), &world.kubeconfig, &world.args(&[])).await;
    controller.wait_ready(Duration::from_secs(30)).await;
    controller.wait_leader(Duration::from_secs(30)).await;
    let body = controller.body("/metrics").await;

    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/install-prereqs installs it)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let mut types = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            types.insert(
                parts.next().unwrap().to_owned(),
                parts.next().unwrap().to_owned(),
            );
        }
    }
    for (series, kind) in [
        ("fanout_ready", "gauge"),
        ("fanout_leader", "gauge"),
        ("fanout_shutdown_phase", "gauge"),
        ("fanout_drain_duration_seconds", "gauge"),
        ("fanout_reconciles_in_flight", "gauge"),
        ("fanout_target_writes_in_flight", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
    ] {
        assert_eq!(
            types.get(series).map(String::as_str),
            Some(kind),
            "{series} in:\n{body}"
        );
    }
    assert_eq!(controller.metric("fanout_ready").await, Some(1.0));
    assert_eq!(controller.metric("fanout_leader").await, Some(1.0));
    assert!(
        body.contains("fanout_shutdown_phase{phase=\"running\"} 1"),
        "{body}"
    );
    controller.stop().await;
}
