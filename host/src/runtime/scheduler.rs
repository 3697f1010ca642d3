//! A host-wide fair scheduler for guest work.
//!
//! Executions run on the async runtime's worker threads, next to the
//! network side (the frame pumps, the handshakes). Left to the runtime, a
//! guest that yields at every epoch tick goes to the back of one queue
//! shared by every execution of every app: an app with one execution to run
//! waits behind every execution of a noisy neighbour, one tick each.
//!
//! So running guest code takes a *turn*, and there are as many turns as
//! worker threads. An execution without a turn waits in its app's *lane*.
//! A turn is held for one poll; when the guest yields at an epoch tick
//! ([`yield_turn`]), the execution goes to the back of its lane instead of
//! the runtime's queue, and the turn passes to the next lane with waiting
//! executions, round-robin, and to the oldest execution waiting there. An
//! execution whose poll ends because it waits for something (its client, a
//! timer) or is done gives its turn back the same way. A poll lasts at most
//! one epoch tick, so an app with an execution to run waits for about one
//! tick per app with runnable work, divided by the number of turns, however
//! many executions the other apps have runnable.
//!
//! A worker must also look at the network between two guest slices: tokio
//! polls its I/O driver only when a worker runs out of ready tasks (or every
//! few dozen polls), and a worker that went from one slice straight to the
//! next would leave sockets unread for hundreds of milliseconds. So a turn
//! given to a *long runner* (an execution that ran through whole ticks) is
//! handed over the way `tokio::task::yield_now` wakes its caller: once the
//! worker has run the network work that is ready and polled the driver.
//! Other executions — a handler just started, or one a tick interrupted
//! once — are woken at once, so short work never waits for that.
//!
//! The epoch ticks faster while executions wait for a turn, and once at
//! the moment they start waiting (the ticker is unparked), so the slices
//! running then end at once: a lone waiter does not wait out a whole slice.
//!
//! Why turns on the shared workers rather than guest work on threads of its
//! own: an execution is polled by its connection's task, so a message and
//! its answer cross no thread (the hot path of data mode); and a turn is
//! held only during a poll, so executions waiting for their clients hold
//! nothing here. While no more executions want to run than there are
//! workers, taking a turn is one uncontended lock. The price: while every
//! worker runs a guest slice, network work waits up to one tick.

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::thread::Thread;

/// The turns of one host, shared by every app's lane.
#[derive(Debug, Clone)]
pub(crate) struct Scheduler {
    state: Arc<Mutex<State>>,
    /// Woken when executions start waiting for a turn (the epoch ticker).
    on_contention: Arc<OnceLock<Thread>>,
}

/// One app's place in the [`Scheduler`].
#[derive(Debug, Clone)]
pub(crate) struct Lane {
    scheduler: Scheduler,
    index: usize,
}

#[derive(Debug)]
struct State {
    /// Turns nobody holds. Only while no execution waits.
    free: usize,
    /// Per lane, the executions waiting for a turn, oldest first (entries
    /// of executions dropped while waiting are skipped when reached).
    lanes: Vec<VecDeque<Arc<Waiter>>>,
    /// The lanes with waiting executions, in the order they are served.
    ready: VecDeque<usize>,
    /// Whether executions waited for a turn when last looked at.
    contended: bool,
}

/// An execution's standing with the scheduler. Its lock is only taken
/// while holding the scheduler's.
#[derive(Debug, Default)]
struct Waiter {
    status: Mutex<Status>,
}

#[derive(Debug, Default)]
enum Status {
    /// Neither holding nor waiting for a turn.
    #[default]
    Idle,
    /// In its lane's queue; woken through `waker` when given a turn.
    /// `long`: a long runner (see [`Lane::run`]).
    Waiting { waker: Waker, long: bool },
    /// Given a turn, not yet polled.
    Granted,
    /// Being polled, holding a turn.
    Running,
    /// Dropped while waiting: skipped when its turn comes.
    Gone,
}

impl Waiter {
    fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().expect("not poisoned")
    }
}

