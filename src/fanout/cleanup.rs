//! Deleting a Fanout: let go of every copy it made, then of the finalizer.
//!
//! Copies are found with a label-selected list, page by page, of the kind
//! the Fanout copies, carrying its uid — not from the cache, and not from
//! the status — so a cleanup cut short by a restart simply finds what is
//! left next time. Each object listed is checked like every other letting
//! go ([`super::prune::Scope`]): only real copies are deleted (or released,
//! for objects the Fanout took over); an object merely labelled with the
//! Fanout's uid is logged and left alone, and does not hold the finalizer.
//! The finalizer is removed once nothing that is a copy is left.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::context::{Cached, Context};
use super::copy::{OWNER_UID, Owner};
use super::crd::{Fanout, SourceKind};
use super::events::{self, Notice};
use super::pass::PassError;
use super::prune::{self, CopyRef, Scope};

/// Objects listed per page: bounded memory whatever the fan-out's size.
const PAGE: u32 = 500;

/// Lets go of every copy of `fanout`; an error keeps the finalizer in place.
pub async fn run(
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
    let let_go = prune::let_go_all(ctx, copies, cancel).await;
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
        copies.extend(scope.select(ctx, &page.items));
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(copies),
        }
    }
}
