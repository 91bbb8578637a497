//! The controller's settings: what the flags decide, plus a few knobs with
//! defaults that the binary does not expose as flags (`retry_interval`,
//! `resync_interval`, `max_status_targets`).

use std::num::NonZeroUsize;
use std::time::Duration;

use super::status::DEFAULT_MAX_TARGETS;

/// How the Fanout controller behaves. [`Settings::default`] matches the
/// documented flag defaults.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Copy only into namespaces that consent by label (`--require-consent`).
    pub require_consent: bool,
    /// Fanouts reconciled at once (`--concurrency`).
    pub concurrency: NonZeroUsize,
    /// Target writes in flight at once across all Fanouts (`--fanout-concurrency`).
    pub fanout_concurrency: NonZeroUsize,
    /// Deadline of each single API write (`--write-timeout`).
    pub write_timeout: Duration,
    /// Least time between two status writes of one Fanout (`--status-interval`).
    pub status_interval: Duration,
    /// How soon a Fanout with Failed or Conflict targets is looked at again,
    /// so it converges once the blocker is gone without any event for it
    /// (an unlabelled blocker is not watched: that would mean watching every
    /// Secret).
    pub retry_interval: Duration,
    /// How often every Fanout is reconciled even without events: a safety
    /// net for events lost while a watch was down.
    pub resync_interval: Duration,
    /// Most target entries written to one status (see `FanoutStatus`).
    pub max_status_targets: usize,
    /// Reconcile only Fanouts matching this label selector
    /// (`--fanout-selector`): lets several controller instances share one
    /// cluster (shards, or tests running side by side), each owning its own
    /// Fanouts.
    pub fanout_selector: Option<String>,
    /// Name of this instance in Events (`reportingInstance`), e.g. the pod name.
    pub instance: Option<String>,
    /// The source-access admission policy to watch for
    /// (`--source-access-policy`; see [`super::guard`]).
    pub source_access_policy: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            require_consent: true,
            concurrency: NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN),
            fanout_concurrency: NonZeroUsize::new(32).unwrap_or(NonZeroUsize::MIN),
            write_timeout: Duration::from_secs(10),
            status_interval: Duration::from_secs(1),
            retry_interval: Duration::from_secs(30),
            resync_interval: Duration::from_secs(600),
            max_status_targets: DEFAULT_MAX_TARGETS,
            fanout_selector: None,
            instance: None,
            source_access_policy: None,
        }
    }
}