impl Scheduler {
    /// A scheduler that lets `turns` polls of guest work run at once.
    pub(crate) fn new(turns: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                free: turns.max(1),
                lanes: Vec::new(),
                ready: VecDeque::new(),
                contended: false,
            })),
            on_contention: Arc::default(),
        }
    }

    /// Whether executions are waiting for a turn.
    pub(crate) fn contended(&self) -> bool {
        !self.lock().ready.is_empty()
    }

    /// Unpark `thread` whenever executions start waiting for a turn.
    pub(crate) fn unpark_on_contention(&self, thread: Thread) {
        let _ = self.on_contention.set(thread);
    }

    /// Unlock `state` after a change, then hand over `grant` and, if
    /// executions have just started waiting, tell the ticker.
    fn after(&self, mut state: MutexGuard<'_, State>, grant: Option<Grant>) {
        let contended = !state.ready.is_empty();
        let began = contended && !state.contended;
        state.contended = contended;
        drop(state);
        if let Some(grant) = grant {
            grant.deliver();
        }
        if began && let Some(ticker) = self.on_contention.get() {
            ticker.unpark();
        }
    }

    /// A new lane, for one app.
    pub(crate) fn lane(&self) -> Lane {
        let mut state = self.lock();
        state.lanes.push(VecDeque::new());
        Lane {
            scheduler: self.clone(),
            index: state.lanes.len() - 1,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }
}

impl State {
    /// Put `waiter` at the back of `lane`.
    fn enqueue(&mut self, lane: usize, waiter: Arc<Waiter>) {
        let queue = &mut self.lanes[lane];
        queue.push_back(waiter);
        if queue.len() == 1 {
            self.ready.push_back(lane);
        }
    }

    /// Give a turn that was just released to the next waiting execution,
    /// or keep it free. Returns the grant to deliver (after unlocking).
    fn pass_on(&mut self) -> Option<Grant> {
        while let Some(lane) = self.ready.pop_front() {
            let queue = &mut self.lanes[lane];
            let waiter = queue.pop_front().expect("a ready lane has waiters");
            if !queue.is_empty() {
                self.ready.push_back(lane);
            }
            let mut status = waiter.status();
            match std::mem::replace(&mut *status, Status::Granted) {
                Status::Waiting { waker, long } => return Some(Grant { waker, long }),
                other => *status = other,
            }
        }
        self.free += 1;
        None
    }
}

/// A turn given to a waiting execution.
struct Grant {
    waker: Waker,
    long: bool,
}

impl Grant {
    /// Wake the execution. A long runner is woken only once the worker has
    /// served the network, as a task calling `tokio::task::yield_now` is;
    /// others (short work, likely) at once.
    fn deliver(self) {
        if self.long {
            wake_after_io(&self.waker);
        } else {
            self.waker.wake();
        }
    }
}

#[cfg(test)]
impl Lane {
    /// A lane of a scheduler of its own, with one turn: for tests of code
    /// that takes a lane and runs little in it.
    pub(crate) fn of_its_own() -> Self {
        Scheduler::new(1).lane()
    }
}

impl Lane {
    /// Run `work`, polling it only while holding a turn. Guest code in
    /// `work` yields at ticks with [`yield_turn`].
    ///
    /// An execution whose polls end at a tick twice in a row is a *long
    /// runner*: it ran through a whole tick. A message handler interrupted
    /// by a tick once is not.
    pub(crate) async fn run<F: Future>(&self, work: F) -> F::Output {
        let mut work = pin!(work);
        let turn = Turn {
            lane: self,
            waiter: Arc::default(),
        };
        let mut ticks_in_a_row = 0u32;
        std::future::poll_fn(|cx| {
            if !turn.take(cx) {
                return Poll::Pending;
            }
            let (polled, yielded) = polling(|| work.as_mut().poll(cx));
            if polled.is_pending() && yielded {
                ticks_in_a_row = ticks_in_a_row.saturating_add(1);
                turn.wait_again(cx, ticks_in_a_row >= 2);
            } else {
                ticks_in_a_row = 0;
                turn.release();
            }
            polled
        })
        .await
    }
}

thread_local! {
    /// While `Lane::run` polls its work on this thread: whether the guest
    /// yielded its turn. `None` outside such a poll.
    static YIELDED: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Poll with [`YIELDED`] set up; returns whether the guest yielded.
fn polling<T>(poll: impl FnOnce() -> T) -> (T, bool) {
    let outer = YIELDED.replace(Some(false));
    let result = poll();
    let yielded = YIELDED.replace(outer) == Some(true);
    (result, yielded)
}

/// What a guest awaits at an epoch tick: inside `Lane::run`, it gives the
/// turn back and the execution waits in its lane until its next turn wakes
/// it. Anywhere else it is a plain yield.
pub(crate) fn yield_turn() -> impl Future<Output = ()> + Send + 'static {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        if YIELDED.get().is_some() {
            YIELDED.set(Some(true));
        } else {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
}

