//! Leader election on a `coordination.k8s.io/v1` Lease, by client-go's
//! `leaderelection` protocol, with a watch for prompt handover.
//!
//! Why not a crate: `kube-lease-manager` (used before) has no renew
//! deadline, so a leader whose renewal hangs keeps believing it leads after
//! its Lease expired; it judges expiry by comparing the holder's `renewTime`
//! with the local wall clock, so clock skew between nodes shortens or
//! stretches a term; and its `changed()` future is not cancel-safe, so a
//! `select!` around it renewed the Lease several times a second. The protocol
//! below is small and is the one every Go controller uses.
//!
//! The guarantees, for a lease duration `L` (15 s by default):
//!
//! - **Expiry is observed, not computed from timestamps.** A candidate that
//!   sees the Lease held by someone else records when it last saw the Lease
//!   *change* (its resourceVersion); it takes the Lease only once it has seen
//!   no change for the holder's whole `leaseDurationSeconds`. No clock is
//!   compared across machines.
//! - **One writer at a time.** Every write is a PUT carrying the
//!   resourceVersion it was based on, so two candidates racing for a free
//!   Lease cannot both win: the loser gets 409.
//! - **A leader that cannot renew steps down before its Lease can expire.**
//!   It renews every `2L/3`. If no renewal succeeds within `L − L/10` of
//!   the moment the last successful one was *sent*, it publishes `false`
//!   (the controller cancels its work) — and a standby, which saw that
//!   renewal only after it was sent, waits at least `L` from then. Each
//!   attempt is bounded by `L/5` and the time left, so a hung request cannot
//!   stretch the term; failed attempts are retried every `L/15`.
//! - **The election never ends on an error.** A leader that steps down is a
//!   candidate again at once; a deleted Lease is re-created; every failure
//!   is logged with the API server's address and retried.
//! - **Cadence.** An idle leader sends one request per renewal (a PUT with
//!   the resourceVersion of its own last write, no GET): 6 a minute at 15 s.
//!   Standbys send none while the Lease is renewed: they watch it.
//! - **Prompt handover.** On release the holder clears `holderIdentity`; a
//!   standby watching the Lease sees it and takes the Lease at once, so a
//!   `kubectl rollout restart` hands over in well under a second. A
//!   SIGKILLed leader cannot release; it is replaced after `L`.
//!
//! Lease requests go through a client of their own (built by the caller
//! without the fan-out's rate limit and with its own connections), so
//! renewals never queue behind fan-out writes.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::metrics::RuntimeMetrics;

/// Where the Lease lives, who we are, and how long a term lasts.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// The Lease's name.
    pub name: String,
    /// The Lease's namespace.
    pub namespace: String,
    /// This process' identity as holder (the pod name in a cluster).
    pub identity: String,
    /// How long the Lease stays valid after each renewal; a SIGKILLed
    /// leader is replaced after at most this long.
    pub duration: Duration,
}

/// The election's rhythm, derived from the lease duration `L` (see the
/// module documentation for why each one is what it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// `L`: how long the Lease is valid after a renewal.
    pub duration: Duration,
    /// `2L/3`: time from one successful renewal to the next attempt.
    pub renew_interval: Duration,
    /// `L − L/10`: a leader that has not renewed successfully this long
    /// after sending its last successful renewal steps down.
    pub renew_deadline: Duration,
    /// `L/15`: wait between failed attempts.
    pub retry_period: Duration,
    /// `L/5`: the longest one Lease request may take.
    pub request_timeout: Duration,
}

impl Timings {
    /// The timings for a lease duration.
    pub fn for_duration(duration: Duration) -> Self {
        Self {
            duration,
            renew_interval: duration * 2 / 3,
            renew_deadline: duration - duration / 10,
            retry_period: duration / 15,
            request_timeout: duration / 5,
        }
    }
}

/// Errors of the leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// A Lease request failed.
    #[error("{action} lease {namespace}/{name} on {server}")]
    Api {
        /// What was being done: `read`, `create`, `update`.
        action: &'static str,
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// The API server's address.
        server: String,
        /// What the API server (or the connection) said.
        #[source]
        source: kube::Error,
    },
    /// A Lease request got no answer in time.
    #[error("{action} lease {namespace}/{name} on {server}: no answer within {after:?}")]
    Timeout {
        /// What was being done.
        action: &'static str,
        /// The Lease's namespace.
        namespace: String,
        /// The Lease's name.
        name: String,
        /// The API server's address.
        server: String,
        /// The time allowed.
        after: Duration,
    },
    /// The election task panicked.
    #[error("leader election task ended abnormally")]
    Task(#[source] tokio::task::JoinError),
}

