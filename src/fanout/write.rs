//! Carrying out one target: decide from the cache, write, and on a stale
//! view re-read and decide again.
//!
//! Every API write goes through [`Writer::call`], which takes a permit of the
//! global write cap (`--fanout-concurrency`, shared by all reconciles), is
//! bounded by `--write-timeout`, and is counted in metrics. Transient errors
//! (429, 5xx, connection trouble, timeouts) are retried with jittered
//! exponential backoff; a 409 or 404 means the cache was stale, so the
//! object is read again and the decision made afresh. A single POST or PUT
//! is atomic on the server, so a write cut off by cancellation leaves either
//! the old object or the new one, never half of one.

use std::future::Future;
use std::marker::PhantomData;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tracing::debug;

use super::context::{Cached, Context};
use super::copy::{Content, Owner, SYNCED_AT, desired_copy};
use super::crd::{ConflictPolicy, TargetState, TargetStatus};
use super::metrics::WriteResult;
use super::plan::{Decider, Found, Operation, Plan};
use super::retry::{self, ErrorClass};

/// Attempts per target before giving up until the next pass.
const MAX_ATTEMPTS: u32 = 4;

/// Why a target could not be made true in this pass.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The API server refused or failed.
    #[error("{operation} {object}: {source}")]
    Api {
        /// What was being done.
        operation: &'static str,
        /// The object, e.g. `secret team-a/regcred`.
        object: String,
        /// The server's answer.
        #[source]
        source: kube::Error,
    },
    /// The write ran past `--write-timeout`.
    #[error("{operation} {object}: no answer within {after:?}")]
    Timeout {
        /// What was being done.
        operation: &'static str,
        /// The object.
        object: String,
        /// The timeout.
        after: std::time::Duration,
    },
    /// The object kept changing under us.
    #[error("{object} kept changing during {attempts} attempts; will retry")]
    Contended {
        /// The object.
        object: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The drain began while the write waited for a permit, so it never
    /// started (the target stays `Pending`).
    #[error("the controller is stopping; write not started")]
    Stopping,
}

impl WriteError {
    fn class(&self) -> ErrorClass {
        match self {
            Self::Api { source, .. } => retry::classify(source),
            Self::Timeout { .. } => ErrorClass::Transient,
            Self::Contended { .. } | Self::Stopping => ErrorClass::Permanent,
        }
    }
}

/// What one Fanout copies, shared by all its target writes.
#[derive(Clone, Debug)]
pub struct CopyJob<K> {
    /// The Fanout.
    pub owner: Owner,
    /// Its conflict policy.
    pub policy: ConflictPolicy,
    /// What every copy must hold.
    pub content: Content,
    /// `content.hash()`, computed once.
    pub hash: String,
    /// The source's name (for the source annotation).
    pub source_name: String,
    /// The copies' name.
    pub copy_name: String,
    /// The kind being copied.
    pub kind: PhantomData<fn() -> K>,
}

/// What a finished target write reports.
#[derive(Clone, Debug)]
pub struct Done {
    /// The target's status entry.
    pub status: TargetStatus,
    /// The write performed, if any.
    pub operation: Option<Operation>,
}

/// Writes copies on behalf of one reconcile.
pub struct Writer<'a> {
    ctx: &'a Context,
}

impl<'a> Writer<'a> {
    /// A writer using the shared context.
    pub fn new(ctx: &'a Context) -> Self {
        Self { ctx }
    }

