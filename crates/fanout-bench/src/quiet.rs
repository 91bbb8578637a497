//! A measured window in which nothing the controller watches changes (the
//! idle and blocked sections): what the controller asks of the API server
//! then is its steady cost. Counted three ways: its requests in the API
//! server's audit log (by its user agent, by verb and resource; the audit
//! policy covers Leases, Secrets, ConfigMaps and Fanouts), its own
//! `fanout_api_requests_total` (every request, by method and answer: what
//! the audit log misses, e.g. namespaces and Events, shows as the
//! difference), and `apiserver_request_total` (every client, the API
//! server's own included). Plus the CPU the controller and the control
//! plane used meanwhile.

use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::jiff::Timestamp;
use testkit::process::Controller;

use crate::bench::Bench;
use crate::counters;
use crate::results::{QuietWindow, request_counts};

const MINUTE: Duration = Duration::from_secs(60);

/// Watches `controller` (whose `--identity` is `identity`) for `length`.
pub async fn measure(
    bench: &Bench,
    controller: &Controller,
    identity: &str,
    length: Duration,
) -> Result<QuietWindow> {
    let apiserver_before = bench.cluster.apiserver_metrics()?;
    let counters_before = bench.counters(controller).await?;
    let cpu_before = controller.cpu_seconds()?;
    let control_plane_before = bench.cluster.control_plane_cpu_seconds();
    let mark = bench.audit.mark()?;
    let started = Instant::now();
    tokio::time::sleep(length).await;
    let to = Timestamp::now();
    let seconds = started.elapsed().as_secs_f64();
    let cpu = controller.cpu_seconds()? - cpu_before;
    let control_plane = bench
        .cluster
        .control_plane_cpu_seconds()
        .zip(control_plane_before)
        .map(|(after, before)| after - before);
    let counters_after = bench.counters(controller).await?;
    let apiserver_after = bench.cluster.apiserver_metrics()?;
    let slice = (length >= 2 * MINUTE).then_some(MINUTE);
    let (audit, per_minute) = bench
        .audit
        .requests_sliced(&mark, to, identity, slice)
        .await?;
    Ok(QuietWindow {
        seconds,
        audit,
        per_minute,
        controller: counters::since(&counters_after, &counters_before),
        apiserver: request_counts(&apiserver_after.requests_since(&apiserver_before)),
        controller_cpu_seconds: cpu,
        control_plane_cpu_seconds: control_plane,
    })
}