/// This process' view of leadership, and the task that maintains it.
#[derive(Debug)]
pub struct Leadership {
    leader: watch::Receiver<bool>,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), LeaseError>>>,
}

impl Leadership {
    /// For `--leader-election=false`: this process always leads.
    pub fn always() -> Self {
        let (_tx, leader) = watch::channel(true);
        Self {
            leader,
            stop: CancellationToken::new(),
            task: None,
        }
    }

    /// Starts competing for the Lease in a background task. `client` should
    /// be one of the election's own (see the module documentation);
    /// `server` is the API server's address, for messages.
    pub fn spawn(
        client: kube::Client,
        settings: LeaseSettings,
        server: String,
        metrics: RuntimeMetrics,
    ) -> Self {
        let (tx, leader) = watch::channel(false);
        let stop = CancellationToken::new();
        let span = info_span!("lease", lease = %settings.name, namespace = %settings.namespace);
        let elector = Elector {
            api: Api::namespaced(client, &settings.namespace),
            timings: Timings::for_duration(settings.duration),
            settings,
            server,
            tx,
            metrics,
        };
        let task = tokio::spawn(elector.run(stop.clone()).instrument(span));
        Self {
            leader,
            stop,
            task: Some(task),
        }
    }

    /// A receiver that holds `true` while this process leads.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Stops competing and releases the Lease if held, so a standby takes
    /// over now rather than after the Lease expires. The caller bounds it
    /// with a timeout: on a hung API server the Lease simply expires.
    pub async fn release(mut self) -> Result<(), LeaseError> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task.await.map_err(LeaseError::Task)?,
            None => Ok(()),
        }
    }
}

/// When a candidate last saw the Lease change, and how long its holder
/// declared the term to be.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Observation {
    resource_version: Option<String>,
    at: Instant,
    term: Duration,
}

/// What a candidate should do about a Lease it just read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Nobody holds it, we hold it, or its holder has been silent a whole
    /// term: write ourselves in.
    Take,
    /// Someone else holds it and may still be renewing: look again then.
    WaitUntil(Instant),
}

/// Why the leader phase ended.
enum Term {
    /// Told to stop while leading; the Lease as last written by us.
    Stopped(Box<Lease>),
    /// Leadership is gone; the reason, for the log.
    Lost(String),
}

struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    server: String,
    timings: Timings,
    tx: watch::Sender<bool>,
    metrics: RuntimeMetrics,
}

impl Elector {
    /// Candidate, leader, candidate again, ... until `stop`; then release.
    async fn run(self, stop: CancellationToken) -> Result<(), LeaseError> {
        let selector = format!("metadata.name={}", self.settings.name);
        let mut changes = watcher(
            self.api.clone(),
            watcher::Config::default().fields(&selector),
        )
        .default_backoff()
        .applied_objects()
        .boxed();
        let mut observed: Option<Observation> = None;
        loop {
            let Some((lease, sent)) = self.campaign(&mut observed, &mut changes, &stop).await
            else {
                return Ok(());
            };
            self.publish(true);
            match self.hold(lease, sent, &stop).await {
                Term::Stopped(lease) => {
                    self.publish(false);
                    return self.release(*lease).await;
                }
                Term::Lost(reason) => {
                    warn!(reason, "stepping down: this process no longer reconciles");
                    self.publish(false);
                    observed = None;
                }
            }
        }
    }

