//! Status assembly: from per-target results (in resolution order) to the
//! `FanoutStatus` written to the API — summary counts, the capped ordered
//! target list and the `Ready` condition.
//!
//! Pure: the coalescing writer calls [`assemble`] for every write, so an
//! intermediate write and the final one are built the same way and are in
//! the same order.
//!
//! # Writing it
//!
//! The coalescing status writer of one reconcile.
//!
//! The reconcile publishes a fresh snapshot of the *whole* status (every
//! target in resolution order: finished ones with their result, the rest
//! `Pending`) whenever a result arrives; this task writes the latest
//! snapshot at most once per `--status-interval`, and [`StatusWriter::finish`]
//! writes the final one. One task issues every write of the pass, one after
//! the other, so a write can never overtake an earlier one, and since each
//! write carries the complete ordered list, the status is never reordered —
//! nor written once per target. A snapshot equal to what is already on the
//! object is not written at all.
//!
//! Writes are server-side apply on the status subresource with a fixed field
//! manager: each write states the whole status, and fields it leaves out
//! (an optional field that became empty) are removed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube_lifecycle::health::Watchdog;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

use crate::api::{CallError, Caller};
use crate::copy::FIELD_MANAGER;
use crate::crd::{Fanout, FanoutStatus, Summary, TargetState, TargetStatus};

/// Default for how many target entries a status lists (see [`FanoutStatus`]).
pub const DEFAULT_MAX_TARGETS: usize = 1000;
/// Messages longer than this are cut, to bound the status size.
const MAX_MESSAGE: usize = 256;
/// The condition every Fanout carries: True once every target holds a true
/// copy.
pub const READY: &str = "Ready";
/// kstatus' condition for "not there yet, working on it".
pub const RECONCILING: &str = "Reconciling";
/// kstatus' condition for "cannot get there without someone acting".
pub const STALLED: &str = "Stalled";

/// What a pass concluded before looking at individual targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Targets were (or are being) processed; the counts decide.
    Targets,
    /// The pass was stopped by a shutdown before every target was done.
    Interrupted,
    /// The source does not exist.
    SourceMissing(String),
    /// The source may never be copied (a service-account token).
    SourceRefused(String),
    /// The spec cannot be evaluated (e.g. an invalid selector).
    InvalidSpec(String),
}

/// Everything [`assemble`] needs.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// `metadata.generation` of the Fanout being reconciled.
    pub generation: Option<i64>,
    /// Hash every copy must carry, when the source was read.
    pub source_hash: Option<&'a str>,
    /// One entry per resolved target, in resolution order.
    pub entries: &'a [TargetStatus],
    /// The pass's overall verdict.
    pub verdict: &'a Verdict,
    /// The conditions currently on the object (for transition times).
    pub previous_conditions: &'a [Condition],
    /// Cap on listed entries.
    pub max_targets: usize,
    /// The time to stamp a new transition with.
    pub now: &'a Time,
}

/// Builds the status for one write.
pub fn assemble(input: Input<'_>) -> FanoutStatus {
    let summary = summarize(input.entries);
    let (targets, omitted) = select(input.entries, input.max_targets);
    let conditions = conditions(&summary, input.verdict, input);
    FanoutStatus {
        observed_generation: input.generation,
        source_hash: input.source_hash.map(str::to_owned),
        summary,
        targets,
        targets_omitted: u32::try_from(omitted).unwrap_or(u32::MAX),
        conditions,
    }
}

/// How many entries need someone's attention (Failed, Conflict, Refused):
/// what a status written in the middle of a pass lists (see
/// [`crate::reconcile`]).
pub fn needing_attention(entries: &[TargetStatus]) -> usize {
    entries
        .iter()
        .filter(|e| {
            matches!(
                e.state,
                TargetState::Failed | TargetState::Conflict | TargetState::Refused
            )
        })
        .count()
}

/// Counts entries by state.
pub fn summarize(entries: &[TargetStatus]) -> Summary {
    let mut summary = Summary {
        desired: u32::try_from(entries.len()).unwrap_or(u32::MAX),
        ..Summary::default()
    };
    for entry in entries {
        let counter = match entry.state {
            TargetState::Pending => &mut summary.pending,
            TargetState::Synced => &mut summary.synced,
            TargetState::Failed => &mut summary.failed,
            TargetState::Conflict => &mut summary.conflict,
            TargetState::Refused => &mut summary.refused,
        };
        *counter += 1;
    }
    summary
}

