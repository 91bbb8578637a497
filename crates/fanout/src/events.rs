//! Kubernetes Events on a Fanout when something a person should know about
//! changes: the Ready reason (SourceMissing, SourceRefused, InvalidSpec,
//! Synced, ...), targets newly in Conflict, Refused or Failed, and copies
//! written.
//!
//! Events are per change, not per pass: a pass that finds everything as it
//! was publishes nothing, and targets are summarised in one Event per state
//! (names listed up to a limit), never one Event per target, so a
//! 10,000-namespace Fanout cannot flood the API server with Events.
//! Deciding what to say is pure ([`changes`]); publishing is best effort.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::copy::Operation;
use crate::crd::{Fanout, FanoutStatus, TargetState};
use crate::status::READY;

/// Target names listed in one Event before "and N more".
const LISTED: usize = 10;

/// One Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Warning for trouble, Normal otherwise.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// What happened, for people.
    pub note: String,
}

/// What changed between the status before a pass and after it, plus the
/// writes the pass made.
pub fn changes(
    before: &FanoutStatus,
    after: &FanoutStatus,
    writes: &BTreeMap<Operation, usize>,
) -> Vec<Notice> {
    let mut notices = Vec::new();
    let ready = |s: &FanoutStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == READY)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let previous_state: HashMap<&str, TargetState> = before
        .targets
        .iter()
        .map(|t| (t.namespace.as_str(), t.state))
        .collect();
    for (state, reason) in [
        (TargetState::Conflict, "Conflict"),
        (TargetState::Refused, "Refused"),
        (TargetState::Failed, "Failed"),
    ] {
        let entered: Vec<_> = after
            .targets
            .iter()
            .filter(|t| {
                t.state == state && previous_state.get(t.namespace.as_str()) != Some(&state)
            })
            .collect();
        if let Some(first) = entered.first() {
            let names: Vec<&str> = entered
                .iter()
                .take(LISTED)
                .map(|t| t.namespace.as_str())
                .collect();
            let more = entered.len().saturating_sub(LISTED);
            let mut note = format!(
                "{} target(s) now {}: {}",
                entered.len(),
                state.as_str(),
                names.join(", ")
            );
            if more > 0 {
                note.push_str(&format!(" and {more} more"));
            }
            if let Some(message) = &first.message {
                note.push_str(&format!(" (first: {message})"));
            }
            notices.push(Notice {
                warning: true,
                reason: reason.to_owned(),
                note,
            });
        }
    }
    let written: Vec<String> = writes
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(op, n)| format!("{} {n}", past_tense(*op)))
        .collect();
    if !written.is_empty() {
        notices.push(Notice {
            warning: false,
            reason: "CopiesWritten".to_owned(),
            note: format!("copies {}", written.join(", ")),
        });
    }
    if let Some((status, reason, message)) = ready(after)
        && ready(before).map(|(_, r, _)| r) != Some(reason.clone())
    {
        notices.push(Notice {
            warning: status != "True",
            reason,
            note: message,
        });
    }
    notices
}

fn past_tense(operation: Operation) -> &'static str {
    match operation {
        Operation::Create => "created",
        Operation::Update => "updated",
        Operation::Recreate => "recreated",
        Operation::Adopt => "adopted",
        Operation::Delete => "deleted",
        Operation::Release => "released",
    }
}

/// How long publishing a pass's Events may take, all together: a slow API
/// server must not hold a pass (or a drain) for a courtesy.
const PUBLISH_BUDGET: Duration = Duration::from_secs(2);

