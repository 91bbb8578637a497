//! Bounded, ordered, cancellable concurrent batches.
//!
//! A controller often writes one object per item of a list, possibly
//! thousands, and must report progress in list order while the writes
//! finish in any order. This module runs a closure over a list of items, a
//! few at a time, and reports one [`ItemOutcome`] per item, in input order.
//!
//! Two entry points, one per mode:
//! - [`ordered`] (collect every result): a [`Stream`](futures::Stream) of
//!   `(index, ItemOutcome)`; one failing item does not stop the others.
//! - [`fail_fast`]: an `async fn` returning every value in input order, or the
//!   first error (with the index of its item) after cancelling the siblings.
//!
//! # Semantics
//! - **Bounded.** At most [`BatchOptions::new`]'s `concurrency` items are in
//!   flight; the next item starts only when one of them ends. Nothing is
//!   spawned: the item futures are polled inside the caller's task, so
//!   dropping the batch drops every one of them on the spot. Items thus run
//!   concurrently, not in parallel, which suits API calls; CPU-heavy work
//!   belongs in `spawn_blocking` inside the item.
//! - **One outcome per item, in input order, as early as possible.** The
//!   outcome of item `i` is yielded as soon as items `0..=i` all have one, so
//!   the caller can write ordered intermediate status while later items run.
//! - **No head-of-line blocking.** A finished item frees its slot at once,
//!   even while an earlier item is still running; its outcome waits in a
//!   reorder buffer. (`futures`' `buffered(n)` keeps a finished future in its
//!   window until it is yielded, so one slow namespace would throttle the
//!   whole fan-out to that one write.)
//! - **Item timeout**, measured from the item's own start: a slower item is
//!   dropped and reported [`ItemOutcome::TimedOut`].
//! - **Overall deadline**: items still running when it passes are dropped
//!   and reported [`ItemOutcome::DeadlineExceeded`]; the rest never start
//!   ([`NotStartedReason::DeadlineExceeded`]).
//! - **Stop** (the first shutdown signal): no new item starts; running items
//!   finish, each bounded by its timeout; the rest are reported
//!   [`ItemOutcome::NotStarted`] with [`NotStartedReason::Stopped`], which
//!   the controller records as `Pending`.
//! - **Abort** (the drain deadline): running items are dropped at once and
//!   reported [`ItemOutcome::Aborted`]; the rest never start.
//! - **Fail fast**: the first item to end without a value, in completion
//!   order, ends the call; running siblings are dropped before it returns and
//!   no sibling starts after the error is seen, so no item work outlives it.
//! - Items and their futures are created and polled inside a Tokio runtime
//!   (the timeouts use Tokio timers).
//!
//! # Compared with a goroutine per item
//! The common Go template for "process the records of a list concurrently"
//! starts one goroutine per record (unbounded) and returns on the first
//! error while the other goroutines keep working. Nobody reads its one-slot
//! error channel after that, so from the second later error on the senders
//! block forever, and with them the goroutine waiting on the `WaitGroup`: a
//! leak. It orders the results only once all are done, and has one timeout
//! for the whole list and none per record. Here the concurrency is capped,
//! the ordered prefix streams out early, every item has its own timeout,
//! shutdown can stop or abort the batch, and fail-fast leaves nothing
//! running after it returns.

mod engine;
mod modes;
mod options;
mod outcome;
#[cfg(test)]
mod tests;

pub use modes::{OrderedBatch, fail_fast, ordered};
pub use options::BatchOptions;
pub use outcome::{BatchError, ItemOutcome, NotStartedReason};
