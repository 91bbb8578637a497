//! The controller's two readiness checks: `crd-served` (the API server
//! serves `fanouts.fanout.dev/v1alpha1`, asked through discovery, which every
//! authenticated user may read) and `caches-synced` (every watch cache has
//! listed once).

use std::time::Duration;

use kube::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::context::Stores;
use crate::runtime::health::ReadinessCheck;

/// How often discovery is asked while the CRD is missing.
const RETRY: Duration = Duration::from_secs(2);
/// How often it is asked again once served (a deleted CRD turns readiness off).
const RECHECK: Duration = Duration::from_secs(30);

/// Keeps `check` equal to "the Fanout API is served" until `stop` fires.
pub async fn track_crd_served(client: Client, check: ReadinessCheck, stop: CancellationToken) {
    let mut was_served = None;
    loop {
        let served = match client.list_api_group_resources("fanout.dev/v1alpha1").await {
            Ok(list) => list.resources.iter().any(|r| r.name == "fanouts"),
            Err(error) => {
                if was_served != Some(false) {
                    warn!(%error, "the Fanout API (fanout.dev/v1alpha1) is not served; is the CRD installed?");
                }
                false
            }
        };
        if was_served != Some(served) && served {
            info!("the Fanout API is served");
        }
        was_served = Some(served);
        check.set_ready(served);
        tokio::select! {
            () = tokio::time::sleep(if served { RECHECK } else { RETRY }) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Sets `check` once every cache has listed (or never, if stopped first).
pub async fn track_caches_synced(stores: Stores, check: ReadinessCheck, stop: CancellationToken) {
    if stores.ready(&stop).await {
        info!("watch caches synced");
        check.set_ready(true);
    }
}