    /// Makes the copy in `namespace` true, or reports why it may not be.
    pub async fn sync<K: Cached>(
        &self,
        job: &CopyJob<K>,
        namespace: &str,
    ) -> Result<Done, WriteError> {
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), namespace);
        let object = describe::<K>(namespace, &job.copy_name);
        let decider = Decider {
            owner: &job.owner,
            policy: job.policy,
        };
        let mut current: Option<K> = K::cache(&self.ctx.stores)
            .get(&ObjectRef::new(&job.copy_name).within(namespace))
            .map(|cached| (*cached).clone());
        for attempt in 0..MAX_ATTEMPTS {
            let found = current.as_ref().map(|o| Found {
                owner: Owner::from_labels(o.labels()),
                content: o.content(),
            });
            let plan = decider.plan(&job.content, &job.hash, found.as_ref(), &object, |o| {
                self.ctx.fanout_exists(o)
            });
            let operation = match plan {
                Plan::Keep => return Ok(synced(namespace, &job.hash, current.as_ref(), None)),
                Plan::Conflict(message) => return Ok(conflict(namespace, message)),
                Plan::Write(operation) => operation,
            };
            match self
                .execute(&api, job, namespace, operation, current.as_ref())
                .await
            {
                Ok(written) => {
                    return Ok(synced(
                        namespace,
                        &job.hash,
                        Some(&written),
                        Some(operation),
                    ));
                }
                Err(error) => match error.class() {
                    ErrorClass::Permanent => return Err(error),
                    ErrorClass::Stale => {
                        // Read again at once; if the object keeps changing
                        // under us, back off like for any contention.
                        debug!(%error, attempt, "stale view of {object}; reading it again");
                        if attempt > 0 {
                            tokio::time::sleep(retry::backoff(attempt - 1)).await;
                        }
                    }
                    ErrorClass::Transient => {
                        debug!(%error, attempt, "transient failure on {object}; backing off");
                        tokio::time::sleep(retry::backoff(attempt)).await;
                    }
                },
            }
            current = self.read(&api, &object, &job.copy_name).await?;
        }
        Err(WriteError::Contended {
            object,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Deletes a copy this Fanout made, unless it was replaced meanwhile
    /// (the uid precondition): `true` if it was deleted now.
    pub async fn delete<K: Cached>(
        &self,
        namespace: &str,
        name: &str,
        uid: Option<String>,
    ) -> Result<bool, WriteError> {
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), namespace);
        let object = describe::<K>(namespace, name);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        for attempt in 0..MAX_ATTEMPTS {
            let result = self
                .call(
                    Operation::Delete,
                    namespace,
                    &object,
                    api.delete(name, &params),
                )
                .await;
            match result {
                Ok(_) => return Ok(true),
                Err(error) => match error.class() {
                    // Gone already, or replaced by an object that is not this
                    // copy: either way nothing of ours is left to delete.
                    ErrorClass::Stale => return Ok(false),
                    ErrorClass::Permanent => return Err(error),
                    ErrorClass::Transient => tokio::time::sleep(retry::backoff(attempt)).await,
                },
            }
        }
        Err(WriteError::Contended {
            object,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// One write; a recreate is a delete (guarded by uid and
    /// resourceVersion) followed by a create.
    async fn execute<K: Cached>(
        &self,
        api: &Api<K>,
        job: &CopyJob<K>,
        namespace: &str,
        operation: Operation,
        current: Option<&K>,
    ) -> Result<K, WriteError> {
        let object = describe::<K>(namespace, &job.copy_name);
        let mut desired: K = desired_copy(
            &job.content,
            &job.hash,
            &job.owner,
            &job.source_name,
            &job.copy_name,
            namespace,
        );
        desired
            .annotations_mut()
            .insert(SYNCED_AT.to_owned(), Timestamp::now().to_string());
        let create = PostParams::default();
        match (operation, current) {
            (Operation::Update | Operation::Adopt, Some(current)) => {
                desired.meta_mut().resource_version = current.resource_version();
                self.call(
                    operation,
                    namespace,
                    &object,
                    api.replace(&job.copy_name, &create, &desired),
                )
                .await
            }
            (Operation::Recreate, Some(current)) => {
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: current.uid(),
                        resource_version: current.resource_version(),
                    }),
                    ..DeleteParams::default()
                };
                self.call(
                    operation,
                    namespace,
                    &object,
                    api.delete(&job.copy_name, &params),
                )
                .await?;
                self.call(operation, namespace, &object, api.create(&create, &desired))
                    .await
            }
            _ => {
                self.call(
                    Operation::Create,
                    namespace,
                    &object,
                    api.create(&create, &desired),
                )
                .await
            }
        }
    }

    /// Re-reads the object after a stale or failed write.
    async fn read<K: Cached>(
        &self,
        api: &Api<K>,
        object: &str,
        name: &str,
    ) -> Result<Option<K>, WriteError> {
        let timeout = self.ctx.settings.write_timeout;
        match tokio::time::timeout(timeout, api.get_opt(name)).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(source)) => Err(WriteError::Api {
                operation: "read",
                object: object.to_owned(),
                source,
            }),
            Err(_) => Err(WriteError::Timeout {
                operation: "read",
                object: object.to_owned(),
                after: timeout,
            }),
        }
    }

    /// Runs one API write under a global permit and the write timeout.
    async fn call<T>(
        &self,
        operation: Operation,
        namespace: &str,
        object: &str,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, WriteError> {
        // Waiting for a permit is not being in flight: once the drain has
        // begun, a write that has not got one yet does not start.
        let _permit = tokio::select! {
            biased;
            () = self.ctx.drain.cancelled() => return Err(WriteError::Stopping),
            permit = self.ctx.writes.acquire() => permit.map_err(|_| WriteError::Stopping)?,
        };
        let _in_flight = self.ctx.metrics.write_in_flight();
        let timeout = self.ctx.settings.write_timeout;
        let delay = self
            .ctx
            .settings
            .test_write_delay
            .as_ref()
            .map(|d| d.for_namespace(namespace));
        let bounded = tokio::time::timeout(timeout, async {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            request.await
        });
        let (result, outcome) = match bounded.await {
            Ok(Ok(value)) => (Ok(value), WriteResult::Ok),
            Ok(Err(source)) => (
                Err(WriteError::Api {
                    operation: operation.as_str(),
                    object: object.to_owned(),
                    source,
                }),
                WriteResult::Error,
            ),
            Err(_) => (
                Err(WriteError::Timeout {
                    operation: operation.as_str(),
                    object: object.to_owned(),
                    after: timeout,
                }),
                WriteResult::Timeout,
            ),
        };
        self.ctx.metrics.wrote(operation, outcome);
        result
    }
}

/// `secret team-a/regcred`: how messages name an object.
pub fn describe<K: Cached>(namespace: &str, name: &str) -> String {
    format!("{} {namespace}/{name}", K::KIND.as_str().to_lowercase())
}

fn synced<K: Cached>(
    namespace: &str,
    hash: &str,
    copy: Option<&K>,
    operation: Option<Operation>,
) -> Done {
    let last_sync_time = copy
        .and_then(|c| c.annotations().get(SYNCED_AT))
        .and_then(|t| Timestamp::from_str(t).ok())
        .map(Time);
    Done {
        status: TargetStatus {
            namespace: namespace.to_owned(),
            state: TargetState::Synced,
            hash: Some(hash.to_owned()),
            message: None,
            last_sync_time,
        },
        operation,
    }
}

fn conflict(namespace: &str, message: String) -> Done {
    Done {
        status: TargetStatus {
            namespace: namespace.to_owned(),
            state: TargetState::Conflict,
            hash: None,
            message: Some(message),
            last_sync_time: None,
        },
        operation: None,
    }
}
