//! The reconcile entry point: leadership gate, finalizer, metrics; and the
//! error policy the controller applies when a reconcile fails.
//!
//! The finalizer `fanout.dev/cleanup` sits on the Fanout only (never on a
//! namespace): while it is there, deleting the Fanout runs [`cleanup`]
//! first; an ordinary change runs a [`pass`].
//!
//! # A pass
//!
//! One reconcile pass of a live Fanout: read the source by name, resolve
//! the targets, copy into every accepted target through the ordered batch,
//! prune, and write the status in resolution order as results arrive.
//!
//! Shutdown and cancellation, as a pass sees them:
//! - **drain** (first signal): the batch starts no new target; writes in
//!   flight finish (each within `--write-timeout`); the final status lists
//!   finished targets with their result and the rest `Pending`, in order,
//!   with `Ready=False/Interrupted`. Pruning is skipped.
//! - **cancel** (source deleted, leadership lost, drain deadline): writes in
//!   flight are dropped at once and logged by target; no final status is
//!   written (the next pass, or the next leader, writes its own).
//!
//! # Cleanup
//!
//! Deleting a Fanout: let go of every copy it made, then of the finalizer.
//!
//! Copies are found with a label-selected list, page by page, of the kind
//! the Fanout copies, carrying its uid — not from the cache, and not from
//! the status — so a cleanup cut short by a restart simply finds what is
//! left next time. Each object listed is checked like every other letting
//! go ([`crate::copy::Scope`]): only real copies are deleted (or released,
//! for objects the Fanout took over); an object merely labelled with the
//! Fanout's uid is logged and left alone, and does not hold the finalizer.
//! The finalizer is removed once nothing that is a copy is left.

use std::collections::{BTreeMap, HashSet};
use std::marker::PhantomData;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use kube_lifecycle::batch::{self, BatchOptions, ItemOutcome};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::{self, CallError};
use crate::context::{Cached, Context};
use crate::copy::{Desired, OWNER_UID, Operation, Owner, parse_hash};
use crate::crd::{Fanout, FanoutStatus, SourceKind, TargetState, TargetStatus};
use crate::events::{self, Notice};
use crate::found::Found;
use crate::index::SourceKey;
use crate::metrics::ReconcileResult;
use crate::plan::Plan;
use crate::status::{self, StatusError, StatusWriter, Verdict};
use crate::targets;
use crate::write::{self, CopyJob, CopyRef, Done, Scope, WriteError, Writer, describe};

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
            FinalizerEvent::Apply(fanout) => run_pass(&ctx, fanout, cancel).await,
            FinalizerEvent::Cleanup(fanout) => clean_up(&ctx, &fanout, cancel).await,
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
/// with this Fanout's backoff ([`crate::write::Failures`]: jittered, so Fanouts that
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

/// A pass that failed and will be retried.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The source could not be read (not: it does not exist).
    #[error("cannot read the source")]
    ReadSource(#[source] CallError),
    /// The final status could not be written.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// Cleanup could not delete every copy (the finalizer stays).
    #[error("{remaining} copies of Fanout {fanout} are not deleted yet")]
    CleanupUnfinished {
        /// The Fanout.
        fanout: String,
        /// Copies left.
        remaining: usize,
    },
    /// Listing the copies to clean up failed.
    #[error("cannot list the copies of Fanout {fanout}")]
    ListCopies {
        /// The Fanout.
        fanout: String,
        /// Why.
        #[source]
        source: CallError,
    },
}

/// What one target needs in this pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Make the copy true.
    Sync,
    /// Make the copy true, reading the target first: it was blocked when
    /// the status was last written, but this process does not remember the
    /// blocker (it started since), so a create would most likely be
    /// refused. A restart or failover then costs a read per blocked
    /// target, and no write.
    Recheck,
    /// The namespace does not consent: remove our copy.
    Remove,
}

