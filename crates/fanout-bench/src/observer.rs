//! Watches one Fanout and keeps the history of its status as the bench saw
//! it arrive: when each change came, its summary, and whether the status
//! itself changed (a status write) or only the metadata (e.g. the finalizer).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use fanout::Fanout;
use fanout::crd::{FanoutStatus, Summary};
use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::Notify;

use crate::world::SOURCE_NAMESPACE;

/// One observed version of the Fanout whose status differs from the one before.
#[derive(Clone, Debug)]
pub struct Change {
    /// When the bench received it.
    pub at: Instant,
    /// Its status summary.
    pub summary: Summary,
}

#[derive(Default)]
struct History {
    synced: bool,
    last: Option<FanoutStatus>,
    changes: Vec<Change>,
    error: Option<String>,
}

/// A running watch on one Fanout; stops when dropped.
pub struct Observer {
    history: Arc<Mutex<History>>,
    notify: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    /// Starts watching Fanout `name` (which may not exist yet) and returns
    /// once the watch has listed, so that its creation will be seen.
    pub async fn start(client: &Client, name: &str) -> Result<Observer> {
        let api: Api<Fanout> = Api::namespaced(client.clone(), SOURCE_NAMESPACE);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let history = Arc::new(Mutex::new(History::default()));
        let notify = Arc::new(Notify::new());
        let task = tokio::spawn({
            let history = history.clone();
            let notify = notify.clone();
            async move {
                let mut events = watcher::watcher(api, config).boxed();
                while let Some(event) = events.next().await {
                    let at = Instant::now();
                    let mut h = history.lock().unwrap_or_else(PoisonError::into_inner);
                    match event {
                        Ok(Event::Apply(fanout) | Event::InitApply(fanout)) => {
                            let status = fanout.status.unwrap_or_default();
                            if h.last.as_ref() != Some(&status) {
                                if h.last.is_some() || status != FanoutStatus::default() {
                                    h.changes.push(Change {
                                        at,
                                        summary: status.summary,
                                    });
                                }
                                h.last = Some(status);
                            }
                        }
                        Ok(Event::InitDone) => h.synced = true,
                        Ok(Event::Init | Event::Delete(_)) => {}
                        Err(e) => h.error = Some(e.to_string()),
                    }
                    drop(h);
                    notify.notify_waiters();
                }
            }
        });
        let observer = Observer {
            history,
            notify,
            task,
        };
        observer
            .wait_until(|h| h.synced, Duration::from_secs(30))
            .await
            .context("the Fanout watch did not start")?;
        Ok(observer)
    }

    async fn wait_until(&self, done: impl Fn(&History) -> bool, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            {
                let h = self.history.lock().unwrap_or_else(PoisonError::into_inner);
                if done(&h) {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let h = self.history.lock().unwrap_or_else(PoisonError::into_inner);
                bail!(
                    "timed out after {timeout:?}; last summary {:?}; watch error {:?}",
                    h.changes.last().map(|c| c.summary),
                    h.error
                );
            }
        }
    }

    /// Waits for the first status whose summary satisfies `done`; returns when it arrived.
    pub async fn first(
        &self,
        done: impl Fn(&Summary) -> bool,
        timeout: Duration,
    ) -> Result<Instant> {
        self.wait_until(|h| h.changes.iter().any(|c| done(&c.summary)), timeout)
            .await?;
        let h = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        h.changes
            .iter()
            .find(|c| done(&c.summary))
            .map(|c| c.at)
            .context("change vanished from the history")
    }

    /// Every status change seen so far.
    pub fn changes(&self) -> Vec<Change> {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .changes
            .clone()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