/// Picks at most `cap` entries — those needing attention first — and returns
/// them in resolution order, with the number left out.
pub fn select(entries: &[TargetStatus], cap: usize) -> (Vec<TargetStatus>, usize) {
    if entries.len() <= cap {
        return (entries.iter().map(trimmed).collect(), 0);
    }
    let priority = |state: TargetState| match state {
        TargetState::Failed | TargetState::Conflict | TargetState::Refused => 0,
        TargetState::Pending => 1,
        TargetState::Synced => 2,
    };
    let mut chosen: Vec<usize> = (0..entries.len()).collect();
    // Stable sort: within a priority, resolution order decides.
    chosen.sort_by_key(|&i| priority(entries[i].state));
    chosen.truncate(cap);
    chosen.sort_unstable();
    let listed = chosen.iter().map(|&i| trimmed(&entries[i])).collect();
    (listed, entries.len() - cap)
}

fn trimmed(entry: &TargetStatus) -> TargetStatus {
    let mut entry = entry.clone();
    if let Some(message) = &mut entry.message {
        truncate(message, MAX_MESSAGE);
    }
    entry
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max.saturating_sub(3);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
}

/// The conditions for this pass, as kstatus reads them: `Ready` always;
/// `Reconciling` (True) while the controller is still working towards it
/// on its own (targets pending, failed writes being retried, a pass cut
/// short by a drain); `Stalled` (True) when it cannot get there without
/// someone acting (a missing or refused source, an invalid spec, a
/// blocking object, a namespace that does not consent). Both are left out
/// when they would be False, as kstatus recommends for abnormal-true
/// conditions. Each keeps its transition time while its status holds.
fn conditions(summary: &Summary, verdict: &Verdict, input: Input<'_>) -> Vec<Condition> {
    let judgement = judge(summary, verdict);
    let mut message = judgement.message;
    truncate(&mut message, 1024);
    let condition = |type_: &str, status: bool| {
        let status = if status { "True" } else { "False" };
        let previous = input.previous_conditions.iter().find(|c| c.type_ == type_);
        let last_transition_time = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => input.now.clone(),
        };
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: judgement.reason.to_owned(),
            message: message.clone(),
            observed_generation: input.generation,
            last_transition_time,
        }
    };
    let mut conditions = vec![condition(READY, judgement.health == Health::Ready)];
    match judgement.health {
        Health::Ready => {}
        Health::Reconciling => conditions.push(condition(RECONCILING, true)),
        Health::Stalled => conditions.push(condition(STALLED, true)),
    }
    conditions
}

/// Where a Fanout stands, in kstatus terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    /// Every target holds a true copy (or there is none).
    Ready,
    /// Not yet, and the controller is getting there on its own.
    Reconciling,
    /// Not without someone acting.
    Stalled,
}

/// What the conditions say.
struct Judgement {
    health: Health,
    /// CamelCase, shared by the conditions.
    reason: &'static str,
    message: String,
}

/// Where the Fanout stands, why (CamelCase) and a message for people.
fn judge(s: &Summary, verdict: &Verdict) -> Judgement {
    let counts = format!(
        "{}/{} synced, {} pending, {} failed, {} conflict, {} refused",
        s.synced, s.desired, s.pending, s.failed, s.conflict, s.refused
    );
    let (health, reason, message) = match verdict {
        Verdict::SourceMissing(m) => (Health::Stalled, "SourceMissing", m.clone()),
        Verdict::SourceRefused(m) => (Health::Stalled, "SourceRefused", m.clone()),
        Verdict::InvalidSpec(m) => (Health::Stalled, "InvalidSpec", m.clone()),
        Verdict::Interrupted if s.pending > 0 => (
            Health::Reconciling,
            "Interrupted",
            format!("controller shut down before finishing; the next leader resumes: {counts}"),
        ),
        _ if s.failed > 0 => (Health::Reconciling, "TargetsFailing", counts),
        _ if s.conflict > 0 => (Health::Stalled, "TargetsConflicting", counts),
        _ if s.refused > 0 => (Health::Stalled, "TargetsRefused", counts),
        _ if s.pending > 0 => (Health::Reconciling, "Progressing", counts),
        _ if s.desired == 0 => (
            Health::Ready,
            "NoTargets",
            "no target namespace resolved".to_owned(),
        ),
        _ => (
            Health::Ready,
            "Synced",
            format!("all {} targets hold a true copy", s.desired),
        ),
    };
    Judgement {
        health,
        reason,
        message,
    }
}

