//! Section 7: the control plane's CPU (kube-apiserver + etcd, user + system
//! time from `/proc/<pid>/stat`, as section 1 reads it) per copy, the
//! Fanout against the baseline at the same client-side limit, at a low
//! limit (5 QPS: a fan-out lasts minutes, and whatever the controller does
//! per second — status writes, Lease renewals — weighs against few copies)
//! and at a high one (200 QPS). Each series is section 1's measurement
//! ([`crate::throughput::run`]) at one size. The control plane's background
//! CPU (its own controllers, with nothing running against it) is sampled
//! before each series, so the report can show it.

use std::time::Duration;

use anyhow::Result;

use crate::bench::Bench;
use crate::results::CpuSeries;
use crate::throughput;

/// How long the background is sampled.
const BACKGROUND: Duration = Duration::from_secs(5);

/// Every series of the shape.
pub async fn run(bench: &Bench) -> Result<Vec<CpuSeries>> {
    let mut series = Vec::new();
    for &(limits, n) in &bench.shape.cpu_series {
        let idle = background(bench).await;
        let tag = format!("c{}", limits.qps);
        let runs = throughput::run(bench, &[n], limits, &tag).await?;
        series.push(CpuSeries {
            limits,
            idle_control_plane_cpu_per_second: idle,
            runs,
        });
    }
    Ok(series)
}

/// CPU seconds per second the control plane uses with nothing running against it.
async fn background(bench: &Bench) -> Option<f64> {
    let before = bench.cluster.control_plane_cpu_seconds()?;
    tokio::time::sleep(BACKGROUND).await;
    let after = bench.cluster.control_plane_cpu_seconds()?;
    Some((after - before) / BACKGROUND.as_secs_f64())
}