/// Initial entries and the work list `(entry index, work)`, both in
/// resolution order.
///
/// What the cache already decides costs no write and is reported at
/// once: a true copy is `Synced`, a blocker `Conflict` (remembered from an
/// earlier pass, see [`crate::blocked`], or cached). Only targets that
/// need a write enter the batch (as `Pending`), so a pass that the drain
/// stops before it starts anything reports what is true, not a list of
/// `Pending` over a converged Fanout.
pub fn classify<K: Cached>(
    ctx: &Context,
    resolved: &[String],
    job: &CopyJob<K>,
    previous: &FanoutStatus,
) -> (Vec<TargetStatus>, Vec<(usize, Work)>) {
    let was_blocked: HashSet<&str> = previous
        .targets
        .iter()
        .filter(|t| t.state == TargetState::Conflict)
        .map(|t| t.namespace.as_str())
        .collect();
    let consent = ctx.consent();
    let source_namespace = job.owner.namespace.as_str();
    let fanout = ObjectRef::new(&job.owner.name).within(source_namespace);
    let mut entries = Vec::with_capacity(resolved.len());
    let mut work = Vec::new();
    for (index, target) in resolved.iter().enumerate() {
        let Some(namespace) = ctx.stores.namespaces.get(target) else {
            entries.push(status::failed(
                target,
                format!("namespace {target} does not exist"),
            ));
            continue;
        };
        if namespace.terminating {
            entries.push(status::failed(
                target,
                format!("namespace {target} is being deleted"),
            ));
        } else if namespace.accepts(consent, source_namespace) {
            if let Some(message) = ctx
                .blockers
                .remembered(&fanout, K::KIND, target, &job.copy_name)
            {
                entries.push(write::conflict(target, message, None).status);
                continue;
            }
            let current = job.cached(ctx, target);
            match job.plan(ctx, target, current.as_deref()) {
                Plan::Keep => {
                    let done = write::synced(target, &job.desired.hash, current.as_deref(), None);
                    entries.push(done.status);
                }
                Plan::Conflict(message) => {
                    let done = write::conflict(target, message, current.as_deref());
                    if let Some(judged) = done.blocked {
                        ctx.blockers
                            .block(&fanout, K::KIND, target, &job.copy_name, judged);
                    }
                    entries.push(done.status);
                }
                Plan::Write(..) => {
                    entries.push(status::pending(target));
                    // Blocked when the status was written, and not seen
                    // cleared by this process: most likely still blocked.
                    let read_first = current.is_none()
                        && was_blocked.contains(target.as_str())
                        && !ctx.blockers.cleared(K::KIND, target, &job.copy_name);
                    work.push((
                        index,
                        if read_first {
                            Work::Recheck
                        } else {
                            Work::Sync
                        },
                    ));
                }
            }
        } else {
            entries.push(targets::refused(target, source_namespace));
            if owns_copy::<K>(ctx, target, &job.copy_name, &job.owner.uid) {
                work.push((index, Work::Remove));
            }
        }
    }
    (entries, work)
}

/// Whether the cache holds an object labelled as this Fanout's copy in
/// `namespace` (whether it really is one is decided before letting go).
fn owns_copy<K: Cached>(ctx: &Context, namespace: &str, name: &str, uid: &str) -> bool {
    K::cache(&ctx.stores)
        .get(namespace, name)
        .is_some_and(|c| c.owner.as_ref().is_some_and(|o| o.uid == uid))
}

/// Runs a pass for a Fanout that is not being deleted.
pub async fn run_pass(
    ctx: &Context,
    fanout: Arc<Fanout>,
    cancel: &CancellationToken,
) -> Result<Action, PassError> {
    match fanout.spec.source.kind {
        SourceKind::Secret => Pass::new(ctx, fanout, cancel).run::<Secret>().await,
        SourceKind::ConfigMap => Pass::new(ctx, fanout, cancel).run::<ConfigMap>().await,
    }
}