/// The turn-taking of one `Lane::run`; leaves nothing behind when dropped.
struct Turn<'a> {
    lane: &'a Lane,
    waiter: Arc<Waiter>,
}

impl Turn<'_> {
    /// Take a turn if one is free or was given to us; otherwise wait in the
    /// lane (and be woken through `cx` when given one).
    fn take(&self, cx: &Context<'_>) -> bool {
        let mut state = self.lane.scheduler.lock();
        let mut status = self.waiter.status();
        match &mut *status {
            Status::Granted => {
                *status = Status::Running;
                true
            }
            Status::Waiting { waker, .. } => {
                waker.clone_from(cx.waker());
                false
            }
            Status::Idle if state.free > 0 => {
                state.free -= 1;
                *status = Status::Running;
                true
            }
            Status::Idle => {
                *status = Status::Waiting {
                    waker: cx.waker().clone(),
                    long: false,
                };
                drop(status);
                state.enqueue(self.lane.index, Arc::clone(&self.waiter));
                self.lane.scheduler.after(state, None);
                false
            }
            Status::Running | Status::Gone => unreachable!("taking a turn twice"),
        }
    }

    /// Give the turn back after a poll.
    fn release(&self) {
        let mut state = self.lane.scheduler.lock();
        *self.waiter.status() = Status::Idle;
        let grant = state.pass_on();
        self.lane.scheduler.after(state, grant);
    }

    /// Give the turn back after a poll in which the guest yielded: wait at
    /// the back of the lane, and be woken through `cx` when the next turn
    /// comes (at once if nothing else waits). `long`: a long runner.
    fn wait_again(&self, cx: &Context<'_>, long: bool) {
        let mut state = self.lane.scheduler.lock();
        *self.waiter.status() = Status::Waiting {
            waker: cx.waker().clone(),
            long,
        };
        state.enqueue(self.lane.index, Arc::clone(&self.waiter));
        let grant = state.pass_on();
        self.lane.scheduler.after(state, grant);
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut state = self.lane.scheduler.lock();
        let mut status = self.waiter.status();
        let grant = match std::mem::replace(&mut *status, Status::Gone) {
            Status::Idle | Status::Gone => None,
            // Skipped when its turn comes.
            Status::Waiting { .. } => None,
            // Given a turn it will not use, or holding one (a poll that
            // panicked): pass it on.
            Status::Granted | Status::Running => {
                drop(status);
                state.pass_on()
            }
        };
        self.lane.scheduler.after(state, grant);
    }
}

