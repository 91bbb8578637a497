//! The bounded executor under both modes: it starts items while there is
//! room, applies the time limits and cancellation, and hands back each
//! item's outcome in completion order.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::iter::{Enumerate, Fuse};
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::options::BatchOptions;
use super::outcome::{ItemOutcome, NotStartedReason};

/// Runs the items of one batch and reports their outcomes as they end.
///
/// Every item future lives in `running` and is polled by whoever polls the
/// engine; nothing is spawned, so dropping the engine drops all item work.
pub(super) struct Engine<Iter, F, Fut, T, E> {
    items: Fuse<Enumerate<Iter>>,
    run_item: F,
    concurrency: NonZeroUsize,
    item_timeout: Option<Duration>,
    deadline: Option<Deadline>,
    stop: CancellationToken,
    abort: CancellationToken,
    /// Registers the poller's waker so an abort interrupts a batch whose
    /// items are all waiting.
    aborted: Pin<Box<WaitForCancellationFutureOwned>>,
    running: FuturesUnordered<ItemTask<Fut>>,
    running_indices: BTreeSet<usize>,
    /// Outcomes of items dropped by an abort or the deadline, not yet handed out.
    cut_off: VecDeque<(usize, ItemOutcome<T, E>)>,
    /// Set once nothing more may start; the first reason is kept.
    halted: Option<NotStartedReason>,
    /// Whether running items were dropped (abort or deadline), after which
    /// no item runs again.
    cut_short: bool,
}

/// The batch's overall deadline; its timer is created on first poll so a
/// batch can be built outside a Tokio runtime.
struct Deadline {
    at: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

/// One running item, tagged with its index and bounded by its own timeout.
struct ItemTask<Fut> {
    index: usize,
    work: Pin<Box<Fut>>,
    timeout: Option<(Duration, Pin<Box<Sleep>>)>,
}

impl<Iter, F, Fut, T, E> Engine<Iter, F, Fut, T, E>
where
    Iter: Iterator,
    F: FnMut(usize, Iter::Item) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    pub(super) fn new(items: Iter, options: BatchOptions, run_item: F) -> Self {
        let deadline = options
            .deadline_from(Instant::now())
            .map(|at| Deadline { at, timer: None });
        Self {
            items: items.enumerate().fuse(),
            run_item,
            concurrency: options.concurrency,
            item_timeout: options.item_timeout,
            deadline,
            stop: options.stop,
            aborted: Box::pin(options.abort.clone().cancelled_owned()),
            abort: options.abort,
            running: FuturesUnordered::new(),
            running_indices: BTreeSet::new(),
            cut_off: VecDeque::new(),
            halted: None,
            cut_short: false,
        }
    }

    /// The next item outcome in completion order, or `None` once every item
    /// has had one.
    ///
    /// It returns as soon as one outcome is known and starts no item in the
    /// same call after that, so a fail-fast caller that stops polling on an
    /// error knows nothing started after the error was seen.
    pub(super) fn poll_completion(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(usize, ItemOutcome<T, E>)>> {
        loop {
            if let Some(done) = self.cut_off.pop_front() {
                return Poll::Ready(Some(done));
            }
            if !self.cut_short {
                if self.aborted.as_mut().poll(cx).is_ready() {
                    self.halt(NotStartedReason::Aborted);
                    continue;
                }
                if self
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.poll_passed(cx))
                {
                    self.halt(NotStartedReason::DeadlineExceeded);
                    continue;
                }
            }
            if self.halted.is_none() && self.stop.is_cancelled() {
                // Noted even when no slot is free, so the first reason wins.
                self.halt(NotStartedReason::Stopped);
            }
            if self.halted.is_none()
                && let Some(reason) = self.start_while_room()
            {
                self.halt(reason);
                continue;
            }
            match self.running.poll_next_unpin(cx) {
                Poll::Ready(Some((index, outcome))) => {
                    self.running_indices.remove(&index);
                    return Poll::Ready(Some((index, outcome)));
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {}
            }
            // Nothing is running. Unless halted, `start_while_room` would
            // have started an item if one were left, so the input is done.
            let Some(reason) = self.halted else {
                return Poll::Ready(None);
            };
            let not_started = self
                .items
                .next()
                .map(|(index, _item)| (index, ItemOutcome::NotStarted(reason)));
            return Poll::Ready(not_started);
        }
    }

    /// Starts items until `concurrency` run or the input is done; returns
    /// why it had to stop early, checked before every start so that nothing
    /// starts after a stop, an abort or the deadline.
    fn start_while_room(&mut self) -> Option<NotStartedReason> {
        while self.running.len() < self.concurrency.get() {
            if let Some(reason) = self.reason_not_to_start() {
                return Some(reason);
            }
            match self.items.next() {
                Some((index, item)) => {
                    let work = (self.run_item)(index, item);
                    self.running
                        .push(ItemTask::new(index, work, self.item_timeout));
                    self.running_indices.insert(index);
                }
                None => break,
            }
        }
        None
    }

    fn reason_not_to_start(&self) -> Option<NotStartedReason> {
        if self.abort.is_cancelled() {
            Some(NotStartedReason::Aborted)
        } else if self
            .deadline
            .as_ref()
            .is_some_and(|deadline| Instant::now() >= deadline.at)
        {
            Some(NotStartedReason::DeadlineExceeded)
        } else if self.stop.is_cancelled() {
            Some(NotStartedReason::Stopped)
        } else {
            None
        }
    }

    /// Stops starting items; on an abort or the deadline also drops the
    /// running ones, recording their outcomes in index order.
    fn halt(&mut self, reason: NotStartedReason) {
        let first = self.halted.is_none();
        self.halted.get_or_insert(reason);
        let mut dropped = 0;
        if reason != NotStartedReason::Stopped && !self.cut_short {
            self.cut_short = true;
            self.running.clear();
            dropped = self.running_indices.len();
            for index in std::mem::take(&mut self.running_indices) {
                let outcome = match reason {
                    NotStartedReason::Aborted => ItemOutcome::Aborted,
                    _ => ItemOutcome::DeadlineExceeded,
                };
                self.cut_off.push_back((index, outcome));
            }
        }
        if first || dropped > 0 {
            tracing::debug!(%reason, dropped, still_running = self.running.len(), "batch stops starting items");
        }
    }
}

impl Deadline {
    /// Whether the deadline has passed; otherwise arranges a wake-up for it.
    fn poll_passed(&mut self, cx: &mut Context<'_>) -> bool {
        if Instant::now() >= self.at {
            return true;
        }
        let at = self.at;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        timer.as_mut().poll(cx).is_ready()
    }
}

impl<Fut> ItemTask<Fut> {
    fn new(index: usize, work: Fut, timeout: Option<Duration>) -> Self {
        Self {
            index,
            work: Box::pin(work),
            timeout: timeout.map(|limit| (limit, Box::pin(tokio::time::sleep(limit)))),
        }
    }
}

impl<Fut, T, E> Future for ItemTask<Fut>
where
    Fut: Future<Output = Result<T, E>>,
{
    type Output = (usize, ItemOutcome<T, E>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // The work is polled first, as `tokio::time::timeout` does: an item
        // that is done when its timer fires counts as done.
        if let Poll::Ready(result) = this.work.as_mut().poll(cx) {
            return Poll::Ready((this.index, result.into()));
        }
        if let Some((after, timer)) = &mut this.timeout
            && timer.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready((this.index, ItemOutcome::TimedOut { after: *after }));
        }
        Poll::Pending
    }
}