struct Pass<'a> {
    ctx: &'a Context,
    fanout: Arc<Fanout>,
    cancel: &'a CancellationToken,
    namespace: String,
    uid: String,
    owner: Owner,
    previous: FanoutStatus,
}

impl<'a> Pass<'a> {
    fn new(ctx: &'a Context, fanout: Arc<Fanout>, cancel: &'a CancellationToken) -> Self {
        let owner = Owner {
            namespace: fanout.namespace().unwrap_or_default(),
            name: fanout.name_any(),
            uid: fanout.uid().unwrap_or_default(),
        };
        Self {
            ctx,
            namespace: owner.namespace.clone(),
            uid: owner.uid.clone(),
            owner,
            previous: fanout.status.clone().unwrap_or_default(),
            fanout,
            cancel,
        }
    }

    async fn run<K: Cached>(&self) -> Result<Action, PassError> {
        if self.still_true::<K>() {
            debug!("the status still holds; nothing to read or write");
            self.ctx
                .metrics
                .set_summary(&self.uid, Some(self.previous.summary));
            self.ctx.failures.succeeded(&self.key());
            return Ok(Action::requeue(api::jittered(
                self.ctx.settings.resync_interval,
            )));
        }
        let source_name = &self.fanout.spec.source.name;
        let Some(source) = self.read_source::<K>().await? else {
            let object = describe::<K>(&self.namespace, source_name);
            return self
                .without_source::<K>(Verdict::SourceMissing(format!("{object} not found")))
                .await;
        };
        if let Some(reason) = source.refusal() {
            return self
                .without_source::<K>(Verdict::SourceRefused(reason))
                .await;
        }
        let resolved = match self.resolve() {
            Ok(resolved) => resolved,
            Err(invalid) => {
                return self
                    .without_source::<K>(Verdict::InvalidSpec(invalid.to_string()))
                    .await;
            }
        };
        let job = CopyJob::<K> {
            owner: self.owner.clone(),
            policy: self.fanout.spec.conflict_policy,
            desired: Desired::new(source.content()),
            source_name: source_name.clone(),
            copy_name: self.fanout.copy_name().to_owned(),
            kind: PhantomData,
        };
        let judged_from = self.ctx.blockers.epoch();
        let (mut entries, work) = classify(self.ctx, &resolved, &job, &self.previous);

        let writer = self.status_writer();
        writer.publish(self.snapshot(&entries, &job.desired.hash));
        let snapshot_every = self.ctx.settings.status_interval / 4;
        let mut last_snapshot = Instant::now();
        let mut writes: BTreeMap<Operation, usize> = BTreeMap::new();
        let mut abandoned = Vec::new();
        let options = BatchOptions::new(self.ctx.settings.fanout_concurrency)
            .stop_on(self.ctx.drain.clone())
            .abort_on(self.cancel.clone());
        let target_writer = Writer::new(self.ctx, self.cancel);
        let (target_writer, job_ref, resolved_ref) = (&target_writer, &job, &resolved);
        let mut outcomes = batch::ordered(work.iter(), options, |_, (index, work)| {
            let namespace = resolved_ref[*index].as_str();
            async move {
                match work {
                    Work::Sync => target_writer.sync(job_ref, namespace, false).await,
                    Work::Recheck => target_writer.sync(job_ref, namespace, true).await,
                    Work::Remove => {
                        self.remove::<K>(target_writer, resolved_ref, namespace)
                            .await
                    }
                }
            }
        });
        while let Some((item, outcome)) = outcomes.next().await {
            let (index, work) = work[item];
            let entry = &mut entries[index];
            match outcome {
                ItemOutcome::Succeeded(done) => {
                    if let Some(operation) = done.operation {
                        *writes.entry(operation).or_default() += 1;
                    }
                    if let Some(judged) = done.blocked {
                        self.ctx.blockers.block(
                            &self.key(),
                            K::KIND,
                            &entry.namespace,
                            &job.copy_name,
                            judged,
                        );
                    }
                    if work != Work::Remove {
                        *entry = done.status;
                    }
                }
                // Cut off by the drain before it started: still Pending.
                ItemOutcome::Failed(WriteError::Stopping) => {}
                ItemOutcome::Failed(error) => {
                    *entry = status::failed(&entry.namespace, chain(&error))
                }
                ItemOutcome::TimedOut { after } => {
                    *entry =
                        status::failed(&entry.namespace, format!("no answer within {after:?}"));
                }
                ItemOutcome::DeadlineExceeded => {
                    *entry = status::failed(&entry.namespace, "pass deadline passed".into())
                }
                ItemOutcome::Aborted => abandoned.push(entry.namespace.clone()),
                ItemOutcome::NotStarted(_) => {}
            }
            // A snapshot costs O(targets); building one per outcome would be
            // quadratic at 10,000 targets. The writer takes at most one per
            // interval, so a few per interval keep it current.
            if last_snapshot.elapsed() >= snapshot_every {
                writer.publish(self.snapshot(&entries, &job.desired.hash));
                last_snapshot = Instant::now();
            }
        }
        drop(outcomes);

        if self.cancel.is_cancelled() {
            for namespace in &abandoned {
                warn!(target_namespace = %namespace, "abandoned the write of this target");
            }
            info!(
                abandoned = abandoned.len(),
                "pass cancelled; the next pass writes the status"
            );
            return Ok(Action::await_change());
        }
        let interrupted = self.ctx.drain.is_cancelled()
            && entries.iter().any(|e| e.state == TargetState::Pending);
        let blocked: HashSet<&str> = entries
            .iter()
            .filter(|e| e.state == TargetState::Conflict)
            .map(|e| e.namespace.as_str())
            .collect();
        self.ctx
            .blockers
            .settle(&self.key(), K::KIND, &job.copy_name, &blocked, judged_from);
        let mut prune_left = 0;
        if !interrupted && self.fanout.spec.prune {
            // Objects labelled as ours outside the targets; `Scope` keeps
            // only the real copies of them. Refused targets were handled
            // in the batch.
            let targeted: HashSet<&str> = resolved.iter().map(String::as_str).collect();
            let candidates =
                write::cached::<K>(self.ctx, &self.uid, |c| targeted.contains(&*c.namespace));
            let stale = self
                .scope(&resolved)
                .select::<K>(self.ctx, candidates.iter().map(|c| &**c));
            let let_go = write::let_go_all(self.ctx, stale, self.cancel).await;
            for (operation, count) in let_go.writes() {
                *writes.entry(operation).or_default() += count;
            }
            prune_left = let_go.remaining;
        }
        let verdict = if interrupted {
            Verdict::Interrupted
        } else {
            Verdict::Targets
        };
        let last = self.status(&entries, Some(&job.desired.hash), &verdict);
        writer.finish(last.clone()).await?;
        self.finished(&last, &writes).await;
        Ok(self.next_action(&last, interrupted || prune_left > 0))
    }

