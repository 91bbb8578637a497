//! The controller's Prometheus series, registered once on the runtime's
//! registry. No series carries a per-object label: a Fanout or namespace
//! name in a label would make the series count grow with the cluster.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::copy::Operation;
use crate::crd::{Summary, TargetState};

/// How a reconcile ended, the label of `fanout_reconciles_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileResult {
    /// It ran to its end (whatever the targets' states).
    Ok,
    /// It returned an error and will be retried with backoff.
    Error,
    /// It was cut short: source deleted, leadership lost, or the drain.
    Cancelled,
    /// This process is not the leader, so nothing was done.
    Skipped,
}

impl ReconcileResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
        }
    }
}

/// How one target write ended, the `result` label of `fanout_target_writes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteResult {
    /// The API accepted it.
    Ok,
    /// The API refused it or failed.
    Error,
    /// It ran past `--write-timeout`.
    Timeout,
}

impl WriteResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Timeout => "timeout",
        }
    }
}

/// Handles to the controller's series; cheap to clone.
#[derive(Clone, Debug)]
pub struct FanoutMetrics {
    reconciles: IntCounterVec,
    reconcile_duration: Histogram,
    target_writes: IntCounterVec,
    targets: IntGaugeVec,
    queue_depth: IntGauge,
    reconciles_in_flight: IntGauge,
    writes_in_flight: IntGauge,
    source_access_policy: IntGauge,
    /// Last summary per Fanout (keyed by uid), summed into `targets`.
    summaries: Arc<Mutex<HashMap<String, Summary>>>,
}

impl FanoutMetrics {
    /// Registers every series on `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            reconciles: IntCounterVec::new(
                Opts::new(
                    "fanout_reconciles_total",
                    "Fanout reconciles by how they ended.",
                ),
                &["result"],
            )?,
            reconcile_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "fanout_reconcile_duration_seconds",
                    "Duration of Fanout reconciles, from start to final status write.",
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                ]),
            )?,
            target_writes: IntCounterVec::new(
                Opts::new(
                    "fanout_target_writes_total",
                    "API writes to copies, by operation and result.",
                ),
                &["operation", "result"],
            )?,
            targets: IntGaugeVec::new(
                Opts::new(
                    "fanout_targets",
                    "Resolved targets of all Fanouts by state, as of each Fanout's last status.",
                ),
                &["state"],
            )?,
            queue_depth: IntGauge::new(
                "fanout_queue_depth",
                "Fanouts with a reconcile requested by a watch event but not yet started (approximate: scheduled retries are not counted).",
            )?,
            reconciles_in_flight: IntGauge::new(
                "fanout_reconciles_in_flight",
                "Fanout reconciles running now.",
            )?,
            writes_in_flight: IntGauge::new(
                "fanout_target_writes_in_flight",
                "Target writes running now.",
            )?,
            source_access_policy: IntGauge::new(
                "fanout_source_access_policy",
                "1 while the admission policy that refuses Fanouts of sources their creator may not read is in force, else 0.",
            )?,
            summaries: Arc::default(),
        };
        let collectors: [Box<dyn Collector>; 8] = [
            Box::new(metrics.reconciles.clone()),
            Box::new(metrics.reconcile_duration.clone()),
            Box::new(metrics.target_writes.clone()),
            Box::new(metrics.targets.clone()),
            Box::new(metrics.queue_depth.clone()),
            Box::new(metrics.reconciles_in_flight.clone()),
            Box::new(metrics.writes_in_flight.clone()),
            Box::new(metrics.source_access_policy.clone()),
        ];
        for collector in collectors {
            registry.register(collector)?;
        }
        // Expose every label value from the start, so rates work from zero.
        for result in [
            ReconcileResult::Ok,
            ReconcileResult::Error,
            ReconcileResult::Cancelled,
            ReconcileResult::Skipped,
        ] {
            metrics.reconciles.with_label_values(&[result.as_str()]);
        }
        for operation in Operation::ALL {
            for result in [WriteResult::Ok, WriteResult::Error, WriteResult::Timeout] {
                metrics
                    .target_writes
                    .with_label_values(&[operation.as_str(), result.as_str()]);
            }
        }
        metrics.publish_targets(&HashMap::new());
        Ok(metrics)
    }

    /// Records a finished reconcile.
    pub fn reconciled(&self, result: ReconcileResult, seconds: f64) {
        self.reconciles.with_label_values(&[result.as_str()]).inc();
        if result != ReconcileResult::Skipped {
            self.reconcile_duration.observe(seconds);
        }
    }

    /// Records one target write.
    pub fn wrote(&self, operation: Operation, result: WriteResult) {
        self.target_writes
            .with_label_values(&[operation.as_str(), result.as_str()])
            .inc();
    }

    /// Counts a running reconcile until the guard drops.
    pub fn reconcile_in_flight(&self) -> InFlight {
        InFlight::new(self.reconciles_in_flight.clone())
    }

    /// Counts a running write until the guard drops.
    pub fn write_in_flight(&self) -> InFlight {
        InFlight::new(self.writes_in_flight.clone())
    }

    /// Records whether the source-access admission policy is in force.
    pub fn set_source_access_policy(&self, in_force: bool) {
        self.source_access_policy.set(i64::from(in_force));
    }

    /// Sets the queue depth gauge.
    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Records a Fanout's latest counts (`None` once it is gone).
    pub fn set_summary(&self, uid: &str, summary: Option<Summary>) {
        let mut summaries = self
            .summaries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match summary {
            Some(summary) => summaries.insert(uid.to_owned(), summary),
            None => summaries.remove(uid),
        };
        self.publish_targets(&summaries);
    }

    fn publish_targets(&self, summaries: &HashMap<String, Summary>) {
        for state in TargetState::ALL {
            let total: i64 = summaries
                .values()
                .map(|s| {
                    i64::from(match state {
                        TargetState::Pending => s.pending,
                        TargetState::Synced => s.synced,
                        TargetState::Failed => s.failed,
                        TargetState::Conflict => s.conflict,
                        TargetState::Refused => s.refused,
                    })
                })
                .sum();
            self.targets.with_label_values(&[state.as_str()]).set(total);
        }
    }
}

