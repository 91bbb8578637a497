//! The reconcile entry point: leadership gate, finalizer, metrics; and the
//! error policy the controller applies when a reconcile fails.
//!
//! The finalizer `fanout.dev/cleanup` sits on the Fanout only (never on a
//! namespace): while it is there, deleting the Fanout runs [`cleanup`]
//! first; an ordinary change runs a [`pass`].

use std::sync::Arc;
use std::time::Instant;

use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::cleanup;
use super::context::Context;
use super::crd::Fanout;
use super::metrics::ReconcileResult;
use super::pass::{self, PassError};

/// The finalizer that makes deleting a Fanout delete its copies first.
pub const FINALIZER: &str = "fanout.dev/cleanup";

/// A reconcile that failed and will be retried.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The drain began before every cache had listed once.
    #[error("the watch caches never synced before the drain")]
    CachesNotSynced,
    /// The pass or the cleanup failed, or the finalizer could not be changed.
    #[error(transparent)]
    Finalizer(#[from] Box<finalizer::Error<PassError>>),
}

/// Reconciles one Fanout (called by the kube-runtime applier).
pub async fn reconcile(fanout: Arc<Fanout>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let key = ObjectRef::from_obj(&*fanout);
    ctx.queue.started(&key);
    if ctx.drain.is_cancelled() {
        // Dispatched as the drain began: nothing is started, so nothing is
        // interrupted, and the status on the object stays as it is.
        return Ok(Action::await_change());
    }
    if !ctx.is_leader() {
        // A standby keeps its caches warm and does nothing; becoming leader
        // requests every Fanout again.
        ctx.metrics.reconciled(ReconcileResult::Skipped, 0.0);
        return Ok(Action::await_change());
    }
    if !ctx.stores.ready(&ctx.drain).await {
        return Err(ReconcileError::CachesNotSynced);
    }
    let Some(namespace) = fanout.namespace() else {
        return Ok(Action::await_change());
    };
    let _in_flight = ctx.metrics.reconcile_in_flight();
    let _busy = ctx.watchdog.busy();
    let guard = ctx.running.start(key, &ctx.abort);
    let cancel = guard.token();
    let started = Instant::now();
    let api: Api<Fanout> = Api::namespaced(ctx.client.clone(), &namespace);
    // The finalizer helper patches with a JSON-patch `test` of the list it
    // saw, so a cache that lags behind our own last patch makes it fail.
    // Where the finalizer is about to be added or removed, read the object
    // fresh: a rare GET instead of a spurious 422 or 404.
    let fanout = if fanout.finalizers().iter().any(|f| f == FINALIZER)
        && fanout.metadata.deletion_timestamp.is_none()
    {
        fanout
    } else {
        let name = fanout.name_any();
        let object = format!("Fanout {namespace}/{name}");
        match ctx
            .caller(cancel)
            .call("read", &object, || api.get_opt(&name))
            .await
        {
            Ok(Some(fresh)) => Arc::new(fresh),
            Ok(None) => return Ok(Action::await_change()),
            Err(_) => fanout,
        }
    };
    let result = finalizer(&api, FINALIZER, fanout, |event| async {
        match event {
            FinalizerEvent::Apply(fanout) => pass::run(&ctx, fanout, cancel).await,
            FinalizerEvent::Cleanup(fanout) => cleanup::run(&ctx, &fanout, cancel).await,
        }
    })
    .await;
    let outcome = match &result {
        _ if cancel.is_cancelled() => ReconcileResult::Cancelled,
        Ok(_) => ReconcileResult::Ok,
        Err(_) => ReconcileResult::Error,
    };
    ctx.metrics
        .reconciled(outcome, started.elapsed().as_secs_f64());
    result.map_err(|e| ReconcileError::Finalizer(Box::new(e)))
}

/// What to do after a failed reconcile: log it with its causes and try again
/// with this Fanout's backoff ([`super::retry::Failures`]: jittered, so Fanouts that
/// failed together do not retry together).
pub fn error_policy(fanout: Arc<Fanout>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let delay = ctx.failures.failed(&ObjectRef::from_obj(&*fanout));
    if ctx.drain.is_cancelled() {
        info!(fanout = %ObjectRef::from_obj(&*fanout), error = %chain(error), "reconcile stopped by the drain");
    } else {
        warn!(fanout = %ObjectRef::from_obj(&*fanout), error = %chain(error), retry_in = ?delay, "reconcile failed");
    }
    Action::requeue(delay)
}

/// An error and its causes on one line: `a: b: c`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
