//! Whether the cluster refuses Fanouts whose creator may not read their
//! source: the ValidatingAdmissionPolicy the chart ships (and its binding),
//! named by `--source-access-policy`.
//!
//! The controller cannot check this itself: it never learns who created a
//! Fanout. Without the policy, anyone who may create a Fanout in a namespace
//! can have the controller copy that namespace's Secrets into a namespace
//! where they may read them, RBAC notwithstanding (a confused deputy).
//!
//! What the controller does about a missing policy is warn and export
//! `fanout_source_access_policy 0` (an alert in the chart's rules) rather
//! than refuse to run: the policy is the cluster's admission control, not the
//! controller's, and a controller that stops copying because someone removed
//! a policy would take down every consumer of every copy; a single-tenant
//! cluster may run without it on purpose (no `--source-access-policy`, one
//! warning at start). The policy and its binding are watched by name, so this
//! costs no request while nothing changes.

use futures::StreamExt;
use futures::stream::select;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::FanoutMetrics;

/// What a watch saw of one of the two objects.
enum Seen {
    Policy(Option<bool>),
    Binding(Option<bool>),
}

/// Keeps `fanout_source_access_policy` equal to "policy `name` exists and a
/// binding of the same name enforces it (Deny)", until `stop` fires.
pub async fn track_source_access_policy(
    client: Client,
    name: Option<String>,
    metrics: FanoutMetrics,
    stop: CancellationToken,
) {
    let Some(name) = name else {
        warn!(
            "no --source-access-policy: nothing refuses a Fanout whose creator may not read its source, so anyone who may create a Fanout can copy their namespace's Secrets"
        );
        metrics.set_source_access_policy(false);
        return;
    };
    let by_name = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let policies = presence(
        watcher(
            Api::<ValidatingAdmissionPolicy>::all(client.clone()),
            by_name.clone(),
        ),
        |_| true,
    )
    .map(Seen::Policy);
    let expected = name.clone();
    let bindings = presence(
        watcher(
            Api::<ValidatingAdmissionPolicyBinding>::all(client),
            by_name,
        ),
        move |binding: &ValidatingAdmissionPolicyBinding| {
            binding.spec.as_ref().is_some_and(|spec| {
                spec.policy_name.as_deref() == Some(expected.as_str())
                    && spec
                        .validation_actions
                        .iter()
                        .flatten()
                        .any(|action| action == "Deny")
            })
        },
    )
    .map(Seen::Binding);
    let mut seen = std::pin::pin!(select(policies, bindings));
    let (mut policy, mut binding, mut last) = (false, false, None);
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            next = seen.next() => next,
        };
        match next {
            Some(Seen::Policy(Some(present))) => policy = present,
            Some(Seen::Binding(Some(present))) => binding = present,
            Some(_) => continue,
            None => return,
        }
        let in_force = policy && binding;
        if last != Some(in_force) {
            if in_force {
                info!(policy = %name, "the source-access admission policy is in force");
            } else {
                warn!(
                    policy = %name,
                    "the source-access admission policy or its Deny binding is missing: anyone who may create a Fanout can copy Secrets they may not read"
                );
            }
            last = Some(in_force);
        }
        metrics.set_source_access_policy(in_force);
    }
}

/// Turns a watch on one object (by name) into "it is there, and `valid`"
/// each time that changes; a (re)list counts only once it is complete.
fn presence<K, S>(
    events: S,
    valid: impl Fn(&K) -> bool,
) -> impl futures::Stream<Item = Option<bool>>
where
    S: futures::Stream<Item = Result<Event<K>, watcher::Error>>,
{
    events.default_backoff().scan(None, move |listed: &mut Option<bool>, event| {
        let seen = match event {
            Ok(Event::Apply(object)) => Some(valid(&object)),
            Ok(Event::Delete(_)) => Some(false),
            Ok(Event::Init) => {
                *listed = Some(false);
                None
            }
            Ok(Event::InitApply(object)) => {
                *listed = Some(valid(&object));
                None
            }
            Ok(Event::InitDone) => listed.take(),
            Err(error) => {
                warn!(%error, "cannot watch the source-access admission policy; it counts as missing");
                Some(false)
            }
        };
        futures::future::ready(Some(seen))
    })
}
