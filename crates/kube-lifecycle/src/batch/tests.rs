//! Tests of the batch template. Timed tests run on a paused Tokio clock
//! (it jumps to the next timer whenever every task waits), so virtual
//! milliseconds cost nothing and outcomes cannot depend on machine load.
//! Ordering and cancellation tests use scheduler yields and cancellation
//! tokens as gates instead of time.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures::{StreamExt, poll};
use proptest::prelude::*;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;

/// Counts item futures: how many were created, how many are alive now, and
/// the most alive at once. An item holds a [`Live`] guard from creation to
/// drop, so "alive" covers running and dropped-while-running alike.
#[derive(Default)]
struct Tracker {
    started: AtomicUsize,
    live: AtomicUsize,
    max_live: AtomicUsize,
}

struct Live(Arc<Tracker>);

impl Tracker {
    fn enter(self: &Arc<Self>) -> Live {
        self.started.fetch_add(1, Ordering::SeqCst);
        let now = self.live.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_live.fetch_max(now, Ordering::SeqCst);
        Live(Arc::clone(self))
    }

    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    fn max_live(&self) -> usize {
        self.max_live.load(Ordering::SeqCst)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a test item does.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// Yields to the scheduler `yields` times, then returns its index.
    Succeed { yields: u8 },
    /// Yields to the scheduler `yields` times, then fails with its index.
    Fail { yields: u8 },
    /// Never finishes.
    Hang,
}

async fn perform(index: usize, plan: Plan, live: Live) -> Result<usize, usize> {
    let _live = live;
    match plan {
        Plan::Succeed { yields } => {
            yield_times(yields).await;
            Ok(index)
        }
        Plan::Fail { yields } => {
            yield_times(yields).await;
            Err(index)
        }
        Plan::Hang => std::future::pending().await,
    }
}

async fn yield_times(yields: u8) {
    for _ in 0..yields {
        tokio::task::yield_now().await;
    }
}

/// Turns a batch that never ends into a failed test rather than a hung
/// one: on the paused clock, the hour passes as soon as everything waits.
trait MustEnd: Future + Sized {
    async fn must_end(self) -> Self::Output {
        tokio::time::timeout(Duration::from_secs(3600), self)
            .await
            .expect("the batch never ended")
    }
}

impl<F: Future> MustEnd for F {}

fn expected(index: usize, plan: Plan) -> ItemOutcome<usize, usize> {
    match plan {
        Plan::Succeed { .. } => ItemOutcome::Succeeded(index),
        Plan::Fail { .. } => ItemOutcome::Failed(index),
        Plan::Hang => ItemOutcome::TimedOut {
            after: Duration::from_millis(1),
        },
    }
}

fn options(concurrency: usize) -> BatchOptions {
    BatchOptions::new(NonZeroUsize::new(concurrency).unwrap())
}

/// A current-thread runtime on a paused clock, one per proptest case.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn finishing_plan() -> impl Strategy<Value = Plan> {
    prop_oneof![
        3 => (0u8..16).prop_map(|yields| Plan::Succeed { yields }),
        1 => (0u8..16).prop_map(|yields| Plan::Fail { yields }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Collect mode: one outcome per item, in input order, each the item's
    /// own result whatever failed around it, never more than N alive.
    #[test]
    fn collect_mode_keeps_order_and_bound_and_every_result(
        concurrency in 1usize..=8,
        plans in prop::collection::vec(finishing_plan(), 0..40),
    ) {
        runtime().block_on(async {
            let tracker = Arc::new(Tracker::default());
            let outcomes: Vec<_> = ordered(plans.clone(), options(concurrency), |index, plan| {
                perform(index, plan, tracker.enter())
            })
            .collect()
            .must_end()
            .await;

            let want: Vec<_> = plans.iter().enumerate().map(|(i, &plan)| (i, expected(i, plan))).collect();
            prop_assert_eq!(outcomes, want);
            prop_assert!(tracker.max_live() <= concurrency);
            // The bound is used, not just respected.
            prop_assert_eq!(tracker.max_live(), concurrency.min(plans.len()));
            prop_assert_eq!(tracker.live(), 0);
            Ok::<(), TestCaseError>(())
        })?;
    }

    /// Fail-fast: the error returned is the first one an item produced, no
    /// item starts after it, nothing is alive once the call returns; without
    /// errors every value comes back in input order.
    #[test]
    fn fail_fast_returns_first_error_and_leaves_nothing_running(
        concurrency in 1usize..=8,
        plans in prop::collection::vec(finishing_plan(), 0..40),
    ) {
        runtime().block_on(async {
            let tracker = Arc::new(Tracker::default());
            let first_error: Arc<std::sync::Mutex<Option<usize>>> = Arc::default();
            let started_after_error = Arc::new(AtomicBool::new(false));

            let result = fail_fast(plans.clone(), options(concurrency), |index, plan| {
                if first_error.lock().unwrap().is_some() {
                    started_after_error.store(true, Ordering::SeqCst);
                }
                let live = tracker.enter();
                let first_error = Arc::clone(&first_error);
                async move {
                    let result = perform(index, plan, live).await;
                    if result.is_err() {
                        first_error.lock().unwrap().get_or_insert(index);
                    }
                    result
                }
            })
            .must_end().await;

            // Checked before anything else can run.
            prop_assert_eq!(tracker.live(), 0);
            prop_assert!(tracker.max_live() <= concurrency);
            prop_assert!(!started_after_error.load(Ordering::SeqCst));
            let first_error = *first_error.lock().unwrap();
            match (result, first_error) {
                (Ok(values), None) => prop_assert_eq!(values, (0..plans.len()).collect::<Vec<_>>()),
                (Err(BatchError::Failed { index, source }), Some(first)) => {
                    prop_assert_eq!(index, first);
                    prop_assert_eq!(source, first);
                }
                (other, first) => prop_assert!(false, "unexpected {other:?} with first error {first:?}"),
            }

            // Give any leftover work every chance to run: none may start.
            let started = tracker.started();
            yield_times(50).await;
            prop_assert_eq!(tracker.started(), started);
            Ok::<(), TestCaseError>(())
        })?;
    }
}

/// A timed test item: it sleeps `latency_ms` of (paused) time, then
/// succeeds or fails.
#[derive(Clone, Copy, Debug)]
struct Timed {
    latency_ms: u64,
    fails: bool,
}

/// What a bounded batch must do with timed items.
struct Schedule {
    outcomes: Vec<ItemOutcome<usize, usize>>,
    /// When the last started item ends or is cut off.
    finished_ms: u64,
}

/// Works out a batch's [`Schedule`] by replaying it: the first
/// `concurrency` items start at 0, and each later item starts when the
/// earliest running one ends.
fn simulate(items: &[Timed], concurrency: usize, timeout_ms: u64, deadline_ms: u64) -> Schedule {
    let mut ends = std::collections::BinaryHeap::new();
    let mut outcomes = Vec::new();
    let mut finished_ms = 0;
    for (index, item) in items.iter().enumerate() {
        let start = if ends.len() < concurrency {
            0
        } else {
            ends.pop().map_or(0, |std::cmp::Reverse(end)| end)
        };
        let end = start + item.latency_ms.min(timeout_ms);
        ends.push(std::cmp::Reverse(end));
        if start < deadline_ms {
            finished_ms = finished_ms.max(end.min(deadline_ms));
        }
        outcomes.push(if start >= deadline_ms {
            ItemOutcome::NotStarted(NotStartedReason::DeadlineExceeded)
        } else if end > deadline_ms {
            ItemOutcome::DeadlineExceeded
        } else if item.latency_ms > timeout_ms {
            ItemOutcome::TimedOut {
                after: Duration::from_millis(timeout_ms),
            }
        } else if item.fails {
            ItemOutcome::Failed(index)
        } else {
            ItemOutcome::Succeeded(index)
        });
    }
    Schedule {
        outcomes,
        finished_ms,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random latencies and errors under an item timeout and a deadline:
    /// every outcome is the one the schedule dictates, nothing starts after
    /// the deadline, never more than N run, and the batch ends the moment
    /// its last item ends or is cut off (so the deadline wakes it rather
    /// than a later event). Latencies are multiples of
    /// 4 ms, the timeout is 2 mod 4 and the deadline odd, so no event ties
    /// with another and each outcome is exact.
    #[test]
    fn timeouts_and_deadline_cut_off_exactly_the_late_items(
        concurrency in 1usize..=6,
        items in prop::collection::vec(
            (0u64..40, prop::bool::weighted(0.2)).prop_map(|(quarter, fails)| Timed { latency_ms: quarter * 4, fails }),
            0..30,
        ),
        timeout_quarter in 0u64..40,
        deadline_half in 0u64..200,
    ) {
        let timeout_ms = timeout_quarter * 4 + 2;
        let deadline_ms = deadline_half * 2 + 1;
        runtime().block_on(async {
            let tracker = Arc::new(Tracker::default());
            let started_at = Instant::now();
            let deadline = started_at + Duration::from_millis(deadline_ms);
            let started_late = Arc::new(AtomicBool::new(false));
            let batch = options(concurrency)
                .item_timeout(Duration::from_millis(timeout_ms))
                .deadline_at(deadline);
            let outcomes: Vec<_> = ordered(items.clone(), batch, |index, item| {
                if Instant::now() >= deadline {
                    started_late.store(true, Ordering::SeqCst);
                }
                let live = tracker.enter();
                async move {
                    let _live = live;
                    tokio::time::sleep(Duration::from_millis(item.latency_ms)).await;
                    if item.fails { Err(index) } else { Ok(index) }
                }
            })
            .map(|(_, outcome)| outcome)
            .collect()
            .must_end()
            .await;

            let schedule = simulate(&items, concurrency, timeout_ms, deadline_ms);
            prop_assert_eq!(outcomes, schedule.outcomes);
            prop_assert_eq!(started_at.elapsed(), Duration::from_millis(schedule.finished_ms));
            prop_assert!(!started_late.load(Ordering::SeqCst));
            prop_assert!(tracker.max_live() <= concurrency);
            prop_assert_eq!(tracker.live(), 0);
            Ok::<(), TestCaseError>(())
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Exactly the items slower than the item timeout time out; the others
    /// keep their own result.
    #[test]
    fn item_timeout_cuts_off_exactly_the_slow_items(
        concurrency in 1usize..=4,
        plans in prop::collection::vec(
            prop_oneof![
                2 => Just(Plan::Succeed { yields: 0 }),
                1 => Just(Plan::Fail { yields: 0 }),
                1 => Just(Plan::Hang),
            ],
            0..12,
        ),
    ) {
        runtime().block_on(async {
            let tracker = Arc::new(Tracker::default());
            let batch = options(concurrency).item_timeout(Duration::from_millis(1));
            let outcomes: Vec<_> = ordered(plans.clone(), batch, |index, plan| {
                perform(index, plan, tracker.enter())
            })
            .collect()
            .must_end()
            .await;

            let want: Vec<_> = plans.iter().enumerate().map(|(i, &plan)| (i, expected(i, plan))).collect();
            prop_assert_eq!(outcomes, want);
            prop_assert_eq!(tracker.live(), 0);
            Ok::<(), TestCaseError>(())
        })?;
    }
}

#[tokio::test(start_paused = true)]
async fn item_timeout_counts_from_the_item_start() {
    // One at a time, 15 ms each, 25 ms each allowed: a timeout counted from
    // the batch start would cut off the second item at 25 ms.
    let batch = BatchOptions::sequential().item_timeout(Duration::from_millis(25));
    let values = fail_fast(0..2, batch, |index, _| async move {
        tokio::time::sleep(Duration::from_millis(15)).await;
        Ok::<_, ()>(index)
    })
    .must_end()
    .await;
    assert_eq!(values.unwrap(), [0, 1]);
}

#[tokio::test(start_paused = true)]
async fn an_item_done_when_its_timeout_fires_counts_as_done() {
    let batch = BatchOptions::sequential().item_timeout(Duration::from_millis(10));
    let values = fail_fast([10, 9], batch, |_, latency_ms| async move {
        tokio::time::sleep(Duration::from_millis(latency_ms)).await;
        Ok::<_, ()>(latency_ms)
    })
    .must_end()
    .await;
    assert_eq!(values.unwrap(), [10, 9]);
}

#[tokio::test(start_paused = true)]
async fn deadline_drops_running_items_and_starts_nothing_after() {
    let tracker = Arc::new(Tracker::default());
    let plans = [
        Plan::Succeed { yields: 0 },
        Plan::Hang,
        Plan::Hang,
        Plan::Succeed { yields: 0 },
        Plan::Succeed { yields: 0 },
    ];
    let started_at = Instant::now();
    let batch = options(2).deadline_after(Duration::from_millis(20));
    let outcomes: Vec<_> = ordered(plans, batch, |index, plan| {
        perform(index, plan, tracker.enter())
    })
    .map(|(_, outcome)| outcome)
    .collect()
    .must_end()
    .await;

    // Woken by the deadline itself, not by the guard an hour later.
    assert_eq!(started_at.elapsed(), Duration::from_millis(20));
    let not_started = ItemOutcome::NotStarted(NotStartedReason::DeadlineExceeded);
    assert_eq!(
        outcomes,
        [
            ItemOutcome::Succeeded(0),
            ItemOutcome::DeadlineExceeded,
            ItemOutcome::DeadlineExceeded,
            not_started.clone(),
            not_started,
        ]
    );
    assert_eq!(tracker.started(), 3);
    assert_eq!(tracker.live(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_passed_deadline_starts_nothing() {
    let tracker = Arc::new(Tracker::default());
    let batch = options(4).deadline_at(Instant::now() - Duration::from_millis(1));
    let outcomes: Vec<_> = ordered(0..3, batch, |index, _| {
        perform(index, Plan::Succeed { yields: 0 }, tracker.enter())
    })
    .collect()
    .must_end()
    .await;

    let not_started = ItemOutcome::NotStarted(NotStartedReason::DeadlineExceeded);
    assert_eq!(
        outcomes,
        [
            (0, not_started.clone()),
            (1, not_started.clone()),
            (2, not_started)
        ]
    );
    assert_eq!(tracker.started(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_earlier_of_two_deadlines_wins() {
    let batch = options(1)
        .deadline_after(Duration::from_secs(3600))
        .deadline_at(Instant::now() + Duration::from_millis(10));
    let result = fail_fast([Plan::Hang], batch, |index, plan| {
        perform(index, plan, Arc::new(Tracker::default()).enter())
    })
    .must_end()
    .await;
    assert!(matches!(
        result,
        Err(BatchError::DeadlineExceeded { index: 0 })
    ));
}

/// Items 0 and 1 wait on `gate`; the others finish at once.
fn gated(
    gate: &CancellationToken,
    tracker: &Arc<Tracker>,
    index: usize,
) -> impl Future<Output = Result<usize, usize>> + use<> {
    let gate = gate.clone();
    let live = tracker.enter();
    async move {
        let _live = live;
        if index < 2 {
            gate.cancelled().await;
        }
        Ok(index)
    }
}

#[tokio::test(start_paused = true)]
async fn stop_lets_running_items_finish_and_starts_no_more() {
    let (stop, gate) = (CancellationToken::new(), CancellationToken::new());
    let tracker = Arc::new(Tracker::default());
    let batch = options(2).stop_on(stop.clone());
    let mut outcomes = ordered(0..5, batch, |index, _| gated(&gate, &tracker, index));

    assert!(poll!(outcomes.next()).is_pending());
    assert_eq!(tracker.started(), 2);
    stop.cancel();
    gate.cancel();
    let rest: Vec<_> = outcomes
        .map(|(_, outcome)| outcome)
        .collect()
        .must_end()
        .await;

    let not_started = ItemOutcome::NotStarted(NotStartedReason::Stopped);
    assert_eq!(
        rest,
        [
            ItemOutcome::Succeeded(0),
            ItemOutcome::Succeeded(1),
            not_started.clone(),
            not_started.clone(),
            not_started,
        ]
    );
    assert_eq!(tracker.started(), 2);
}

#[tokio::test(start_paused = true)]
async fn stop_before_the_first_poll_starts_nothing() {
    let stop = CancellationToken::new();
    let tracker = Arc::new(Tracker::default());
    let outcomes = ordered(0..3, options(2).stop_on(stop.clone()), |index, _| {
        perform(index, Plan::Succeed { yields: 0 }, tracker.enter())
    });
    stop.cancel();
    let outcomes: Vec<_> = outcomes.collect().must_end().await;
    assert!(
        outcomes
            .iter()
            .all(|(_, outcome)| *outcome == ItemOutcome::NotStarted(NotStartedReason::Stopped))
    );
    assert_eq!(outcomes.len(), 3);
    assert_eq!(tracker.started(), 0);
}

#[tokio::test(start_paused = true)]
async fn abort_drops_running_items_at_once() {
    let (abort, gate) = (CancellationToken::new(), CancellationToken::new());
    let tracker = Arc::new(Tracker::default());
    let batch = options(2).abort_on(abort.clone());
    let mut outcomes = ordered(0..4, batch, |index, _| gated(&gate, &tracker, index));

    assert!(poll!(outcomes.next()).is_pending());
    assert_eq!(tracker.live(), 2);
    abort.cancel();
    // The very next poll reports it, with the running items already dropped.
    assert_eq!(
        poll!(outcomes.next()),
        Poll::Ready(Some((0, ItemOutcome::Aborted)))
    );
    assert_eq!(tracker.live(), 0);
    let rest: Vec<_> = outcomes.collect().must_end().await;
    let not_started = ItemOutcome::NotStarted(NotStartedReason::Aborted);
    assert_eq!(
        rest,
        [
            (1, ItemOutcome::Aborted),
            (2, not_started.clone()),
            (3, not_started)
        ]
    );
    assert_eq!(tracker.started(), 2);
}

#[tokio::test(start_paused = true)]
async fn abort_wakes_a_batch_whose_items_all_wait() {
    let abort = CancellationToken::new();
    let tracker = Arc::new(Tracker::default());
    let batch = options(2).abort_on(abort.clone());
    let outcomes = ordered([Plan::Hang, Plan::Hang], batch, move |index, plan| {
        perform(index, plan, tracker.enter())
    });
    // Spawned, so that only the batch's own wake-ups can make it progress
    // (a timeout around it would poll it again when it fires).
    let batch = tokio::spawn(outcomes.collect::<Vec<_>>());
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        abort.cancel();
    });
    let outcomes = batch
        .must_end()
        .await
        .expect("the batch task must not panic");
    assert_eq!(
        outcomes,
        [(0, ItemOutcome::Aborted), (1, ItemOutcome::Aborted)]
    );
    canceller.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn abort_after_stop_drops_running_items_and_keeps_the_stop_reason() {
    let (stop, abort, gate) = (
        CancellationToken::new(),
        CancellationToken::new(),
        CancellationToken::new(),
    );
    let tracker = Arc::new(Tracker::default());
    let batch = options(2).stop_on(stop.clone()).abort_on(abort.clone());
    let mut outcomes = ordered(0..3, batch, |index, _| gated(&gate, &tracker, index));

    assert!(poll!(outcomes.next()).is_pending());
    stop.cancel();
    assert!(poll!(outcomes.next()).is_pending());
    abort.cancel();
    let outcomes: Vec<_> = outcomes.collect().must_end().await;
    assert_eq!(
        outcomes,
        [
            (0, ItemOutcome::Aborted),
            (1, ItemOutcome::Aborted),
            (2, ItemOutcome::NotStarted(NotStartedReason::Stopped)),
        ]
    );
    assert_eq!(tracker.live(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_finished_prefix_is_yielded_before_a_later_slow_item_ends() {
    let gate = CancellationToken::new();
    let tracker = Arc::new(Tracker::default());
    // Item 1 waits on the gate; items 0 and 2 finish at once.
    let mut outcomes = ordered(0..3, options(3), |index, _| {
        let gate = gate.clone();
        let live = tracker.enter();
        async move {
            let _live = live;
            if index == 1 {
                gate.cancelled().await;
            }
            Ok::<_, ()>(index)
        }
    });

    assert_eq!(
        poll!(outcomes.next()),
        Poll::Ready(Some((0, ItemOutcome::Succeeded(0))))
    );
    // Item 2 is done but waits for item 1, which is still running.
    assert!(poll!(outcomes.next()).is_pending());
    assert_eq!(tracker.live(), 1);
    gate.cancel();
    assert_eq!(outcomes.next().await, Some((1, ItemOutcome::Succeeded(1))));
    assert_eq!(outcomes.next().await, Some((2, ItemOutcome::Succeeded(2))));
    assert_eq!(outcomes.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn a_slow_item_holds_only_its_own_slot() {
    let gate = CancellationToken::new();
    let tracker = Arc::new(Tracker::default());
    let mut outcomes = ordered(0..6, options(2), |index, _| {
        let gate = gate.clone();
        let live = tracker.enter();
        async move {
            let _live = live;
            if index == 0 {
                gate.cancelled().await;
            }
            Ok::<_, ()>(index)
        }
    });

    // With `buffered(2)` only item 1 would run beside the slow item 0.
    assert!(poll!(outcomes.next()).is_pending());
    assert_eq!(tracker.started(), 6);
    assert_eq!(tracker.live(), 1);
    gate.cancel();
    let indices: Vec<_> = outcomes.map(|(index, _)| index).collect().must_end().await;
    assert_eq!(indices, [0, 1, 2, 3, 4, 5]);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_does_not_wait_for_a_hanging_sibling() {
    let tracker = Arc::new(Tracker::default());
    let plans = [
        Plan::Hang,
        Plan::Fail { yields: 3 },
        Plan::Succeed { yields: 0 },
    ];
    let result = fail_fast(plans, options(2), |index, plan| {
        perform(index, plan, tracker.enter())
    })
    .must_end()
    .await;
    assert!(matches!(
        result,
        Err(BatchError::Failed {
            index: 1,
            source: 1
        })
    ));
    assert_eq!(tracker.live(), 0);
    assert_eq!(tracker.started(), 2);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_treats_a_timeout_as_the_failure() {
    let tracker = Arc::new(Tracker::default());
    let batch = BatchOptions::sequential().item_timeout(Duration::from_millis(1));
    let result = fail_fast(
        [Plan::Hang, Plan::Succeed { yields: 0 }],
        batch,
        |index, plan| perform(index, plan, tracker.enter()),
    )
    .must_end()
    .await;
    let error = result.unwrap_err();
    assert_eq!(error.index(), 0);
    assert_eq!(error.to_string(), "batch item 0 timed out after 1ms");
    assert_eq!(tracker.started(), 1);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_after_a_stop_names_the_first_item_left_out() {
    let (stop, gate) = (CancellationToken::new(), CancellationToken::new());
    let tracker = Arc::new(Tracker::default());
    let batch = options(2).stop_on(stop.clone());
    let run = fail_fast(0..4, batch, |index, _| gated(&gate, &tracker, index)).must_end();
    let (result, ()) = tokio::join!(run, async {
        tokio::task::yield_now().await;
        stop.cancel();
        gate.cancel();
    });
    let error = result.unwrap_err();
    assert!(matches!(
        error,
        BatchError::NotStarted {
            index: 2,
            reason: NotStartedReason::Stopped
        }
    ));
    assert_eq!(
        error.to_string(),
        "batch item 2 was not started: the batch was stopped"
    );
    assert_eq!(tracker.started(), 2);
}

#[test]
fn batches_of_send_items_can_be_spawned() {
    fn assert_send<T: Send>(_: &T) {}
    let batch = ordered(
        vec![1u8],
        BatchOptions::sequential(),
        |_, item| async move { Ok::<_, ()>(item) },
    );
    assert_send(&batch);
    let run = fail_fast(
        vec![1u8],
        BatchOptions::sequential(),
        |_, item| async move { Ok::<_, ()>(item) },
    );
    assert_send(&run);
}
