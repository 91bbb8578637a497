//! Carrying out one target: decide from the cache, write, and on a stale
//! view re-read and decide again.
//!
//! A target's writes hold one permit of the global write cap
//! (`--fanout-concurrency`, shared by all reconciles) from the first write
//! to the last, so a recreate (delete, then create) is one unit: the drain
//! stops targets that have not started, never one half-way. Every request
//! goes through [`Caller::call`] (deadline, retry of transient failures,
//! cancellation) and is counted in metrics. A 409 or 404 means the cache
//! was stale, so the object is read again and the decision made afresh. A
//! single POST or PUT is atomic on the server, so a write cut off by
//! cancellation leaves either the old object or the new one.
//!
//! Letting go of copies ([`let_go_all`]: pruning, consent withdrawn, source
//! gone, cleanup) runs the same way, as a batch under the same cap: a copy
//! the Fanout created is deleted (guarded by its uid), an object it adopted
//! or overwrote is released (its Fanout labels and annotations removed,
//! guarded by its resourceVersion), never deleted. What may be let go of is
//! decided by [`Scope::admits`]: every marker must agree — the
//! `fanout.dev/managed-by` label and the three owner labels naming the
//! Fanout, a well-formed content-hash annotation, the kind and name it
//! writes; it must not be protected, nor in the Fanout's own namespace (where
//! its source lives), and its namespace must be one the Fanout could have
//! written to: a target now, or one that accepts copies from the Fanout's
//! namespace (always, with `--require-consent=false`). A namespace that never
//! consented never received a copy, so an object there is not one.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::marker::PhantomData;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, ResourceExt};
use kube_lifecycle::batch::{self, BatchOptions, ItemOutcome};
use std::sync::Arc;
use tokio::sync::SemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::{CallError, Caller, ErrorClass, backoff};
use crate::blocked::Judged;
use crate::context::{Cached, Context};
use crate::copy::{
    CONTENT_HASH, Desired, FIELD_MANAGER, MANAGED_BY, ORIGIN, OWNER_NAME, OWNER_NAMESPACE,
    OWNER_UID, Operation, Origin, Owner, SOURCE, SYNCED_AT, desired_copy,
};
use crate::crd::{ConflictPolicy, SourceKind, TargetState, TargetStatus};
use crate::found::Found;
use crate::metrics::WriteResult;
use crate::plan::{Decider, Plan};
use crate::targets::ConsentRule;

/// Decisions per target before giving up until the next pass: each stale
/// view (409, 404) costs one.
const MAX_ATTEMPTS: u32 = 4;

/// Why a target could not be made true in this pass.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A request failed (after its retries) or was cancelled.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The object kept changing under us.
    #[error("{object} kept changing during {attempts} attempts; will retry")]
    Contended {
        /// The object.
        object: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The drain began while the target waited for a permit, so it never
    /// started (it stays `Pending`).
    #[error("the controller is stopping; write not started")]
    Stopping,
}

/// What one Fanout copies, shared by all its target writes.
#[derive(Clone, Debug)]
pub struct CopyJob<K> {
    /// The Fanout.
    pub owner: Owner,
    /// Its conflict policy.
    pub policy: ConflictPolicy,
    /// What every copy must hold.
    pub desired: Desired,
    /// The source's name (for the source annotation).
    pub source_name: String,
    /// The copies' name.
    pub copy_name: String,
    /// The kind being copied.
    pub kind: PhantomData<fn() -> K>,
}

impl<K: Cached> CopyJob<K> {
    /// What this job needs in `namespace`, given what is there (`current`).
    pub fn plan(&self, ctx: &Context, namespace: &str, current: Option<&Found>) -> Plan {
        let decider = Decider {
            owner: &self.owner,
            policy: self.policy,
        };
        let object = describe::<K>(namespace, &self.copy_name);
        decider.plan(&self.desired, current, &object, |o| ctx.fanout_exists(o))
    }