    /// Tries to take the Lease until it succeeds (the Lease and when the
    /// winning request was sent) or `stop` fires (`None`).
    async fn campaign(
        &self,
        observed: &mut Option<Observation>,
        changes: &mut futures::stream::BoxStream<'static, Result<Lease, watcher::Error>>,
        stop: &CancellationToken,
    ) -> Option<(Lease, Instant)> {
        loop {
            let sent = Instant::now();
            let next_look = match self.try_acquire(observed).await {
                Ok(Some(lease)) => return Some((lease, sent)),
                Ok(None) => match observed {
                    Some(seen) => seen.at + seen.term,
                    None => Instant::now() + self.timings.retry_period,
                },
                Err(error) => {
                    warn!(error = %chain(&error), "cannot take part in the leader election yet; retrying");
                    Instant::now() + self.timings.retry_period
                }
            };
            // Wait for the holder's term to run out, or for the Lease to
            // change (a release is taken at once).
            loop {
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep_until(next_look) => break,
                    change = changes.next() => match change {
                        Some(Ok(lease)) => {
                            if holder(&lease).is_none() {
                                debug!("the Lease was released; taking it");
                                break;
                            }
                            if observe(observed, &lease, Instant::now()) {
                                debug!(holder = ?holder(&lease), "the Lease was renewed by its holder");
                            }
                        }
                        Some(Err(error)) => debug!(%error, "Lease watch failed; it retries with backoff"),
                        None => {}
                    },
                }
            }
        }
    }

    /// One attempt: read the Lease and write ourselves in if we may.
    async fn try_acquire(
        &self,
        observed: &mut Option<Observation>,
    ) -> Result<Option<Lease>, LeaseError> {
        let Some(mut lease) = self
            .call("read", self.api.get_opt(&self.settings.name))
            .await?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(held_spec(
                    &self.settings.identity,
                    self.term_seconds(),
                    None,
                    Timestamp::now(),
                )),
            };
            return match self
                .call("create", self.api.create(&PostParams::default(), &lease))
                .await
            {
                Ok(created) => {
                    info!(identity = %self.settings.identity, "created the Lease; leading");
                    Ok(Some(created))
                }
                Err(error) if is_conflict(&error) => Ok(None),
                Err(error) => Err(error),
            };
        };
        if let Verdict::WaitUntil(_) =
            verdict(&self.settings.identity, &lease, observed, Instant::now())
        {
            return Ok(None);
        }
        let previous = lease.spec.take().unwrap_or_default();
        let spec = held_spec(
            &self.settings.identity,
            self.term_seconds(),
            Some(&previous),
            Timestamp::now(),
        );
        lease.spec = Some(spec);
        match self
            .call(
                "update",
                self.api
                    .replace(&self.settings.name, &PostParams::default(), &lease),
            )
            .await
        {
            Ok(taken) => {
                info!(identity = %self.settings.identity, previous = ?previous.holder_identity, "took the Lease; leading");
                Ok(Some(taken))
            }
            // Someone else wrote it first: look again.
            Err(error) if is_conflict(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Renews the Lease until told to stop or leadership is lost.
    async fn hold(
        &self,
        mut lease: Lease,
        mut last_sent: Instant,
        stop: &CancellationToken,
    ) -> Term {
        loop {
            tokio::select! {
                () = stop.cancelled() => return Term::Stopped(Box::new(lease)),
                () = tokio::time::sleep_until(last_sent + self.timings.renew_interval) => {}
            }
            let deadline = last_sent + self.timings.renew_deadline;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return Term::Lost(format!(
                        "no renewal of the Lease succeeded within {:?} of the last one",
                        self.timings.renew_deadline
                    ));
                }
                let sent = now;
                let attempt = tokio::select! {
                    () = stop.cancelled() => return Term::Stopped(Box::new(lease)),
                    attempt = self.renew(&lease, deadline - now) => attempt,
                };
                match attempt {
                    Ok(Renewal::Renewed(renewed)) => {
                        lease = *renewed;
                        last_sent = sent;
                        break;
                    }
                    Ok(Renewal::Lost(reason)) => return Term::Lost(reason),
                    Err(error) => {
                        warn!(error = %chain(&error), "renewing the Lease failed; retrying");
                        let pause = self
                            .timings
                            .retry_period
                            .min(deadline.saturating_duration_since(Instant::now()));
                        tokio::select! {
                            () = stop.cancelled() => return Term::Stopped(Box::new(lease)),
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                }
            }
        }
    }

    /// One renewal: a PUT based on our own last write; on 409, read the
    /// Lease again and, if it is still ours, renew that.
    async fn renew(&self, lease: &Lease, budget: Duration) -> Result<Renewal, LeaseError> {
        let mut next = lease.clone();
        for _ in 0..2 {
            let previous = next.spec.take().unwrap_or_default();
            next.spec = Some(held_spec(
                &self.settings.identity,
                self.term_seconds(),
                Some(&previous),
                Timestamp::now(),
            ));
            let params = PostParams::default();
            let request = self.api.replace(&self.settings.name, &params, &next);
            match self.call_within(budget, "update", request).await {
                Ok(renewed) => return Ok(Renewal::Renewed(Box::new(renewed))),
                Err(error) if is_not_found(&error) => {
                    return Ok(Renewal::Lost("the Lease was deleted".to_owned()));
                }
                Err(error) if is_conflict(&error) => {
                    match self
                        .call_within(budget, "read", self.api.get_opt(&self.settings.name))
                        .await?
                    {
                        Some(current)
                            if holder(&current) == Some(self.settings.identity.as_str()) =>
                        {
                            next = current
                        }
                        Some(current) => {
                            return Ok(Renewal::Lost(format!(
                                "the Lease is now held by {}",
                                holder(&current).unwrap_or("nobody")
                            )));
                        }
                        None => return Ok(Renewal::Lost("the Lease was deleted".to_owned())),
                    }
                }
                Err(error) => return Err(error),
            }
        }
        Ok(Renewal::Lost(
            "the Lease kept changing under its holder".to_owned(),
        ))
    }

    /// Clears `holderIdentity` so a standby takes over at once.
    async fn release(&self, lease: Lease) -> Result<(), LeaseError> {
        let mut released = lease;
        for _ in 0..2 {
            let previous = released.spec.take().unwrap_or_default();
            released.spec = Some(released_spec(&previous, Timestamp::now()));
            match self
                .call(
                    "update",
                    self.api
                        .replace(&self.settings.name, &PostParams::default(), &released),
                )
                .await
            {
                Ok(_) => {
                    info!("leader lease released");
                    return Ok(());
                }
                Err(error) if is_not_found(&error) => return Ok(()),
                Err(error) if is_conflict(&error) => {
                    match self
                        .call("read", self.api.get_opt(&self.settings.name))
                        .await?
                    {
                        Some(current)
                            if holder(&current) == Some(self.settings.identity.as_str()) =>
                        {
                            released = current
                        }
                        _ => return Ok(()),
                    }
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// A Lease request bounded by the request timeout.
    async fn call<T>(
        &self,
        action: &'static str,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        self.call_within(self.timings.request_timeout, action, request)
            .await
    }

    /// A Lease request bounded by the request timeout and by `budget`.
    async fn call_within<T>(
        &self,
        budget: Duration,
        action: &'static str,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        let after = budget.min(self.timings.request_timeout);
        match tokio::time::timeout(after, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(LeaseError::Api {
                action,
                namespace: self.settings.namespace.clone(),
                name: self.settings.name.clone(),
                server: self.server.clone(),
                source,
            }),
            Err(_) => Err(LeaseError::Timeout {
                action,
                namespace: self.settings.namespace.clone(),
                name: self.settings.name.clone(),
                server: self.server.clone(),
                after,
            }),
        }
    }

    fn publish(&self, leader: bool) {
        if *self.tx.borrow() != leader {
            info!(leader, identity = %self.settings.identity, "leadership changed");
        }
        self.metrics.set_leader(leader);
        self.tx.send_replace(leader);
    }

    fn term_seconds(&self) -> i32 {
        i32::try_from(self.timings.duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// The outcome of one renewal that got an answer.
enum Renewal {
    Renewed(Box<Lease>),
    Lost(String),
}

/// The Lease's holder, if anyone holds it.
fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|spec| spec.holder_identity.as_deref())
        .filter(|holder| !holder.is_empty())
}

/// Whether a candidate named `identity` may take `lease` now, updating
/// the observation.
fn verdict(
    identity: &str,
    lease: &Lease,
    observed: &mut Option<Observation>,
    now: Instant,
) -> Verdict {
    match holder(lease) {
        None => Verdict::Take,
        Some(holder) if holder == identity => Verdict::Take,
        Some(_) => {
            observe(observed, lease, now);
            match observed {
                Some(seen) if now < seen.at + seen.term => Verdict::WaitUntil(seen.at + seen.term),
                _ => Verdict::Take,
            }
        }
    }
}

/// Records `lease` as seen at `now` if it changed since the last
/// observation; returns whether it did.
fn observe(observed: &mut Option<Observation>, lease: &Lease, now: Instant) -> bool {
    let resource_version = lease.resource_version();
    if observed
        .as_ref()
        .is_some_and(|seen| seen.resource_version == resource_version)
    {
        return false;
    }
    let seconds = lease
        .spec
        .as_ref()
        .and_then(|spec| spec.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(0);
    *observed = Some(Observation {
        resource_version,
        at: now,
        term: Duration::from_secs(seconds),
    });
    true
}

/// The spec that makes `identity` the holder, renewed at `now`.
fn held_spec(
    identity: &str,
    seconds: i32,
    previous: Option<&LeaseSpec>,
    now: Timestamp,
) -> LeaseSpec {
    let ours = previous.is_some_and(|p| p.holder_identity.as_deref() == Some(identity));
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(seconds),
        acquire_time: if ours {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours || previous.is_none() {
            transitions
        } else {
            transitions.saturating_add(1)
        }),
        ..LeaseSpec::default()
    }
}

/// The spec of a released Lease: no holder, a one-second term (what
/// client-go writes), the transition count kept for the next holder.
fn released_spec(previous: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        lease_transitions: previous.lease_transitions,
        ..LeaseSpec::default()
    }
}

fn is_conflict(error: &LeaseError) -> bool {
    matches!(error, LeaseError::Api { source: kube::Error::Api(status), .. } if status.code == 409)
}

fn is_not_found(error: &LeaseError) -> bool {
    matches!(error, LeaseError::Api { source: kube::Error::Api(status), .. } if status.code == 404)
}

/// An error and its causes on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, resource_version: &str, seconds: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some(resource_version.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(seconds),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn a_leader_steps_down_before_any_standby_may_take_over() {
        let t = Timings::for_duration(Duration::from_secs(15));
        assert_eq!(
            t.renew_interval,
            Duration::from_secs(10),
            "6 renewals a minute"
        );
        assert!(t.renew_interval < t.renew_deadline && t.renew_deadline < t.duration);
        assert!(
            t.retry_period * 3 <= t.renew_deadline - t.renew_interval,
            "room for retries"
        );
        assert_eq!(t.duration - t.renew_deadline, Duration::from_millis(1500));
        let short = Timings::for_duration(Duration::from_secs(2));
        assert!(
            short.renew_interval < short.renew_deadline && short.renew_deadline < short.duration
        );
        assert!(!short.retry_period.is_zero() && !short.request_timeout.is_zero());
    }

    #[tokio::test(start_paused = true)]
    async fn a_candidate_waits_a_whole_term_of_silence_before_taking_over() {
        let mut observed = None;
        let start = Instant::now();
        let held = lease(Some("other"), "1", 15);
        assert_eq!(
            verdict("me", &held, &mut observed, start),
            Verdict::WaitUntil(start + Duration::from_secs(15))
        );
        // A renewal (new resourceVersion) restarts the count.
        let later = start + Duration::from_secs(10);
        let renewed = lease(Some("other"), "2", 15);
        assert_eq!(
            verdict("me", &renewed, &mut observed, later),
            Verdict::WaitUntil(later + Duration::from_secs(15))
        );
        // The same record, a whole term later: the holder is gone.
        assert_eq!(
            verdict(
                "me",
                &renewed,
                &mut observed,
                later + Duration::from_secs(15)
            ),
            Verdict::Take
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_or_own_lease_is_taken_at_once() {
        let now = Instant::now();
        assert_eq!(
            verdict("me", &lease(None, "1", 1), &mut None, now),
            Verdict::Take
        );
        assert_eq!(
            verdict("me", &lease(Some(""), "1", 1), &mut None, now),
            Verdict::Take
        );
        assert_eq!(
            verdict("me", &lease(Some("me"), "1", 15), &mut None, now),
            Verdict::Take
        );
    }

    #[test]
    fn specs_keep_acquire_time_and_count_transitions() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(1_010).unwrap();
        let first = held_spec("a", 15, None, t0);
        assert_eq!(first.lease_transitions, Some(0));
        let renewed = held_spec("a", 15, Some(&first), t1);
        assert_eq!(
            renewed.acquire_time, first.acquire_time,
            "a renewal keeps the acquire time"
        );
        assert_eq!(renewed.renew_time, Some(MicroTime(t1)));
        assert_eq!(renewed.lease_transitions, Some(0));
        let taken = held_spec("b", 15, Some(&renewed), t1);
        assert_eq!(
            taken.lease_transitions,
            Some(1),
            "a new holder is a transition"
        );
        assert_eq!(taken.acquire_time, Some(MicroTime(t1)));
        let released = released_spec(&taken, t1);
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_transitions, Some(1));
    }
}