    /// Whether the status on the object still holds, judged from the caches
    /// alone: the source unchanged since this process last read it (its
    /// watch saw no other version), the spec unchanged since the status was
    /// written, every target Synced then, and now still a consenting
    /// namespace holding this Fanout's copy, untouched (intact) under the
    /// same hash, with nothing to prune. A pass would then read the source,
    /// keep every copy and write nothing, so it is skipped: a converged
    /// Fanout costs no request, the periodic resync included. Anything
    /// less certain takes the whole pass.
    fn still_true<K: Cached>(&self) -> bool {
        let previous = &self.previous;
        let unchanged_source = SourceKey::of(&self.fanout)
            .is_some_and(|source| self.ctx.stores.source_versions.unchanged(&source));
        let Some(hash) = previous.source_hash.as_deref().and_then(parse_hash) else {
            return false;
        };
        let summary = previous.summary;
        if !unchanged_source
            || previous.observed_generation != self.fanout.metadata.generation
            || summary.synced != summary.desired
        {
            return false;
        }
        let Ok(resolved) = self.resolve() else {
            return false;
        };
        let listed = previous.targets.iter().map(|t| t.namespace.as_str());
        if resolved.len() != summary.desired as usize
            || (previous.targets_omitted == 0 && !listed.eq(resolved.iter().map(String::as_str)))
        {
            return false;
        }
        let consent = self.ctx.consent();
        let copies = K::cache(&self.ctx.stores);
        let copy_name = self.fanout.copy_name();
        let holds = |target: &String| {
            let accepts = self
                .ctx
                .stores
                .namespaces
                .get(target)
                .is_some_and(|ns| !ns.terminating && ns.accepts(consent, &self.namespace));
            let copy_true = copies.get(target, copy_name).is_some_and(|found| {
                found.owner.as_ref().is_some_and(|o| o.uid == self.uid)
                    && found.recorded_hash == Some(hash)
                    && found.intact
                    && found.protection.is_none()
            });
            accepts && copy_true
        };
        let targeted: HashSet<&str> = resolved.iter().map(String::as_str).collect();
        let nothing_to_prune = !self.fanout.spec.prune
            || copies
                .owned_by(&self.uid)
                .iter()
                .all(|copy| targeted.contains(&*copy.namespace));
        resolved.iter().all(holds) && nothing_to_prune
    }