/// Errors writing a status.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The write failed (after its retries) or got no answer in time.
    #[error("cannot write the status of Fanout {fanout}")]
    Write {
        /// The Fanout's name.
        fanout: String,
        /// Why.
        #[source]
        source: CallError,
    },
    /// The pass was cancelled (drain deadline, deleted source) before the
    /// final status was written; its successor writes it.
    #[error("abandoned the final status write of Fanout {fanout}")]
    Abandoned {
        /// The Fanout's name.
        fanout: String,
    },
}

/// Writes one Fanout's status during one reconcile. Dropping it without
/// [`finish`](Self::finish) stops the writer where it is (a cancelled pass
/// leaves the status to its successor).
pub struct StatusWriter {
    name: String,
    snapshots: watch::Sender<Arc<FanoutStatus>>,
    finished: CancellationToken,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), StatusError>>,
}

impl StatusWriter {
    /// Starts the writer for Fanout `name` (via `api`, namespaced), knowing
    /// that `current` is on the object now. Each write is a call under the
    /// client's deadline ([`Caller`]); `cancel` (the pass's token) abandons
    /// the writer, including a final write the API server does not answer.
    pub fn start(
        api: Api<Fanout>,
        name: String,
        interval: Duration,
        current: FanoutStatus,
        cancel: CancellationToken,
        watchdog: Watchdog,
    ) -> Self {
        let current = Arc::new(current);
        let (snapshots, receiver) = watch::channel(current.clone());
        let finished = CancellationToken::new();
        let span = tracing::Span::current();
        let task = tokio::spawn(
            write_loop(
                Target {
                    api,
                    name: name.clone(),
                    cancel: cancel.clone(),
                    watchdog,
                },
                interval,
                receiver,
                current,
                finished.clone(),
            )
            .instrument(span),
        );
        Self {
            name,
            snapshots,
            finished,
            cancel,
            task,
        }
    }

    /// Publishes the latest snapshot; written within one interval.
    pub fn publish(&self, status: FanoutStatus) {
        self.snapshots.send_replace(Arc::new(status));
    }

    /// Writes `last` (unless equal to what is on the object) after any
    /// write in progress, and returns once it is done, or once the pass is
    /// cancelled (the write is then abandoned, and logged as such).
    pub async fn finish(mut self, last: FanoutStatus) -> Result<(), StatusError> {
        self.snapshots.send_replace(Arc::new(last));
        self.finished.cancel();
        let cancel = self.cancel.clone();
        let joined = tokio::select! {
            joined = &mut self.task => joined,
            () = cancel.cancelled() => {
                warn!(fanout = %self.name, "abandoned the final status write: the pass was cancelled");
                return Err(StatusError::Abandoned { fanout: self.name.clone() });
            }
        };
        match joined {
            Ok(result) => result,
            // The task neither panics nor is aborted while we hold it.
            Err(join) => {
                warn!(error = %join, "status writer task ended abnormally");
                Ok(())
            }
        }
    }
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Target {
    api: Api<Fanout>,
    name: String,
    cancel: CancellationToken,
    watchdog: Watchdog,
}

impl Target {
    /// One status write (transient failures retried by [`Caller`]: the
    /// final write of a drain must land).
    async fn write(&self, status: &FanoutStatus) -> Result<(), StatusError> {
        let patch = json!({
            "apiVersion": "fanout.dev/v1alpha1",
            "kind": "Fanout",
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let patch = Patch::Apply(&patch);
        let caller = Caller {
            cancel: &self.cancel,
            watchdog: &self.watchdog,
        };
        let object = format!("status of Fanout {}", self.name);
        caller
            .call("patch", &object, || {
                self.api.patch_status(&self.name, &params, &patch)
            })
            .await
            .map(drop)
            .map_err(|source| StatusError::Write {
                fanout: self.name.clone(),
                source,
            })
    }
}

async fn write_loop(
    target: Target,
    interval: Duration,
    mut snapshots: watch::Receiver<Arc<FanoutStatus>>,
    mut written: Arc<FanoutStatus>,
    finished: CancellationToken,
) -> Result<(), StatusError> {
    // The first write waits one interval too: a short pass then writes once.
    let mut next_write = Instant::now() + interval;
    loop {
        tokio::select! {
            biased;
            () = finished.cancelled() => break,
            changed = snapshots.changed() => if changed.is_err() { break },
        }
        tokio::select! {
            biased;
            () = finished.cancelled() => break,
            () = tokio::time::sleep_until(next_write) => {}
        }
        let latest = snapshots.borrow_and_update().clone();
        if latest != written {
            debug!(
                pending = latest.summary.pending,
                "writing intermediate status"
            );
            // An intermediate write may fail; the next one (or the final
            // one) carries the same information and more.
            match target.write(&latest).await {
                Ok(()) => written = latest,
                Err(error) => warn!(%error, "intermediate status write failed"),
            }
        }
        next_write = Instant::now() + interval;
    }
    let last = snapshots.borrow_and_update().clone();
    if last != written {
        target.write(&last).await?;
    }
    Ok(())
}

/// A target's status entry.
pub fn entry(namespace: &str, state: TargetState, message: Option<String>) -> TargetStatus {
    TargetStatus {
        namespace: namespace.to_owned(),
        state,
        hash: None,
        message,
        last_sync_time: None,
    }
}

/// A target that needs a write that has not happened yet.
pub fn pending(namespace: &str) -> TargetStatus {
    entry(namespace, TargetState::Pending, None)
}

/// A target whose write failed, and why.
pub fn failed(namespace: &str, message: String) -> TargetStatus {
    entry(namespace, TargetState::Failed, Some(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn entry(namespace: &str, state: TargetState) -> TargetStatus {
        TargetStatus {
            namespace: namespace.into(),
            state,
            hash: None,
            message: None,
            last_sync_time: None,
        }
    }

    fn now() -> Time {
        Time(Timestamp::from_second(1_700_000_000).unwrap())
    }

    fn input<'a>(entries: &'a [TargetStatus], verdict: &'a Verdict, now: &'a Time) -> Input<'a> {
        Input {
            generation: Some(3),
            source_hash: Some("sha256:x"),
            entries,
            verdict,
            previous_conditions: &[],
            max_targets: DEFAULT_MAX_TARGETS,
            now,
        }
    }

    #[test]
    fn entries_stay_in_resolution_order_and_are_counted() {
        let entries = [
            entry("c", TargetState::Synced),
            entry("a", TargetState::Pending),
            entry("b", TargetState::Failed),
        ];
        let now = now();
        let status = assemble(input(&entries, &Verdict::Targets, &now));
        let order: Vec<_> = status
            .targets
            .iter()
            .map(|t| t.namespace.as_str())
            .collect();
        assert_eq!(order, ["c", "a", "b"]);
        assert_eq!(
            status.summary,
            Summary {
                desired: 3,
                synced: 1,
                pending: 1,
                failed: 1,
                ..Summary::default()
            }
        );
        assert_eq!(status.observed_generation, Some(3));
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "TargetsFailing")
        );
        assert_eq!(ready.observed_generation, Some(3));
    }