    /// What the cache knows of the object under the copy's name in
    /// `namespace`.
    pub fn cached(&self, ctx: &Context, namespace: &str) -> Option<Arc<Found>> {
        K::cache(&ctx.stores).get(namespace, &self.copy_name)
    }
}

/// What a finished target write reports.
#[derive(Clone, Debug)]
pub struct Done {
    /// The target's status entry.
    pub status: TargetStatus,
    /// The write performed, if any.
    pub operation: Option<Operation>,
    /// The blocker, if the target is blocked (`Conflict`).
    pub blocked: Option<Judged>,
}

/// Writes copies on behalf of one reconcile.
pub struct Writer<'a> {
    ctx: &'a Context,
    cancel: &'a CancellationToken,
}

impl<'a> Writer<'a> {
    /// A writer for the reconcile whose token is `cancel`.
    pub fn new(ctx: &'a Context, cancel: &'a CancellationToken) -> Self {
        Self { ctx, cancel }
    }

    /// Makes the copy in `namespace` true, or reports why it may not be.
    /// With `read_first` (the target was blocked by an object the cache
    /// does not hold), the object is read before deciding, instead of
    /// trying a create that would most likely be refused.
    pub async fn sync<K: Cached>(
        &self,
        job: &CopyJob<K>,
        namespace: &str,
        read_first: bool,
    ) -> Result<Done, WriteError> {
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), namespace);
        let object = describe::<K>(namespace, &job.copy_name);
        let mut current = job.cached(self.ctx, namespace);
        if read_first && current.is_none() {
            current = self.read(&api, job, &object).await?;
        }
        let mut permit = None;
        for attempt in 0..MAX_ATTEMPTS {
            let (operation, origin) = match job.plan(self.ctx, namespace, current.as_deref()) {
                Plan::Keep => {
                    return Ok(synced(
                        namespace,
                        &job.desired.hash,
                        current.as_deref(),
                        None,
                    ));
                }
                Plan::Conflict(message) => {
                    return Ok(conflict(namespace, message, current.as_deref()));
                }
                Plan::Write(operation, origin) => (operation, origin),
            };
            if permit.is_none() {
                permit = Some(self.permit().await?);
            }
            match self
                .execute(
                    &api,
                    job,
                    namespace,
                    (operation, origin),
                    current.as_deref(),
                )
                .await
            {
                Ok(written) => {
                    return Ok(synced(
                        namespace,
                        &job.desired.hash,
                        Some(&Found::of(&written)),
                        Some(operation),
                    ));
                }
                Err(error) if error.class() == ErrorClass::Stale => {
                    // Read again at once; if the object keeps changing under
                    // us, back off like for any contention.
                    debug!(%error, attempt, "stale view of {object}; reading it again");
                    if attempt > 0 {
                        tokio::time::sleep(backoff(attempt - 1)).await;
                    }
                }
                Err(error) => return Err(error.into()),
            }
            current = self.read(&api, job, &object).await?;
        }
        Err(WriteError::Contended {
            object,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// What is under the copy's name in the target now.
    async fn read<K: Cached>(
        &self,
        api: &Api<K>,
        job: &CopyJob<K>,
        object: &str,
    ) -> Result<Option<Arc<Found>>, CallError> {
        let found = self
            .caller()
            .call("read", object, || api.get_opt(&job.copy_name))
            .await?;
        Ok(found.map(|object| Arc::new(Found::of(&object))))
    }

    /// Lets go of `copy` (already verified, see [`crate::copy::Scope`]): deletes
    /// it if the Fanout created it, unless it was replaced meanwhile (the
    /// uid precondition); releases it if the Fanout took it over (its Fanout
    /// labels and annotations removed, unless it changed meanwhile: the
    /// resourceVersion precondition). `None` if nothing was left to do.
    pub async fn let_go<K: Cached>(&self, copy: &CopyRef) -> Result<Option<Operation>, WriteError> {
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), &copy.namespace);
        let object = describe::<K>(&copy.namespace, &copy.name);
        let _permit = self.permit().await?;
        let result = match copy.origin {
            Origin::Created => {
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: copy.uid.clone(),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                self.request(Operation::Delete, &object, || {
                    api.delete(&copy.name, &params)
                })
                .await
                .map(|_| Operation::Delete)
            }
            Origin::Adopted | Origin::Overwritten => {
                let patch = Patch::Merge(release_patch(copy.resource_version.as_deref()));
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PatchParams::default()
                };
                self.request(Operation::Release, &object, || {
                    api.patch(&copy.name, &params, &patch)
                })
                .await
                .map(|_| Operation::Release)
            }
        };
        match result {
            Ok(operation) => Ok(Some(operation)),
            // Gone already, or replaced or changed by someone else: nothing
            // of ours is left to let go of, or the next pass decides again.
            Err(error) if error.class() == ErrorClass::Stale => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// One write; a recreate is a delete (guarded by uid and
    /// resourceVersion) followed by a create. An update keeps the labels and
    /// annotations that are someone else's ([`keep_foreign_metadata`]).
    async fn execute<K: Cached>(
        &self,
        api: &Api<K>,
        job: &CopyJob<K>,
        namespace: &str,
        (operation, origin): (Operation, Origin),
        current: Option<&Found>,
    ) -> Result<K, CallError> {
        let object = describe::<K>(namespace, &job.copy_name);
        let mut desired: K = desired_copy(
            &job.desired.content,
            &job.desired.hash,
            &job.owner,
            &job.source_name,
            &job.copy_name,
            namespace,
            origin,
        );
        // Whole seconds, as `lastSyncTime` is written: a value that would
        // not survive the round trip through the status would make every
        // pass look like a change.
        let now =
            Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH);
        desired
            .annotations_mut()
            .insert(SYNCED_AT.to_owned(), now.to_string());
        let create = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        match (operation, current) {
            (Operation::Update | Operation::Adopt, Some(current)) => {
                current.keep_foreign_metadata(desired.meta_mut());
                desired.meta_mut().resource_version =
                    current.resource_version.as_deref().map(str::to_owned);
                self.request(operation, &object, || {
                    api.replace(&job.copy_name, &create, &desired)
                })
                .await
            }
            (Operation::Recreate, Some(current)) => {
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: current.uid.as_deref().map(str::to_owned),
                        resource_version: current.resource_version.as_deref().map(str::to_owned),
                    }),
                    ..DeleteParams::default()
                };
                self.request(operation, &object, || api.delete(&job.copy_name, &params))
                    .await?;
                self.request(operation, &object, || api.create(&create, &desired))
                    .await
            }
            _ => {
                self.request(Operation::Create, &object, || api.create(&create, &desired))
                    .await
            }
        }
    }

    /// One write request, counted in metrics.
    async fn request<T, F, Fut>(
        &self,
        operation: Operation,
        object: &str,
        request: F,
    ) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let _in_flight = self.ctx.metrics.write_in_flight();
        let result = self
            .caller()
            .call(operation.as_str(), object, request)
            .await;
        let outcome = match &result {
            Ok(_) => WriteResult::Ok,
            Err(error) if error.timed_out() => WriteResult::Timeout,
            Err(_) => WriteResult::Error,
        };
        self.ctx.metrics.wrote(operation, outcome);
        result
    }

    /// A permit of the global write cap. Waiting for one is not being in
    /// flight: once the drain has begun, a target that has none yet does
    /// not start.
    async fn permit(&self) -> Result<SemaphorePermit<'a>, WriteError> {
        tokio::select! {
            biased;
            () = self.ctx.drain.cancelled() => Err(WriteError::Stopping),
            () = self.cancel.cancelled() => Err(WriteError::Stopping),
            permit = self.ctx.writes.acquire() => permit.map_err(|_| WriteError::Stopping),
        }
    }

    fn caller(&self) -> Caller<'a> {
        self.ctx.caller(self.cancel)
    }
}

