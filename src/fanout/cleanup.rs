//! Deleting a Fanout: remove every copy it made, then let the finalizer go.
//!
//! Copies are found with a label-selected, metadata-only list of Secrets and
//! ConfigMaps carrying the Fanout's uid — not from the cache, and not from
//! the status — so a cleanup cut short by a restart simply finds what is
//! left next time. The finalizer is removed only once nothing is left.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::context::{Cached, Context};
use super::copy::OWNER_UID;
use super::crd::Fanout;
use super::events::{self, Notice};
use super::pass::PassError;
use super::prune::{self, CopyRef};

/// Deletes every copy of `fanout`; an error keeps the finalizer in place.
pub async fn run(
    ctx: &Context,
    fanout: &Fanout,
    cancel: &CancellationToken,
) -> Result<Action, PassError> {
    let name = format!(
        "{}/{}",
        fanout.namespace().unwrap_or_default(),
        fanout.name_any()
    );
    let Some(uid) = fanout.uid() else {
        return Ok(Action::await_change());
    };
    let mut copies = list::<Secret>(ctx, &uid, &name, cancel).await?;
    copies.extend(list::<ConfigMap>(ctx, &uid, &name, cancel).await?);
    let deleted = prune::delete_all(ctx, copies, cancel).await;
    // Deletes cut off by a drain or a cancel count as remaining.
    if deleted.remaining > 0 || cancel.is_cancelled() {
        return Err(PassError::CleanupUnfinished {
            fanout: name,
            remaining: deleted.remaining,
        });
    }
    info!(fanout = %name, deleted = deleted.deleted, "deleted every copy; releasing the finalizer");
    ctx.metrics.set_summary(&uid, None);
    ctx.failures
        .succeeded(&kube::runtime::reflector::ObjectRef::from_obj(fanout));
    if deleted.deleted > 0 {
        let notice = Notice {
            warning: false,
            reason: "CopiesDeleted".to_owned(),
            note: format!("deleted {} copies before deletion", deleted.deleted),
        };
        events::publish(&ctx.recorder, fanout, vec![notice], cancel).await;
    }
    Ok(Action::await_change())
}

async fn list<K: Cached>(
    ctx: &Context,
    uid: &str,
    fanout: &str,
    cancel: &CancellationToken,
) -> Result<Vec<CopyRef>, PassError> {
    let api: Api<K> = Api::all(ctx.client.clone());
    let params = ListParams::default().labels(&format!("{OWNER_UID}={uid}"));
    let what = format!("{}s of Fanout {fanout}", K::KIND.as_str().to_lowercase());
    let list = ctx
        .caller(cancel)
        .call("list", &what, || api.list_metadata(&params))
        .await
        .map_err(|source| PassError::ListCopies {
            fanout: fanout.to_owned(),
            source,
        })?;
    Ok(list
        .items
        .into_iter()
        .map(|copy| CopyRef {
            kind: K::KIND,
            namespace: copy.namespace().unwrap_or_default(),
            name: copy.name_any(),
            uid: copy.uid(),
        })
        .collect())
}
