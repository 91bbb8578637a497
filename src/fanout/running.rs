//! The reconciles running right now, each with its own cancellation token,
//! so an event elsewhere can stop one mid-way: a deleted source cancels its
//! Fanout's pass (rather than letting it finish writing copies of an object
//! that no longer exists), and a lost lease cancels them all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kube::runtime::reflector::ObjectRef;
use tokio_util::sync::CancellationToken;

use super::crd::Fanout;

/// Each running reconcile's token, with an id telling registrations apart.
type Tokens = HashMap<ObjectRef<Fanout>, (u64, CancellationToken)>;

/// Registry of running reconciles; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Running {
    tokens: Arc<Mutex<Tokens>>,
    next_id: Arc<AtomicU64>,
}

/// A running reconcile's registration; deregisters when dropped.
#[derive(Debug)]
pub struct RunningGuard {
    running: Running,
    key: ObjectRef<Fanout>,
    id: u64,
    token: CancellationToken,
}

impl Running {
    /// Registers a reconcile of `key`, cancelled when `parent` is (the
    /// runtime's abort token) or when [`Running::cancel`] names it.
    pub fn start(&self, key: ObjectRef<Fanout>, parent: &CancellationToken) -> RunningGuard {
        let token = parent.child_token();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key.clone(), (id, token.clone()));
        RunningGuard {
            running: self.clone(),
            key,
            id,
            token,
        }
    }

    /// Cancels the running reconcile of `key`; whether one was running.
    pub fn cancel(&self, key: &ObjectRef<Fanout>) -> bool {
        self.lock()
            .get(key)
            .map(|(_, token)| token.cancel())
            .is_some()
    }

    /// The Fanouts whose reconciles are running, for the log.
    pub fn keys(&self) -> Vec<ObjectRef<Fanout>> {
        self.lock().keys().cloned().collect()
    }

    /// Cancels every running reconcile.
    pub fn cancel_all(&self) {
        self.lock().values().for_each(|(_, token)| token.cancel());
    }

    fn lock(&self) -> MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RunningGuard {
    /// The token this reconcile must obey.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        let mut tokens = self.running.lock();
        // Only remove our own entry: the runner never runs two reconciles of
        // one object at once, but a late drop must not remove a successor's.
        if tokens.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            tokens.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_reaches_only_the_named_reconcile_and_guards_deregister() {
        let running = Running::default();
        let root = CancellationToken::new();
        let a = running.start(ObjectRef::new("a").within("ns"), &root);
        let b = running.start(ObjectRef::new("b").within("ns"), &root);
        assert!(running.cancel(&ObjectRef::new("a").within("ns")));
        assert!(a.token().is_cancelled());
        assert!(!b.token().is_cancelled());
        drop(a);
        assert!(
            !running.cancel(&ObjectRef::new("a").within("ns")),
            "deregistered"
        );
        root.cancel();
        assert!(
            b.token().is_cancelled(),
            "the parent reaches every reconcile"
        );
    }

    #[test]
    fn cancel_all_reaches_every_reconcile() {
        let running = Running::default();
        let root = CancellationToken::new();
        let guards: Vec<_> = ["a", "b"]
            .iter()
            .map(|n| running.start(ObjectRef::new(n).within("ns"), &root))
            .collect();
        running.cancel_all();
        assert!(guards.iter().all(|g| g.token().is_cancelled()));
    }
}
