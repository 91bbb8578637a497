//! One controller process's requests, counted from the API server's audit
//! log (`scripts/testbed` writes it: Metadata level for Leases, Secrets,
//! ConfigMaps and Fanouts, with the user agent). Every controller the bench
//! starts has its own `--identity`, and its user agent is
//! `fanout/<version> (<identity>)`: its requests are those whose user agent
//! ends with `(<identity>)`. A request is counted once (its `ResponseStarted`
//! and `ResponseComplete` lines share an id), in the window it was received in.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::jiff::Timestamp;
use testkit::{AuditLog, AuditMark};

use crate::results::{RequestCount, request_counts};

/// How long the bench waits before reading what the API server logged.
const FLUSH: Duration = Duration::from_millis(500);

/// The start of a window: where the log ended, and when.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    mark: AuditMark,
    at: Timestamp,
}

/// The testbed's audit log, beside the admin kubeconfig.
pub struct Audit {
    log: AuditLog,
}

impl Audit {
    /// The log of the testbed whose admin kubeconfig is `kubeconfig`.
    pub fn new(kubeconfig: &std::path::Path) -> Result<Audit> {
        let dir = kubeconfig
            .parent()
            .context("the kubeconfig has no directory")?;
        Ok(Audit {
            log: AuditLog::new(dir),
        })
    }

    /// Marks the start of a window: now.
    pub fn mark(&self) -> Result<Mark> {
        let at = Timestamp::now();
        Ok(Mark {
            mark: self.log.mark().context("reading the audit log")?,
            at,
        })
    }

    /// The requests of the process with `identity` received between `from`
    /// and `to`, by (audit verb, resource[/subresource]).
    pub async fn requests(
        &self,
        from: &Mark,
        to: Timestamp,
        identity: &str,
    ) -> Result<Vec<RequestCount>> {
        Ok(self.requests_sliced(from, to, identity, None).await?.0)
    }

    /// [`Audit::requests`], and with `slice`, how many were received in
    /// each `slice` of the window, in order.
    pub async fn requests_sliced(
        &self,
        from: &Mark,
        to: Timestamp,
        identity: &str,
        slice: Option<Duration>,
    ) -> Result<(Vec<RequestCount>, Vec<u64>)> {
        tokio::time::sleep(FLUSH).await;
        let agent = format!("({identity})");
        let mut seen = HashSet::new();
        let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut slices: Vec<u64> = Vec::new();
        self.log
            .read_since(&from.mark, |record| {
                let event = &record.event;
                if event.received < from.at
                    || event.received > to
                    || !event.user_agent.ends_with(&agent)
                    || !seen.insert(record.audit_id)
                {
                    return;
                }
                let resource = if event.subresource.is_empty() {
                    event.resource.clone()
                } else {
                    format!("{}/{}", event.resource, event.subresource)
                };
                *counts.entry((event.verb.clone(), resource)).or_default() += 1;
                if let Some(slice) = slice {
                    let offset = event
                        .received
                        .duration_since(from.at)
                        .as_secs_f64()
                        .max(0.0);
                    let i = (offset / slice.as_secs_f64()) as usize;
                    if slices.len() <= i {
                        slices.resize(i + 1, 0);
                    }
                    slices[i] += 1;
                }
            })
            .context("reading the audit log")?;
        if let Some(slice) = slice {
            let whole = to.duration_since(from.at).as_secs_f64() / slice.as_secs_f64();
            slices.resize((whole.ceil() as usize).max(slices.len()), 0);
        }
        Ok((request_counts(&counts), slices))
    }
}

/// The writes among `requests`: create, update, patch, delete, on anything but Leases.
pub fn writes(requests: &[RequestCount]) -> Vec<RequestCount> {
    requests
        .iter()
        .filter(|r| matches!(r.verb.as_str(), "create" | "update" | "patch" | "delete"))
        .filter(|r| r.resource != "leases")
        .cloned()
        .collect()
}

/// The sum of `requests` that pass `keep`.
pub fn total(requests: &[RequestCount], keep: impl Fn(&RequestCount) -> bool) -> u64 {
    requests.iter().filter(|r| keep(r)).map(|r| r.count).sum()
}