    #[test]
    fn over_the_cap_problems_come_first_but_order_is_kept() {
        let mut entries: Vec<_> = (0..10)
            .map(|i| entry(&format!("ns-{i}"), TargetState::Synced))
            .collect();
        entries[7].state = TargetState::Conflict;
        entries[2].state = TargetState::Pending;
        entries[9].state = TargetState::Failed;
        let (listed, omitted) = select(&entries, 4);
        let names: Vec<_> = listed.iter().map(|t| t.namespace.as_str()).collect();
        assert_eq!(names, ["ns-0", "ns-2", "ns-7", "ns-9"]);
        assert_eq!(omitted, 6);
    }

    #[test]
    fn ten_thousand_targets_stay_far_below_the_object_limit() {
        let entries: Vec<_> = (0..10_000)
            .map(|i| TargetStatus {
                hash: Some(format!("sha256:{}", "f".repeat(64))),
                message: Some("m".repeat(2_000)),
                last_sync_time: Some(now()),
                ..entry(
                    &format!("namespace-with-a-rather-long-name-{i:05}"),
                    TargetState::Failed,
                )
            })
            .collect();
        let now = now();
        let status = assemble(input(&entries, &Verdict::Targets, &now));
        let bytes = serde_json::to_vec(&status).unwrap().len();
        assert_eq!(status.targets.len(), DEFAULT_MAX_TARGETS);
        assert_eq!(status.targets_omitted, 9_000);
        assert_eq!(status.summary.failed, 10_000);
        assert!(bytes < 512 * 1024, "{bytes} bytes");
    }