/// Decrements its gauge when dropped, so a cancelled future is uncounted too.
#[derive(Debug)]
pub struct InFlight(IntGauge);

impl InFlight {
    fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series of `name` whose label values include all of `labels`.
    fn value(registry: &Registry, name: &str, labels: &[&str]) -> f64 {
        let family = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == name)
            .unwrap();
        let metric = family
            .get_metric()
            .iter()
            .find(|m| {
                labels
                    .iter()
                    .all(|want| m.get_label().iter().any(|l| l.value() == *want))
            })
            .unwrap();
        if family.get_field_type() == prometheus::proto::MetricType::COUNTER {
            metric.get_counter().get_value()
        } else {
            metric.get_gauge().get_value()
        }
    }

    #[test]
    fn targets_by_state_sum_over_fanouts_and_forget_deleted_ones() {
        let registry = Registry::new();
        let metrics = FanoutMetrics::register(&registry).unwrap();
        let summary = |synced, failed| Summary {
            desired: synced + failed,
            synced,
            failed,
            ..Summary::default()
        };
        metrics.set_summary("a", Some(summary(3, 1)));
        metrics.set_summary("b", Some(summary(2, 0)));
        assert_eq!(value(&registry, "fanout_targets", &["Synced"]), 5.0);
        assert_eq!(value(&registry, "fanout_targets", &["Failed"]), 1.0);
        metrics.set_summary("a", None);
        assert_eq!(value(&registry, "fanout_targets", &["Synced"]), 2.0);
    }

    #[test]
    fn in_flight_guards_count_until_dropped() {
        let registry = Registry::new();
        let metrics = FanoutMetrics::register(&registry).unwrap();
        let first = metrics.write_in_flight();
        let second = metrics.write_in_flight();
        assert_eq!(value(&registry, "fanout_target_writes_in_flight", &[]), 2.0);
        drop((first, second));
        assert_eq!(value(&registry, "fanout_target_writes_in_flight", &[]), 0.0);
    }

    #[test]
    fn counters_carry_only_low_cardinality_labels() {
        let registry = Registry::new();
        let metrics = FanoutMetrics::register(&registry).unwrap();
        metrics.wrote(Operation::Create, WriteResult::Ok);
        metrics.reconciled(ReconcileResult::Ok, 0.2);
        for family in registry.gather() {
            for metric in family.get_metric() {
                for label in metric.get_label() {
                    assert!(
                        ["result", "operation", "state"].contains(&label.name()),
                        "{}",
                        label.name()
                    );
                }
            }
        }
        assert_eq!(
            value(&registry, "fanout_target_writes_total", &["create", "ok"]),
            1.0
        );
    }
}