/// Publishes `notices` on `fanout`, all at once, within [`PUBLISH_BUDGET`];
/// failures are logged, never fatal (an Event is a courtesy, the status is
/// the record). `cancel` (the pass's token) abandons what is left: a drain
/// deadline must not wait on Events.
pub async fn publish(
    recorder: &Recorder,
    fanout: &Fanout,
    notices: Vec<Notice>,
    cancel: &CancellationToken,
) {
    if notices.is_empty() {
        return;
    }
    let reference = fanout.object_ref(&());
    let events: Vec<Event> = notices
        .into_iter()
        .map(|notice| Event {
            type_: if notice.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            action: "Reconcile".to_owned(),
            reason: notice.reason,
            note: Some(truncate(notice.note)),
            secondary: None,
        })
        .collect();
    let all = futures::future::join_all(events.iter().map(|event| async {
        if let Err(error) = recorder.publish(event, &reference).await {
            warn!(%error, reason = %event.reason, "cannot publish event");
        }
    }));
    tokio::select! {
        finished = tokio::time::timeout(PUBLISH_BUDGET, all) => if finished.is_err() {
            warn!(events = events.len(), "publishing events took longer than {PUBLISH_BUDGET:?}; gave up");
        },
        () = cancel.cancelled() => {
            warn!(events = events.len(), "abandoned publishing events: the pass was cancelled");
        }
    }
}

/// Events notes are limited to 1 kB.
fn truncate(mut note: String) -> String {
    if note.len() > 1000 {
        let mut end = 997;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::TargetStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;

    fn status(targets: &[(&str, TargetState)], reason: &str, ready: bool) -> FanoutStatus {
        FanoutStatus {
            targets: targets
                .iter()
                .map(|(ns, state)| TargetStatus {
                    namespace: (*ns).into(),
                    state: *state,
                    hash: None,
                    message: (*state != TargetState::Synced).then(|| format!("why {ns}")),
                    last_sync_time: None,
                })
                .collect(),
            conditions: vec![Condition {
                type_: READY.into(),
                status: if ready { "True" } else { "False" }.into(),
                reason: reason.into(),
                message: format!("{reason} message"),
                observed_generation: Some(1),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
            ..FanoutStatus::default()
        }
    }

    #[test]
    fn an_unchanged_pass_says_nothing() {
        let s = status(&[("a", TargetState::Conflict)], "TargetsConflicting", false);
        assert!(changes(&s, &s, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn new_conflicts_and_reason_changes_are_announced_once_per_kind() {
        let before = status(
            &[("a", TargetState::Synced), ("b", TargetState::Synced)],
            "Synced",
            true,
        );
        let after = status(
            &[("a", TargetState::Conflict), ("b", TargetState::Conflict)],
            "TargetsConflicting",
            false,
        );
        let notices = changes(&before, &after, &BTreeMap::new());
        assert_eq!(notices.len(), 2, "{notices:?}");
        assert_eq!(notices[0].reason, "Conflict");
        assert!(
            notices[0]
                .note
                .starts_with("2 target(s) now Conflict: a, b (first: why a)")
        );
        assert_eq!(notices[1].reason, "TargetsConflicting");
        assert!(notices[1].warning);
    }

    #[test]
    fn source_missing_is_a_warning_and_synced_is_normal() {
        let ok = status(&[], "Synced", true);
        let missing = status(&[], "SourceMissing", false);
        let notices = changes(&ok, &missing, &BTreeMap::new());
        assert_eq!(notices[0].reason, "SourceMissing");
        assert!(notices[0].warning);
        let notices = changes(&missing, &ok, &BTreeMap::new());
        assert!(!notices[0].warning);
    }

    #[test]
    fn writes_are_summarised_in_one_event() {
        let s = status(&[], "Synced", true);
        let writes = BTreeMap::from([(Operation::Create, 3), (Operation::Delete, 1)]);
        let notices = changes(&s, &s, &writes);
        assert_eq!(notices[0].note, "copies created 3, deleted 1");
    }

    #[test]
    fn long_lists_are_cut() {
        let many: Vec<(String, TargetState)> = (0..25)
            .map(|i| (format!("ns-{i}"), TargetState::Refused))
            .collect();
        let refs: Vec<(&str, TargetState)> = many.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        let notices = changes(
            &status(&[], "Synced", true),
            &status(&refs, "TargetsRefused", false),
            &BTreeMap::new(),
        );
        assert!(
            notices[0].note.contains("and 15 more"),
            "{}",
            notices[0].note
        );
    }
}