/// Wake `waker` once the current worker has run the tasks that are ready
/// and polled the I/O driver, as `tokio::task::yield_now` does for the task
/// that calls it: its first poll hands the waker of the context it is
/// polled in to the worker (outside a runtime it wakes it at once).
fn wake_after_io(waker: &Waker) {
    let mut yielding = pin!(tokio::task::yield_now());
    let _pending = yielding.as_mut().poll(&mut Context::from_waker(waker));
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count::default());
        (Arc::clone(&count), Waker::from(count))
    }

    fn turn(lane: &Lane) -> Turn<'_> {
        Turn {
            lane,
            waiter: Arc::default(),
        }
    }

    #[test]
    fn turns_go_round_the_lanes_with_waiting_executions() {
        let scheduler = Scheduler::new(1);
        let noisy = scheduler.lane();
        let quiet = scheduler.lane();
        let (_, running_waker) = waker();
        let running = turn(&noisy);
        assert!(running.take(&Context::from_waker(&running_waker)));

        // Three of the noisy app's executions queue, then one of the quiet
        // app's.
        let noisy_turns: Vec<_> = (0..3).map(|_| turn(&noisy)).collect();
        let noisy_wakers: Vec<_> = (0..3).map(|_| waker()).collect();
        for (turn, (_, waker)) in noisy_turns.iter().zip(&noisy_wakers) {
            assert!(!turn.take(&Context::from_waker(waker)));
        }
        let quiet_turn = turn(&quiet);
        let (quiet_woken, quiet_waker) = waker();
        assert!(!quiet_turn.take(&Context::from_waker(&quiet_waker)));

        // The first release serves the noisy lane (it was ready first), the
        // second the quiet one, ahead of the noisy app's other executions.
        running.release();
        assert_eq!(noisy_wakers[0].0.0.load(Ordering::Relaxed), 1);
        assert!(noisy_turns[0].take(&Context::from_waker(&noisy_wakers[0].1)));
        noisy_turns[0].release();
        assert_eq!(quiet_woken.0.load(Ordering::Relaxed), 1);
        assert_eq!(noisy_wakers[1].0.0.load(Ordering::Relaxed), 0);
        assert!(quiet_turn.take(&Context::from_waker(&quiet_waker)));
        quiet_turn.release();
        assert_eq!(noisy_wakers[1].0.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_dropped_execution_passes_its_turn_on_or_leaves_its_place() {
        let scheduler = Scheduler::new(1);
        let lane = scheduler.lane();
        let (_, first_waker) = waker();
        let first = turn(&lane);
        assert!(first.take(&Context::from_waker(&first_waker)));

        let gone = turn(&lane);
        let (gone_woken, gone_waker) = waker();
        assert!(!gone.take(&Context::from_waker(&gone_waker)));
        let granted = turn(&lane);
        let (granted_woken, granted_waker) = waker();
        assert!(!granted.take(&Context::from_waker(&granted_waker)));
        let last = turn(&lane);
        let (last_woken, last_waker) = waker();
        assert!(!last.take(&Context::from_waker(&last_waker)));

        // Dropped while waiting: skipped.
        drop(gone);
        first.release();
        assert_eq!(gone_woken.0.load(Ordering::Relaxed), 0);
        assert_eq!(granted_woken.0.load(Ordering::Relaxed), 1);
        // Dropped after being given the turn: the turn goes on.
        drop(granted);
        assert_eq!(last_woken.0.load(Ordering::Relaxed), 1);
        assert!(last.take(&Context::from_waker(&last_waker)));
        last.release();
        drop(first);
        drop(last);
        assert_eq!(scheduler.lock().free, 1);
        assert!(scheduler.lock().ready.is_empty());
    }

    #[tokio::test]
    async fn executions_that_yield_take_turns_with_other_apps() {
        let scheduler = Scheduler::new(1);
        let noisy = scheduler.lane();
        let quiet = scheduler.lane();
        let slices = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Three executions of one app, then one of another, each running
        // four slices with a yield after each.
        for (lane, name) in [
            (&noisy, "noisy"),
            (&noisy, "noisy"),
            (&noisy, "noisy"),
            (&quiet, "quiet"),
        ] {
            let lane = lane.clone();
            let slices = Arc::clone(&slices);
            tasks.push(tokio::spawn(async move {
                lane.run(async {
                    for _ in 0..4 {
                        slices.lock().unwrap().push(name);
                        yield_turn().await;
                    }
                })
                .await;
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let slices = slices.lock().unwrap().clone();
        assert_eq!(slices.len(), 16);
        // The quiet app's execution waits behind the slices the other app
        // was owed when it arrived (its lane was ready first), then every
        // other slice is its own.
        let first = slices.iter().position(|name| *name == "quiet").unwrap();
        assert!(first <= 3, "{slices:?}");
        for (i, name) in slices[first..first + 7].iter().enumerate() {
            let expected = if i % 2 == 0 { "quiet" } else { "noisy" };
            assert_eq!(*name, expected, "{slices:?}");
        }
        assert_eq!(scheduler.lock().free, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_as_many_polls_as_turns_run_at_once() {
        let scheduler = Scheduler::new(2);
        let lane = scheduler.lane();
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let lane = lane.clone();
            let running = Arc::clone(&running);
            let most = Arc::clone(&most);
            tasks.push(tokio::spawn(async move {
                lane.run(async {
                    for _ in 0..20 {
                        std::future::poll_fn(|cx| {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::yield_now();
                            running.fetch_sub(1, Ordering::SeqCst);
                            cx.waker().wake_by_ref();
                            Poll::Ready(())
                        })
                        .await;
                        tokio::task::yield_now().await;
                    }
                })
                .await;
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 2);
        assert_eq!(scheduler.lock().free, 2);
    }
}