/// A merge patch removing every Fanout label and annotation, valid only
/// against `resource_version`.
fn release_patch(resource_version: Option<&str>) -> serde_json::Value {
    let nulls = |keys: &[&str]| {
        keys.iter()
            .map(|k| ((*k).to_owned(), serde_json::Value::Null))
            .collect::<serde_json::Map<_, _>>()
    };
    serde_json::json!({
        "metadata": {
            "resourceVersion": resource_version,
            "labels": nulls(&[MANAGED_BY, OWNER_NAMESPACE, OWNER_NAME, OWNER_UID]),
            "annotations": nulls(&[CONTENT_HASH, SOURCE, SYNCED_AT, ORIGIN]),
        }
    })
}

/// `secret team-a/regcred`: how messages name an object.
pub fn describe<K: Cached>(namespace: &str, name: &str) -> String {
    format!("{} {namespace}/{name}", K::KIND.as_str().to_lowercase())
}

/// The entry of a target that holds a true copy (`copy`, if known).
pub fn synced(
    namespace: &str,
    hash: &str,
    copy: Option<&Found>,
    operation: Option<Operation>,
) -> Done {
    let last_sync_time = copy.and_then(|c| c.synced_at).map(Time);
    Done {
        status: TargetStatus {
            namespace: namespace.to_owned(),
            state: TargetState::Synced,
            hash: Some(hash.to_owned()),
            message: None,
            last_sync_time,
        },
        operation,
        blocked: None,
    }
}