    /// The source, by name; `None` if it does not exist.
    async fn read_source<K: Cached>(&self) -> Result<Option<K>, PassError> {
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let name = &self.fanout.spec.source.name;
        let object = describe::<K>(&self.namespace, name);
        let source = self
            .ctx
            .caller(self.cancel)
            .call("read", &object, || api.get_opt(name))
            .await
            .map_err(PassError::ReadSource)?;
        if let Some(key) = SourceKey::of(&self.fanout) {
            let version = source.as_ref().and_then(|s| s.resource_version());
            self.ctx.stores.source_versions.read(key, version);
        }
        Ok(source)
    }

    fn resolve(&self) -> Result<Vec<String>, targets::InvalidSelector> {
        self.ctx.resolve(&self.fanout)
    }

    /// Lets go of our copy in a target that withdrew its consent.
    async fn remove<K: Cached>(
        &self,
        writer: &Writer<'_>,
        resolved: &[String],
        namespace: &str,
    ) -> Result<Done, WriteError> {
        let refused = Done {
            status: targets::refused(namespace, &self.namespace),
            operation: None,
            blocked: None,
        };
        let copy_name = self.fanout.copy_name();
        let Some(found) = K::cache(&self.ctx.stores).get(namespace, copy_name) else {
            return Ok(refused);
        };
        let copy = match self.scope(resolved).admits::<K>(self.ctx, &found) {
            Ok(copy) => copy,
            Err(reason) => {
                warn!(%reason, "labelled as this Fanout's copy but left alone");
                return Ok(refused);
            }
        };
        let operation = writer.let_go::<K>(&copy).await?;
        if operation.is_some() {
            info!(target_namespace = %namespace, "namespace does not consent: let go of its copy");
        }
        Ok(Done {
            operation,
            ..refused
        })
    }

