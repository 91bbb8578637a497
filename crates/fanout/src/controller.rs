//! The Fanout controller's run loop and what every reconcile shares,
//! plugged into [`kube_lifecycle`] through [`run`].
//!
//! Data flow: watch events ([`crate::watches`]) → [`ObjectRef`]s →
//! kube-runtime's scheduler (dedup, requeues) → at most `--concurrency`
//! reconciles ([`crate::reconcile`]) → one ordered batch per Fanout, each
//! target write under the global `--fanout-concurrency` cap → outcomes in
//! resolution order → a status snapshot, written at most once per
//! `--status-interval` and once at the end.
//!
//! Shared by every reconcile ([`Context`]): the client, the caches, the
//! global write cap, metrics, the event recorder, the running reconciles
//! (each with its own cancellation token, so an event elsewhere can stop one
//! mid-way: a deleted source cancels its Fanout's pass, a lost lease cancels
//! them all), the queue depth, the failure backoffs, and the runtime's
//! leader, drain and abort signals.
//!
//! Readiness: `crd-served` (the API server serves
//! `fanouts.fanout.dev/v1alpha1`, asked through discovery, which every
//! authenticated user may read) and `caches-synced` (the runtime's
//! [`SyncGate`] over every watch). Both are declared to the runtime
//! ([`READINESS_CHECKS`]) and so exist before the admin server binds.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::utils::CancelableJoinHandle;
use kube::runtime::{applier, controller};
use kube_lifecycle::Handles;
use kube_lifecycle::health::ReadinessCheck;
use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::api::{Failures, is_timeout};
use crate::blocked::Blockers;
use crate::context::{Context, QueueDepth, Running, Settings};
use crate::crd::Fanout;
use crate::guard;
use crate::index::FanoutIndex;
use crate::metrics::FanoutMetrics;
use crate::reconcile;
use crate::watches::{self, SourceWatches, Watches};

/// The readiness check of the API serving the Fanout resource.
pub const CRD_SERVED: &str = "crd-served";
/// The readiness check of the caches, passed once every watch has listed.
pub const CACHES_SYNCED: &str = "caches-synced";
/// The readiness checks the Fanout controller reports; the runtime
/// registers them before `/readyz` can first answer.
pub const READINESS_CHECKS: [&str; 2] = [CRD_SERVED, CACHES_SYNCED];

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
    let synced = handles.sync_gate(CACHES_SYNCED);
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
    let fanout_index = FanoutIndex::default();
    // Requests from the source and blocker watches, which come and go.
    let (source_requests, source_receiver) = futures::channel::mpsc::unbounded();
    let blocker_requests = source_requests.clone();
    let sources = SourceWatches::new(
        client.clone(),
        fanout_index.clone(),
        running.clone(),
        source_requests,
        drain.child_token(),
    );
    // The Fanout watch failing is the sign to ask discovery again.
    let fanout_watch_failed = Arc::new(Notify::new());
    let watches = Watches::new(
        &client,
        settings.fanout_selector.as_deref(),
        sources,
        metrics.clone(),
        (fanout_store.clone(), fanout_writer, fanout_index),
        (synced, fanout_watch_failed.clone()),
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
        failures: Failures::new(settings.retry_interval / 3),
        blockers: Blockers::new(
            client.clone(),
            blocker_requests,
            drain.child_token(),
            settings.retry_interval,
        ),
        watchdog,
        settings: settings.clone(),
    });

    let background = TaskTracker::new();
    background.spawn(track_crd_served(
        client.clone(),
        api_server,
        health.readiness_check(CRD_SERVED),
        fanout_watch_failed,
        drain.clone(),
    ));
    background.spawn(guard::track_source_access_policy(
        client.clone(),
        settings.source_access_policy.clone(),
        metrics.clone(),
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
                if !stores.synced.has_listed(watches::FANOUTS) {
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

/// How often discovery is asked while the CRD is missing.
const RETRY: Duration = Duration::from_secs(2);

/// What asking discovery told us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Served,
    NotServed,
    Unreachable,
}

/// Keeps `check` equal to "the Fanout API is served" until `stop` fires.
/// Discovery is asked until it says served, then again only when the Fanout
/// watch fails (`watch_failed`): a deleted CRD shows there first, and a
/// converged controller makes no request on a timer. A request in flight is
/// dropped when `stop` fires, so a hung API server never holds the drain.
pub async fn track_crd_served(
    client: Client,
    server: String,
    check: ReadinessCheck,
    watch_failed: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut last = None;
    loop {
        let asked = tokio::select! {
            () = stop.cancelled() => return,
            asked = client.list_api_group_resources("fanout.dev/v1alpha1") => asked,
        };
        let answer = match &asked {
            Ok(list) if list.resources.iter().any(|r| r.name == "fanouts") => Answer::Served,
            Ok(_) => Answer::NotServed,
            Err(kube::Error::Api(status)) if status.code == 404 => Answer::NotServed,
            Err(_) => Answer::Unreachable,
        };
        if last != Some(answer) {
            match (answer, &asked) {
                (Answer::Served, _) => info!("the Fanout API is served"),
                (Answer::NotServed, _) => warn!(
                    "the API server at {server} does not serve fanouts.fanout.dev/v1alpha1: install the CRD (fanout crd | kubectl apply -f -)"
                ),
                (Answer::Unreachable, Err(error)) => {
                    let what = if is_timeout(error) {
                        "does not answer"
                    } else {
                        "cannot be reached"
                    };
                    warn!(%error, "the API server at {server} {what}; not ready until it does");
                }
                (Answer::Unreachable, Ok(_)) => {}
            }
        }
        last = Some(answer);
        check.set_ready(answer == Answer::Served);
        if answer == Answer::Served {
            tokio::select! {
                () = watch_failed.notified() => {}
                () = stop.cancelled() => return,
            }
        } else {
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}
