//! Deleting copies that must go: no longer targeted (pruning), the source
//! gone, or the Fanout itself deleted (cleanup).
//!
//! Copies are found by the ownership label holding the Fanout's uid: in the
//! cache during a pass, through a label-selected list during cleanup (so a
//! cleanup interrupted by a restart finds what is left). Deletes run as a
//! batch under the same global write cap as every other write, and each is
//! guarded by the copy's uid, so an object that replaced the copy meanwhile
//! is never deleted.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::context::{Cached, Context};
use super::copy::OWNER_UID;
use super::crd::SourceKind;
use super::plan::Operation;
use super::write::Writer;
use crate::runtime::batch::{self, BatchOptions, ItemOutcome};

/// One copy to delete.
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
}

/// How a batch of deletes went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Copies deleted now.
    pub deleted: usize,
    /// Copies not deleted (failed, cut off, or never started).
    pub remaining: usize,
}

impl Deleted {
    /// The writes made, for Events.
    pub fn writes(&self) -> BTreeMap<Operation, usize> {
        BTreeMap::from([(Operation::Delete, self.deleted)])
    }
}

/// Cached copies owned by the Fanout with `uid` that `keep` does not claim.
pub fn cached_copies(ctx: &Context, uid: &str, keep: impl Fn(&CopyRef) -> bool) -> Vec<CopyRef> {
    let mut copies = owned::<Secret>(ctx, uid);
    copies.extend(owned::<ConfigMap>(ctx, uid));
    copies.retain(|c| !keep(c));
    copies
}

fn owned<K: Cached>(ctx: &Context, uid: &str) -> Vec<CopyRef> {
    K::cache(&ctx.stores)
        .state()
        .iter()
        .filter(|c| c.labels().get(OWNER_UID).map(String::as_str) == Some(uid))
        .map(|c| CopyRef {
            kind: K::KIND,
            namespace: c.namespace().unwrap_or_default(),
            name: c.name_any(),
            uid: c.uid(),
        })
        .collect()
}

/// Deletes `copies`: stops launching deletes on the drain, drops running
/// ones when `cancel` fires.
pub async fn delete_all(
    ctx: &Context,
    copies: Vec<CopyRef>,
    cancel: &CancellationToken,
) -> Deleted {
    let options = BatchOptions::new(ctx.settings.fanout_concurrency)
        .stop_on(ctx.drain.clone())
        .abort_on(cancel.clone());
    let writer = Writer::new(ctx, cancel);
    let writer = &writer;
    let mut outcomes = batch::ordered(copies.iter(), options, |_, copy| async move {
        match copy.kind {
            SourceKind::Secret => {
                writer
                    .delete::<Secret>(&copy.namespace, &copy.name, copy.uid.clone())
                    .await
            }
            SourceKind::ConfigMap => {
                writer
                    .delete::<ConfigMap>(&copy.namespace, &copy.name, copy.uid.clone())
                    .await
            }
        }
    });
    let mut result = Deleted::default();
    while let Some((index, outcome)) = outcomes.next().await {
        let copy = &copies[index];
        match outcome {
            ItemOutcome::Succeeded(true) => {
                info!(namespace = %copy.namespace, name = %copy.name, kind = copy.kind.as_str(), "deleted copy");
                result.deleted += 1;
            }
            // Already gone, or replaced by something that is not this copy.
            ItemOutcome::Succeeded(false) => {}
            ItemOutcome::Failed(error) => {
                warn!(namespace = %copy.namespace, name = %copy.name, error = %error, "cannot delete copy");
                result.remaining += 1;
            }
            ItemOutcome::Aborted => {
                warn!(namespace = %copy.namespace, name = %copy.name, "abandoned delete of copy");
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