    /// What this Fanout may let go of, with `resolved` as its targets.
    fn scope<'s>(&'s self, resolved: &[String]) -> Scope<'s> {
        Scope {
            owner: &self.owner,
            kind: self.fanout.spec.source.kind,
            copy_name: self.fanout.copy_name(),
            targets: resolved.iter().cloned().collect(),
            consent: self.ctx.consent(),
        }
    }

    /// The source is gone or may not be copied, or the spec cannot be
    /// evaluated: no targets; with `prune`, a missing or refused source's
    /// copies are deleted (a spec error deletes nothing).
    async fn without_source<K: Cached>(&self, verdict: Verdict) -> Result<Action, PassError> {
        let mut writes = BTreeMap::new();
        let resolved = self.resolve();
        if let (true, Ok(resolved), false) = (
            self.fanout.spec.prune,
            &resolved,
            matches!(verdict, Verdict::InvalidSpec(_)),
        ) {
            let candidates = write::cached::<K>(self.ctx, &self.uid, |_| false);
            let copies = self
                .scope(resolved)
                .select::<K>(self.ctx, candidates.iter().map(|c| &**c));
            writes = write::let_go_all(self.ctx, copies, self.cancel)
                .await
                .writes();
        }
        if self.cancel.is_cancelled() {
            return Ok(Action::await_change());
        }
        self.ctx.blockers.forget(&self.key());
        let last = self.status(&[], None, &verdict);
        let writer = self.status_writer();
        writer.finish(last.clone()).await?;
        self.finished(&last, &writes).await;
        // The source watch requests a pass when the source appears; the
        // resync is only a safety net. No hot loop while it is missing.
        Ok(Action::requeue(api::jittered(
            self.ctx.settings.resync_interval,
        )))
    }

    /// The final status of a pass: every target, up to the cap.
    fn status(
        &self,
        entries: &[TargetStatus],
        hash: Option<&str>,
        verdict: &Verdict,
    ) -> FanoutStatus {
        self.assemble(entries, hash, verdict, self.ctx.settings.max_status_targets)
    }

    /// A status in the middle of a pass: the summary and conditions, and
    /// only the targets that need attention (in resolution order;
    /// `targetsOmitted` counts the rest).
    ///
    /// Why: every status write stores the whole object again, so a list of
    /// 1,000 entries rewritten once per interval made a fan-out's status
    /// cost grow with its duration (at 5 QPS, 200 writes of ~150 kB for
    /// 1,000 copies). The counts are what a person watches move; the full
    /// list is written once, when the pass ends (a drain's final write
    /// included), and whatever needs attention shows up at once.
    fn snapshot(&self, entries: &[TargetStatus], hash: &str) -> FanoutStatus {
        let listed = status::needing_attention(entries).min(self.ctx.settings.max_status_targets);
        self.assemble(entries, Some(hash), &Verdict::Targets, listed)
    }

    fn assemble(
        &self,
        entries: &[TargetStatus],
        hash: Option<&str>,
        verdict: &Verdict,
        max_targets: usize,
    ) -> FanoutStatus {
        let now = Time(Timestamp::now());
        status::assemble(status::Input {
            generation: self.fanout.metadata.generation,
            source_hash: hash,
            entries,
            verdict,
            previous_conditions: &self.previous.conditions,
            max_targets,
            now: &now,
        })
    }

    /// After the final status: metrics and Events.
    async fn finished(&self, last: &FanoutStatus, writes: &BTreeMap<Operation, usize>) {
        self.ctx.metrics.set_summary(&self.uid, Some(last.summary));
        let notices = events::changes(&self.previous, last, writes);
        debug!(summary = ?last.summary, "pass finished");
        // The Events describe the status just written: once it is, a
        // cancel of the pass (its source deleted, say) must not drop them,
        // since the next pass sees no change and would never say it. Only
        // the drain deadline cuts them off.
        events::publish(&self.ctx.recorder, &self.fanout, notices, &self.ctx.abort).await;
    }

    fn next_action(&self, last: &FanoutStatus, retry_soon: bool) -> Action {
        let summary = last.summary;
        let settings = &self.ctx.settings;
        let key = ObjectRef::from_obj(&*self.fanout);
        if self.ctx.drain.is_cancelled() {
            return Action::await_change();
        }
        if retry_soon || summary.failed > 0 {
            // Failed writes are mostly the API server's trouble: back off,
            // and come back soon once it is over.
            return Action::requeue(self.ctx.failures.failed(&key));
        }
        self.ctx.failures.succeeded(&key);
        // Blocked targets are watched (see `crate::blocked`): a blocker that
        // goes or changes wakes the Fanout, so conflicts need no polling.
        Action::requeue(api::jittered(settings.resync_interval))
    }

    /// The coalescing status writer of this pass.
    fn status_writer(&self) -> StatusWriter {
        StatusWriter::start(
            self.api(),
            self.fanout.name_any(),
            self.ctx.settings.status_interval,
            self.previous.clone(),
            self.cancel.clone(),
            self.ctx.watchdog.clone(),
        )
    }

    fn key(&self) -> ObjectRef<Fanout> {
        ObjectRef::from_obj(&*self.fanout)
    }

    fn api(&self) -> Api<Fanout> {
        Api::namespaced(self.ctx.client.clone(), &self.namespace)
    }
}

