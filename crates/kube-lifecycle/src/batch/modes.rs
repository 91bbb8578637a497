//! The two modes: an ordered stream of every outcome, and fail-fast.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

use super::engine::Engine;
use super::options::BatchOptions;
use super::outcome::{BatchError, ItemOutcome};

/// A running batch in collect-every-result mode: a stream of
/// `(index, outcome)`, one per input item, in input order.
///
/// Created by [`ordered`]. Dropping it drops every running item.
pub struct OrderedBatch<Iter, F, Fut, T, E> {
    engine: Engine<Iter, F, Fut, T, E>,
    /// Outcomes that ended before an earlier item; slot `k` is item `next + k`.
    waiting: VecDeque<Option<ItemOutcome<T, E>>>,
    next: usize,
}

// Nothing in `OrderedBatch` is pinned in place: item futures are boxed by
// the engine, so moving the batch never moves them.
impl<Iter, F, Fut, T, E> Unpin for OrderedBatch<Iter, F, Fut, T, E> {}

/// Runs `run_item(index, item)` over `items`, at most
/// `options.concurrency` at once, and streams one outcome per item in input
/// order; a failing item does not stop the others.
///
/// Each outcome is yielded as soon as every earlier item has one, so a
/// caller can write ordered progress while later items still run. The batch
/// starts when the stream is first polled; a deadline set with
/// [`BatchOptions::deadline_after`] counts from this call.
pub fn ordered<Items, F, Fut, T, E>(
    items: Items,
    options: BatchOptions,
    run_item: F,
) -> OrderedBatch<Items::IntoIter, F, Fut, T, E>
where
    Items: IntoIterator,
    F: FnMut(usize, Items::Item) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    OrderedBatch {
        engine: Engine::new(items.into_iter(), options, run_item),
        waiting: VecDeque::new(),
        next: 0,
    }
}

/// Runs `run_item(index, item)` over `items`, at most
/// `options.concurrency` at once, and returns every value in input order, or
/// the first failure in completion order.
///
/// On a failure (an error, a timeout, the deadline, a stop or an abort) the
/// running siblings are dropped before this returns, and no item starts
/// after the failure is seen: no item work outlives the call. A stop lets
/// the running items finish and then fails with
/// [`BatchError::NotStarted`] for the first item left out.
pub async fn fail_fast<Items, F, Fut, T, E>(
    items: Items,
    options: BatchOptions,
    run_item: F,
) -> Result<Vec<T>, BatchError<E>>
where
    Items: IntoIterator,
    F: FnMut(usize, Items::Item) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut engine = Engine::new(items.into_iter(), options, run_item);
    let mut values: Vec<Option<T>> = Vec::new();
    while let Some((index, outcome)) = poll_fn(|cx| engine.poll_completion(cx)).await {
        // Returning here drops `engine`, and with it every running item.
        let value = outcome.into_result(index)?;
        if values.len() <= index {
            values.resize_with(index + 1, || None);
        }
        values[index] = Some(value);
    }
    // The engine reports every index exactly once, so every slot is filled.
    debug_assert!(values.iter().all(Option::is_some));
    Ok(values.into_iter().flatten().collect())
}

impl<Iter, F, Fut, T, E> Stream for OrderedBatch<Iter, F, Fut, T, E>
where
    Iter: Iterator,
    F: FnMut(usize, Iter::Item) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    type Item = (usize, ItemOutcome<T, E>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(slot) = this.waiting.front_mut()
                && let Some(outcome) = slot.take()
            {
                this.waiting.pop_front();
                let index = this.next;
                this.next += 1;
                return Poll::Ready(Some((index, outcome)));
            }
            match this.engine.poll_completion(cx) {
                Poll::Ready(Some((index, outcome))) => {
                    let Some(offset) = index.checked_sub(this.next) else {
                        debug_assert!(false, "batch item {index} reported twice");
                        continue;
                    };
                    if this.waiting.len() <= offset {
                        this.waiting.resize_with(offset + 1, || None);
                    }
                    this.waiting[offset] = Some(outcome);
                }
                Poll::Ready(None) => {
                    debug_assert!(this.waiting.is_empty(), "batch ended with items unreported");
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
