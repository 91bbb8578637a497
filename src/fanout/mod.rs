//! The Fanout controller: the custom resource and everything that reconciles
//! it, plugged into the [`runtime`](crate::runtime) through [`run`].
//!
//! Modules, from the resource inwards:
//! - [`crd`]: the `Fanout` resource, its status, the CRD and its admission rules;
//! - pure decisions, unit-tested: [`targets`] (resolution order), [`consent`],
//!   [`copy`] (content, ownership labels, hash), [`plan`] (conflict policy and
//!   the write a target needs), [`status`] (summary, capped ordered list,
//!   `Ready`), [`events`] (what changed);
//! - cluster plumbing: [`watches`] (caches and reconcile requests),
//!   [`sources`] (one by-name watch per source), [`context`] (what reconciles
//!   share), [`running`] (cancel a running pass), [`queue`], [`metrics`],
//!   [`readiness`];
//! - the work: [`reconcile`] (leadership gate, finalizer) → [`pass`] (source,
//!   targets, the ordered batch of [`write`]s, pruning) with the coalescing
//!   [`status_writer`]; [`cleanup`] and [`prune`] delete copies; [`retry`]
//!   classifies API errors.
//!
//! Data flow: watch events → [`ObjectRef`]s → kube-runtime's scheduler
//! (dedup, requeues) → at most `--concurrency` reconciles → one ordered batch
//! per Fanout, each target write under the global `--fanout-concurrency`
//! semaphore and `--write-timeout` → outcomes in resolution order → a status
//! snapshot → written at most once per `--status-interval` and once at the end.

pub mod api;
pub mod cleanup;
pub mod consent;
pub mod context;
pub mod copy;
pub mod crd;
pub mod events;
pub mod guard;
pub mod metrics;
pub mod pass;
pub mod plan;
pub mod prune;
pub mod queue;
pub mod readiness;
pub mod reconcile;
pub mod retry;
pub mod running;
pub mod settings;
pub mod sources;
pub mod status;
pub mod status_writer;
pub mod targets;
pub mod watches;
pub mod write;

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::utils::CancelableJoinHandle;
use kube::runtime::{applier, controller};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::runtime::Handles;
use context::{Cache, Context};
use metrics::FanoutMetrics;
use queue::QueueDepth;
use running::Running;
use sources::SourceWatches;
use watches::Watches;

pub use crd::{Fanout, FanoutSpec, FanoutStatus, crd_yaml};
pub use readiness::READINESS_CHECKS;
pub use settings::Settings;

/// The least time reconciles in flight may go without any progress (an API
/// call ending, with any result) before `/livez` fails: a pass waits on
/// calls that each end within `--write-timeout`, backoffs of a few seconds
/// and its turn at the write cap, all of which move as long as anything
/// moves. Four write timeouts, and never less than this, is far beyond
/// what a working loop takes.
const WEDGE_ALLOWANCE_FLOOR: Duration = Duration::from_secs(60);

/// Errors that stop the controller before it runs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The controller's metrics could not be registered (a name clash).
    #[error("cannot register the controller's metrics")]
    Metrics(#[source] prometheus::Error),
}