/// The entry of a target blocked by an object this Fanout may not touch
/// (`blocker`, as found).
pub fn conflict(namespace: &str, message: String, blocker: Option<&Found>) -> Done {
    Done {
        status: TargetStatus {
            namespace: namespace.to_owned(),
            state: TargetState::Conflict,
            hash: None,
            message: Some(message.clone()),
            last_sync_time: None,
        },
        operation: None,
        blocked: Some(Judged {
            resource_version: blocker
                .and_then(|b| b.resource_version.as_deref().map(str::to_owned)),
            message,
        }),
    }
}

/// One copy to let go of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyRef {
    /// Its kind.
    pub kind: SourceKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid (the delete precondition).
    pub uid: Option<String>,
    /// Its resourceVersion (the release precondition).
    pub resource_version: Option<String>,
    /// Whether the Fanout created it (delete) or took it over (release).
    pub origin: Origin,
}

/// Where and what one Fanout may let go of.
pub struct Scope<'a> {
    /// The Fanout.
    pub owner: &'a Owner,
    /// The kind it copies.
    pub kind: SourceKind,
    /// The name its copies have.
    pub copy_name: &'a str,
    /// The namespaces it targets now.
    pub targets: HashSet<String>,
    /// The consent rule in force.
    pub consent: ConsentRule,
}

impl Scope<'_> {
    /// `object` (of kind `K`) as a copy this Fanout may let go of, or why
    /// it is not one.
    pub fn admits<K: Cached>(&self, ctx: &Context, object: &Found) -> Result<CopyRef, String> {
        let (namespace, name) = object.names();
        if K::KIND != self.kind || name != self.copy_name {
            return Err(format!(
                "{} {namespace}/{name} is not what this Fanout writes ({} {})",
                K::KIND.as_str(),
                self.kind.as_str(),
                self.copy_name
            ));
        }
        if !object.carries_markers(self.owner) {
            return Err(format!("{namespace}/{name} lacks the markers of a copy"));
        }
        if let Some(reason) = &object.protection {
            return Err(format!("{namespace}/{name} is {reason}"));
        }
        if namespace == self.owner.namespace {
            return Err(format!(
                "{namespace}/{name} is in the Fanout's own namespace"
            ));
        }
        if !self.targets.contains(&namespace) && !self.accepts_copies(ctx, &namespace) {
            return Err(format!(
                "{namespace}/{name} is in a namespace this Fanout neither targets nor may copy into"
            ));
        }
        Ok(CopyRef {
            kind: K::KIND,
            namespace,
            name,
            uid: object.uid.as_deref().map(str::to_owned),
            resource_version: object.resource_version.as_deref().map(str::to_owned),
            origin: object.origin,
        })
    }

    /// Whether `namespace` accepts copies from the Fanout's namespace.
    fn accepts_copies(&self, ctx: &Context, namespace: &str) -> bool {
        ctx.stores
            .namespaces
            .get(namespace)
            .is_some_and(|ns| ns.accepts(self.consent, &self.owner.namespace))
    }

    /// Of `objects`, the copies this Fanout may let go of; the others are
    /// logged and left alone.
    pub fn select<'k, K: Cached>(
        &self,
        ctx: &Context,
        objects: impl IntoIterator<Item = &'k Found>,
    ) -> Vec<CopyRef> {
        objects
            .into_iter()
            .filter_map(|object| match self.admits::<K>(ctx, object) {
                Ok(copy) => Some(copy),
                Err(reason) => {
                    warn!(%reason, "labelled as this Fanout's copy but left alone");
                    None
                }
            })
            .collect()
    }
}