    #[test]
    fn reasons_follow_precedence() {
        let cases = [
            (vec![], Verdict::Targets, "NoTargets", "True"),
            (
                vec![TargetState::Synced],
                Verdict::Targets,
                "Synced",
                "True",
            ),
            (
                vec![TargetState::Synced, TargetState::Pending],
                Verdict::Targets,
                "Progressing",
                "False",
            ),
            (
                vec![TargetState::Pending],
                Verdict::Interrupted,
                "Interrupted",
                "False",
            ),
            (
                vec![TargetState::Refused, TargetState::Pending],
                Verdict::Targets,
                "TargetsRefused",
                "False",
            ),
            (
                vec![TargetState::Refused, TargetState::Conflict],
                Verdict::Targets,
                "TargetsConflicting",
                "False",
            ),
            (
                vec![TargetState::Conflict, TargetState::Failed],
                Verdict::Targets,
                "TargetsFailing",
                "False",
            ),
            (
                vec![TargetState::Failed],
                Verdict::SourceMissing("gone".into()),
                "SourceMissing",
                "False",
            ),
        ];
        let now = now();
        for (states, verdict, reason, status) in cases {
            let entries: Vec<_> = states.iter().map(|s| entry("n", *s)).collect();
            let ready = &assemble(input(&entries, &verdict, &now)).conditions[0];
            assert_eq!(
                (ready.reason.as_str(), ready.status.as_str()),
                (reason, status),
                "{states:?}"
            );
        }
    }

    #[test]
    fn kstatus_conditions_say_whether_the_controller_or_a_person_must_act() {
        let now = now();
        let cases = [
            (
                vec![TargetState::Synced],
                Verdict::Targets,
                vec!["Ready=True"],
            ),
            (
                vec![TargetState::Synced, TargetState::Pending],
                Verdict::Targets,
                vec!["Ready=False", "Reconciling=True"],
            ),
            (
                vec![TargetState::Failed],
                Verdict::Targets,
                vec!["Ready=False", "Reconciling=True"],
            ),
            (
                vec![TargetState::Pending],
                Verdict::Interrupted,
                vec!["Ready=False", "Reconciling=True"],
            ),
            (
                vec![TargetState::Conflict],
                Verdict::Targets,
                vec!["Ready=False", "Stalled=True"],
            ),
            (
                vec![TargetState::Refused],
                Verdict::Targets,
                vec!["Ready=False", "Stalled=True"],
            ),
            (
                vec![],
                Verdict::SourceMissing("gone".into()),
                vec!["Ready=False", "Stalled=True"],
            ),
            (
                vec![],
                Verdict::InvalidSpec("bad".into()),
                vec!["Ready=False", "Stalled=True"],
            ),
        ];
        for (states, verdict, expected) in cases {
            let entries: Vec<_> = states.iter().map(|s| entry("n", *s)).collect();
            let status = assemble(input(&entries, &verdict, &now));
            let conditions: Vec<String> = status
                .conditions
                .iter()
                .map(|c| format!("{}={}", c.type_, c.status))
                .collect();
            assert_eq!(conditions, expected, "{states:?} {verdict:?}");
            assert!(status.conditions.iter().all(
                |c| c.observed_generation == Some(3) && c.reason == status.conditions[0].reason
            ));
        }
    }

    #[test]
    fn a_status_in_the_middle_of_a_pass_lists_only_what_needs_attention() {
        let mut entries: Vec<_> = (0..6)
            .map(|i| entry(&format!("ns-{i}"), TargetState::Pending))
            .collect();
        entries[1].state = TargetState::Synced;
        entries[4].state = TargetState::Conflict;
        entries[2].state = TargetState::Failed;
        let (listed, omitted) = select(&entries, needing_attention(&entries));
        let names: Vec<_> = listed.iter().map(|t| t.namespace.as_str()).collect();
        assert_eq!(names, ["ns-2", "ns-4"], "in resolution order");
        assert_eq!(omitted, 4);
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let earlier = Time(Timestamp::from_second(1_600_000_000).unwrap());
        let previous = [Condition {
            type_: READY.into(),
            status: "False".into(),
            reason: "Progressing".into(),
            message: String::new(),
            observed_generation: Some(2),
            last_transition_time: earlier.clone(),
        }];
        let now = now();
        let failing = [entry("a", TargetState::Failed)];
        let kept = assemble(Input {
            previous_conditions: &previous,
            ..input(&failing, &Verdict::Targets, &now)
        });
        assert_eq!(kept.conditions[0].last_transition_time, earlier);
        let synced = [entry("a", TargetState::Synced)];
        let flipped = assemble(Input {
            previous_conditions: &previous,
            ..input(&synced, &Verdict::Targets, &now)
        });
        assert_eq!(flipped.conditions[0].last_transition_time, now);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let mut text = "é".repeat(300);
        truncate(&mut text, 256);
        assert!(text.len() <= 256 && text.ends_with("..."));
    }
}