/// Objects listed per page: bounded memory whatever the fan-out's size.
const PAGE: u32 = 500;

/// Lets go of every copy of `fanout`; an error keeps the finalizer in place.
pub async fn clean_up(
    ctx: &Context,
    fanout: &Fanout,
    cancel: &CancellationToken,
) -> Result<Action, PassError> {
    let owner = Owner {
        namespace: fanout.namespace().unwrap_or_default(),
        name: fanout.name_any(),
        uid: fanout.uid().unwrap_or_default(),
    };
    let name = format!("{}/{}", owner.namespace, owner.name);
    if owner.uid.is_empty() {
        return Ok(Action::await_change());
    }
    let scope = Scope {
        owner: &owner,
        kind: fanout.spec.source.kind,
        copy_name: fanout.copy_name(),
        // An invalid selector targets nothing: copies are then let go of
        // only where the Fanout may copy.
        targets: ctx
            .resolve(fanout)
            .unwrap_or_default()
            .into_iter()
            .collect(),
        consent: ctx.consent(),
    };
    let copies = match scope.kind {
        SourceKind::Secret => list::<Secret>(ctx, &scope, &name, cancel).await?,
        SourceKind::ConfigMap => list::<ConfigMap>(ctx, &scope, &name, cancel).await?,
    };
    let let_go = write::let_go_all(ctx, copies, cancel).await;
    // Copies cut off by a drain or a cancel count as remaining.
    if let_go.remaining > 0 || cancel.is_cancelled() {
        return Err(PassError::CleanupUnfinished {
            fanout: name,
            remaining: let_go.remaining,
        });
    }
    info!(fanout = %name, deleted = let_go.deleted, released = let_go.released, "let go of every copy; removing the finalizer");
    ctx.metrics.set_summary(&owner.uid, None);
    ctx.failures.succeeded(&ObjectRef::from_obj(fanout));
    ctx.blockers.forget(&ObjectRef::from_obj(fanout));
    if let_go.deleted + let_go.released > 0 {
        let notice = Notice {
            warning: false,
            reason: "CopiesDeleted".to_owned(),
            note: format!(
                "deleted {} copies and released {} adopted or overwritten objects before deletion",
                let_go.deleted, let_go.released
            ),
        };
        events::publish(&ctx.recorder, fanout, vec![notice], cancel).await;
    }
    Ok(Action::await_change())
}

/// The copies of `scope`'s Fanout, listed by its uid label a page at a time.
async fn list<K: Cached>(
    ctx: &Context,
    scope: &Scope<'_>,
    fanout: &str,
    cancel: &CancellationToken,
) -> Result<Vec<CopyRef>, PassError> {
    let api: Api<K> = Api::all(ctx.client.clone());
    let what = format!("{}s of Fanout {fanout}", K::KIND.as_str().to_lowercase());
    let mut params = ListParams::default()
        .labels(&format!("{OWNER_UID}={}", scope.owner.uid))
        .limit(PAGE);
    let mut copies = Vec::new();
    loop {
        let page = ctx
            .caller(cancel)
            .call("list", &what, || api.list(&params))
            .await
            .map_err(|source| PassError::ListCopies {
                fanout: fanout.to_owned(),
                source,
            })?;
        let found: Vec<Found> = page.items.iter().map(Found::of).collect();
        copies.extend(scope.select::<K>(ctx, &found));
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(copies),
        }
    }
}
