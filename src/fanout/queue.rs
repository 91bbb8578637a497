//! An approximate reconcile queue depth for the `fanout_queue_depth` gauge.
//!
//! kube-runtime's scheduler does not expose its length, so the controller
//! counts what it can see: the distinct Fanouts for which a watch event
//! requested a reconcile that has not started yet. Like the scheduler, it
//! counts a Fanout once however many events name it. Retries the scheduler
//! arms itself (requeue after an error or a conflict) are not seen until
//! they start, so the gauge is a lower bound.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use kube::runtime::reflector::ObjectRef;

use super::crd::Fanout;
use super::metrics::FanoutMetrics;

/// Tracks requested-but-not-started reconciles; cheap to clone.
#[derive(Clone, Debug)]
pub struct QueueDepth {
    waiting: Arc<Mutex<HashSet<ObjectRef<Fanout>>>>,
    metrics: FanoutMetrics,
}

impl QueueDepth {
    /// An empty queue reporting to `metrics`.
    pub fn new(metrics: FanoutMetrics) -> Self {
        Self {
            waiting: Arc::default(),
            metrics,
        }
    }

    /// A reconcile of `key` was requested.
    pub fn requested(&self, key: &ObjectRef<Fanout>) {
        self.update(|waiting| {
            waiting.insert(key.clone());
        });
    }

    /// A reconcile of `key` started.
    pub fn started(&self, key: &ObjectRef<Fanout>) {
        self.update(|waiting| {
            waiting.remove(key);
        });
    }

    fn update(&self, change: impl FnOnce(&mut HashSet<ObjectRef<Fanout>>)) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut waiting);
        self.metrics.set_queue_depth(waiting.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Registry;

    #[test]
    fn counts_distinct_waiting_fanouts() {
        let registry = Registry::new();
        let queue = QueueDepth::new(FanoutMetrics::register(&registry).unwrap());
        let a = ObjectRef::new("a").within("ns");
        let b = ObjectRef::new("b").within("ns");
        queue.requested(&a);
        queue.requested(&a);
        queue.requested(&b);
        let depth = || {
            registry
                .gather()
                .iter()
                .find(|f| f.name() == "fanout_queue_depth")
                .unwrap()
                .get_metric()[0]
                .get_gauge()
                .get_value()
        };
        assert_eq!(depth(), 2.0);
        queue.started(&a);
        assert_eq!(depth(), 1.0);
    }
}
