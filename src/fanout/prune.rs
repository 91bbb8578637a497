//! Letting go of copies: no longer targeted (pruning), a namespace that
//! withdrew its consent, the source gone, or the Fanout itself deleted
//! (cleanup).
//!
//! Labels prove nothing (anyone who may edit an object may label it), so an
//! object is let go of only if every marker of a copy agrees
//! ([`Scope::admits`]):
//!
//! - it carries `fanout.dev/managed-by` and the three owner labels naming
//!   this Fanout (namespace, name, uid), and a well-formed content-hash
//!   annotation;
//! - it is of the kind and has the name this Fanout writes;
//! - it is not protected (a ServiceAccount token, an object another
//!   controller owns, ...);
//! - it is not in the Fanout's own namespace (where its source lives);
//! - its namespace is one the Fanout could have written to: a target now,
//!   or one that accepts copies from the Fanout's namespace (always, with
//!   `--require-consent=false`). A namespace that never consented never
//!   received a copy, so an object there is not one.
//!
//! Then it is deleted if the Fanout created it, and released (its Fanout
//! labels and annotations removed, the object left as it is) if the Fanout
//! adopted or overwrote it: a Fanout destroys nothing it did not create.
//! Every delete is guarded by the object's uid and every release by its
//! resourceVersion, so an object that replaced the copy meanwhile is never
//! touched. They run as a batch under the global write cap.

use std::collections::{BTreeMap, HashSet};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::ObjectMeta;
use kube::runtime::reflector::ObjectRef;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::consent::ConsentRule;
use super::context::{Cached, Context};
use super::copy::{CONTENT_HASH, MANAGED_BY, MANAGED_BY_VALUE, OWNER_UID, Origin, Owner};
use super::crd::SourceKind;
use super::plan::Operation;
use super::write::Writer;
use crate::runtime::batch::{self, BatchOptions, ItemOutcome};

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
    /// `object` as a copy this Fanout may let go of, or why it is not one.
    pub fn admits<K: Cached>(&self, ctx: &Context, object: &K) -> Result<CopyRef, String> {
        let meta = object.meta();
        let namespace = meta.namespace.clone().unwrap_or_default();
        let name = object.name_any();
        if K::KIND != self.kind || name != self.copy_name {
            return Err(format!(
                "{} {namespace}/{name} is not what this Fanout writes ({} {})",
                K::KIND.as_str(),
                self.kind.as_str(),
                self.copy_name
            ));
        }
        if !carries_markers(meta, self.owner) {
            return Err(format!("{namespace}/{name} lacks the markers of a copy"));
        }
        if let Some(reason) = object.protection() {
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
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            origin: Origin::of(object.annotations()),
        })
    }

    /// Whether `namespace` accepts copies from the Fanout's namespace.
    fn accepts_copies(&self, ctx: &Context, namespace: &str) -> bool {
        ctx.stores
            .namespaces
            .get(&ObjectRef::new(namespace))
            .is_some_and(|ns| {
                self.consent
                    .accepts(ns.labels(), ns.annotations(), &self.owner.namespace)
            })
    }

    /// Of `objects`, the copies this Fanout may let go of; the others are
    /// logged and left alone.
    pub fn select<'k, K: Cached>(
        &self,
        ctx: &Context,
        objects: impl IntoIterator<Item = &'k K>,
    ) -> Vec<CopyRef> {
        objects
            .into_iter()
            .filter_map(|object| match self.admits(ctx, object) {
                Ok(copy) => Some(copy),
                Err(reason) => {
                    warn!(%reason, "labelled as this Fanout's copy but left alone");
                    None
                }
            })
            .collect()
    }
}

/// Whether `meta` carries every marker of a copy of `owner`'s.
fn carries_markers(meta: &ObjectMeta, owner: &Owner) -> bool {
    let labels = meta.labels.as_ref();
    let managed =
        labels.and_then(|l| l.get(MANAGED_BY)).map(String::as_str) == Some(MANAGED_BY_VALUE);
    let owned = labels.and_then(Owner::from_labels).as_ref() == Some(owner);
    let hashed = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONTENT_HASH))
        .and_then(|hash| hash.strip_prefix("sha256:"))
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    managed && owned && hashed
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

/// Cached objects labelled with `uid` that `keep` does not claim.
pub fn cached<K: Cached>(
    ctx: &Context,
    uid: &str,
    keep: impl Fn(&K) -> bool,
) -> Vec<std::sync::Arc<K>> {
    K::cache(&ctx.stores)
        .state()
        .into_iter()
        .filter(|c| c.labels().get(OWNER_UID).map(String::as_str) == Some(uid))
        .filter(|c| !keep(c))
        .collect()
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
