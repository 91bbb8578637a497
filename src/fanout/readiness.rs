//! The controller's two readiness checks: `crd-served` (the API server
//! serves `fanouts.fanout.dev/v1alpha1`, asked through discovery, which every
//! authenticated user may read) and `caches-synced` (every watch cache has
//! listed once). Both are registered before the admin server binds
//! ([`READINESS_CHECKS`]), so `/readyz` is never 200 before they exist.

use std::time::Duration;

use kube::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::api::is_timeout;
use super::context::Stores;
use crate::runtime::health::ReadinessCheck;

/// The readiness checks the Fanout controller reports; the wiring
/// registers them before `/readyz` can first answer.
pub const READINESS_CHECKS: [&str; 2] = ["crd-served", "caches-synced"];

/// How often discovery is asked while the CRD is missing.
const RETRY: Duration = Duration::from_secs(2);
/// How often it is asked again once served (a deleted CRD turns readiness off).
const RECHECK: Duration = Duration::from_secs(30);

/// What asking discovery told us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Served,
    NotServed,
    Unreachable,
}

/// Keeps `check` equal to "the Fanout API is served" until `stop` fires.
/// A request in flight is dropped when `stop` fires, so a hung API server
/// never holds the drain.
pub async fn track_crd_served(
    client: Client,
    server: String,
    check: ReadinessCheck,
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
        tokio::select! {
            () = tokio::time::sleep(if answer == Answer::Served { RECHECK } else { RETRY }) => {}
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