/// What the cache knows of the objects labelled with `uid` (of kind `K`)
/// that `keep` does not claim.
pub fn cached<K: Cached>(
    ctx: &Context,
    uid: &str,
    keep: impl Fn(&Found) -> bool,
) -> Vec<Arc<Found>> {
    K::cache(&ctx.stores)
        .owned_by(uid)
        .into_iter()
        .filter(|found| !keep(found))
        .collect()
}

/// How a batch of lettings-go went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LetGo {
    /// Copies deleted now.
    pub deleted: usize,
    /// Adopted or overwritten objects released now.
    pub released: usize,
    /// Copies not let go of (failed, cut off, or never started).
    pub remaining: usize,
}

impl LetGo {
    /// The writes made, for Events.
    pub fn writes(&self) -> BTreeMap<Operation, usize> {
        BTreeMap::from([
            (Operation::Delete, self.deleted),
            (Operation::Release, self.released),
        ])
    }
}

/// Lets go of `copies`: stops launching on the drain, drops running ones
/// when `cancel` fires.
pub async fn let_go_all(ctx: &Context, copies: Vec<CopyRef>, cancel: &CancellationToken) -> LetGo {
    let options = BatchOptions::new(ctx.settings.fanout_concurrency)
        .stop_on(ctx.drain.clone())
        .abort_on(cancel.clone());
    let writer = Writer::new(ctx, cancel);
    let writer = &writer;
    let mut outcomes = batch::ordered(copies.iter(), options, |_, copy| async move {
        match copy.kind {
            SourceKind::Secret => writer.let_go::<Secret>(copy).await,
            SourceKind::ConfigMap => writer.let_go::<ConfigMap>(copy).await,
        }
    });
    let mut result = LetGo::default();
    while let Some((index, outcome)) = outcomes.next().await {
        let copy = &copies[index];
        match outcome {
            ItemOutcome::Succeeded(Some(Operation::Release)) => {
                info!(namespace = %copy.namespace, name = %copy.name, kind = copy.kind.as_str(), "released an object this Fanout had taken over");
                result.released += 1;
            }
            ItemOutcome::Succeeded(Some(_)) => {
                info!(namespace = %copy.namespace, name = %copy.name, kind = copy.kind.as_str(), "deleted copy");
                result.deleted += 1;
            }
            // Already gone, or replaced by something that is not this copy.
            ItemOutcome::Succeeded(None) => {
                debug!(namespace = %copy.namespace, name = %copy.name, "copy already gone or replaced");
            }
            ItemOutcome::Failed(error) => {
                warn!(namespace = %copy.namespace, name = %copy.name, error = %error, "cannot let go of copy");
                result.remaining += 1;
            }
            ItemOutcome::Aborted => {
                warn!(namespace = %copy.namespace, name = %copy.name, "abandoned letting go of copy");
                result.remaining += 1;
            }
            ItemOutcome::TimedOut { .. }
            | ItemOutcome::DeadlineExceeded
            | ItemOutcome::NotStarted(_) => {
                result.remaining += 1;
            }
        }
    }
    result
}
