//! A controller's own counters, from its `/metrics`: API requests by method
//! and answer, time spent waiting in its client-side rate limit, target
//! writes, reconciles. Read before and after a measured span; the report
//! shows the difference.

use std::collections::BTreeMap;

use testkit::process::Metrics;

use crate::results::ControllerDelta;

/// The counters as they are in one scrape.
pub fn read(metrics: &Metrics) -> ControllerDelta {
    let prefix = fanout::app::METRICS_PREFIX;
    let by = |name: &str, labels: &[&str]| -> BTreeMap<String, f64> {
        let mut map = BTreeMap::new();
        for (sample, value) in metrics.samples(name) {
            let key: Vec<&str> = labels
                .iter()
                .map(|l| sample.get(*l).map_or("", String::as_str))
                .collect();
            *map.entry(key.join(" ")).or_default() += value;
        }
        map
    };
    ControllerDelta {
        api_requests: by(&format!("{prefix}_api_requests_total"), &["method", "code"]),
        rate_limit_wait_seconds: metrics
            .get(&format!("{prefix}_client_rate_limit_wait_seconds_total"))
            .unwrap_or(0.0),
        target_writes: by("fanout_target_writes_total", &["operation", "result"]),
        reconciles: by("fanout_reconciles_total", &["result"]),
    }
}

/// `after - before`, zeros left out.
pub fn since(after: &ControllerDelta, before: &ControllerDelta) -> ControllerDelta {
    let diff = |a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>| {
        a.iter()
            .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, v)| v.abs() > 1e-9)
            .collect()
    };
    ControllerDelta {
        api_requests: diff(&after.api_requests, &before.api_requests),
        rate_limit_wait_seconds: after.rate_limit_wait_seconds - before.rate_limit_wait_seconds,
        target_writes: diff(&after.target_writes, &before.target_writes),
        reconciles: diff(&after.reconciles, &before.reconciles),
    }
}