/// Runs the Fanout controller until a drain completes.
///
/// - Watches run and caches fill whether or not this process leads; only the
///   leader reconciles, and becoming leader requests every Fanout.
/// - Readiness checks `crd-served` and `caches-synced` follow the cluster;
///   the liveness watchdog `reconciles` fails if reconciles are in flight
///   and none of them has made progress for a long time (a wedged loop).
/// - On `drain`: no reconcile starts, running passes launch no new target,
///   writes in flight finish, each interrupted Fanout gets its final ordered
///   status (finished targets with their result, the rest `Pending`), then
///   this returns.
/// - On `abort`: every running reconcile is named in the log and
///   cancelled; passes drop their writes (each abandoned target is logged)
///   and this returns as soon as they have; the runtime stops waiting after
///   its own grace.
pub async fn run(handles: Handles, settings: Settings) -> Result<(), Error> {
    let Handles {
        client,
        api_server,
        registry,
        health,
        leader,
        drain,
        abort,
    } = handles;
    let metrics = FanoutMetrics::register(&registry).map_err(Error::Metrics)?;
    let allowance = WEDGE_ALLOWANCE_FLOOR.max(settings.write_timeout * 4);
    let watchdog = health.watchdog("reconciles", allowance);
    let running = Running::default();
    let abandoned = running.clone();
    let (fanout_store, fanout_writer) = reflector::store();
    let (source_requests, source_receiver) = futures::channel::mpsc::unbounded();
    let sources = SourceWatches::new(
        client.clone(),
        fanout_store.clone(),
        running.clone(),
        source_requests,
        drain.child_token(),
    );
    let watches = Watches::new(
        &client,
        settings.fanout_selector.as_deref(),
        sources,
        metrics.clone(),
        (fanout_store.clone(), fanout_writer),
    );
    let stores = watches.stores.clone();
    let queue = QueueDepth::new(metrics.clone());
    let reporter = Reporter {
        controller: "fanout-controller".to_owned(),
        instance: settings.instance.clone(),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        writes: Semaphore::new(settings.fanout_concurrency.get()),
        stores: stores.clone(),
        metrics: metrics.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        running: running.clone(),
        leader: leader.clone(),
        drain: drain.clone(),
        abort: abort.clone(),
        queue: queue.clone(),
        failures: retry::Failures::new(settings.retry_interval / 3),
        watchdog,
        settings: settings.clone(),
    });

    let background = TaskTracker::new();
    background.spawn(readiness::track_crd_served(
        client.clone(),
        api_server,
        health.readiness_check("crd-served"),
        drain.clone(),
    ));
    background.spawn(guard::track_source_access_policy(
        client.clone(),
        settings.source_access_policy.clone(),
        metrics.clone(),
        drain.clone(),
    ));
    background.spawn(readiness::track_caches_synced(
        stores.clone(),
        health.readiness_check("caches-synced"),
        drain.clone(),
    ));
    background.close();

    let requests = watches
        .requests([
            source_receiver.boxed(),
            watches::leadership_requests(leader, fanout_store.clone(), running),
        ])
        .inspect(move |request: &ObjectRef<Fanout>| queue.requested(request))
        .map(Ok::<_, Infallible>)
        .take_until(drain.clone().cancelled_owned());
    let concurrency = u16::try_from(settings.concurrency.get()).unwrap_or(u16::MAX);
    let mut reconciles = pin!(applier(
        |fanout, ctx| {
            // Every line a reconcile logs names its Fanout (SPEC: logs carry
            // the Fanout and the target in their fields).
            let span = info_span!("reconcile", fanout = %ObjectRef::from_obj(&*fanout));
            CancelableJoinHandle::spawn(
                reconcile::reconcile(fanout, ctx).instrument(span),
                &Handle::current(),
            )
        },
        reconcile::error_policy,
        ctx,
        fanout_store.clone(),
        requests,
        controller::Config::default().concurrency(concurrency),
    ));

    info!(selector = ?settings.fanout_selector, "Fanout controller started");
    let mut draining = false;
    let mut aborting = false;
    loop {
        tokio::select! {
            next = reconciles.next() => match next {
                Some(Ok((fanout, action))) => debug!(%fanout, ?action, "reconciled"),
                Some(Err(error)) => debug!(error = %reconcile::chain(&error), "reconcile did not complete"),
                None => break,
            },
            () = drain.cancelled(), if !draining => {
                draining = true;
                info!("drain: no new reconcile starts; waiting for running ones");
                // Before the Fanout cache has listed, no reconcile can have
                // started, and kube-runtime's runner would wait for the cache
                // forever: there is nothing to wait for.
                if !stores.listed.has(Cache::Fanouts) {
                    break;
                }
            }
            () = abort.cancelled(), if !aborting => {
                // Running passes are cancelled by the same token (they log
                // the targets they abandon); name every Fanout left behind.
                aborting = true;
                for fanout in abandoned.keys() {
                    warn!(%fanout, "drain deadline passed: abandoning the reconcile of this Fanout");
                }
            }
        }
    }
    background.wait().await;
    info!("Fanout controller stopped");
    Ok(())
}
