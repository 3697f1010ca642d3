//! Two futures of one task polled together, in rounds.
//!
//! A connection's sides hand work to each other through queues: the reader
//! wakes the flow side with a message, the flow side wakes the writer with
//! the reply. Under `tokio::join!` every such hand-over is a wake of the
//! task that is being polled, so the runtime puts the task back in its
//! queue and polls it again, all branches anew, before the reply reaches
//! the socket: two or three task polls per message.
//!
//! [`join`] polls its futures with wakers of its own. A wake of the
//! second (the flow side: a message for it) that comes while it polls them
//! is noted, not passed on, and answered by another round in the same
//! poll. A wake of the first (the socket side: a reply to write) that comes
//! while it polls waits for the task's next poll: the task goes back in the
//! runtime's queue, so the replies of the connections whose executions ran
//! one after the other are written one after the other too, and a client
//! woken by one finds the next waiting (on loopback the sender pays for
//! waking the client's CPU: written at once, each reply woke it anew, which
//! cost fresh instances a third of their CPU per message). A wake that
//! comes between polls wakes the task. So a message is read and handled in
//! one poll of the task and answered in the next. The rounds per poll are
//! bounded: a connection that always has more work gives its worker back
//! to the runtime after [`MAX_ROUNDS`], like any task whose budget is
//! spent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::future::{MaybeDone, maybe_done};
use futures_util::task::AtomicWaker;

/// Rounds in one poll of the task, at most.
const MAX_ROUNDS: usize = 4;

/// Not being polled: a wake goes to the task.
const IDLE: u8 = 0;
/// Being polled: a wake asks for another round.
const POLLING: u8 = 1;
/// Being polled, and woken since the round began.
const WOKEN: u8 = 2;

/// Poll `first` and then `second` until both are done, in rounds (see the
/// module's comment). Returns both outputs.
///
/// A future of its own rather than an `async fn`: that would keep room for
/// `first` and `second` twice (as its arguments and as the locals they are
/// moved into), and the two are a connection's whole state.
pub(super) fn join<A: Future, B: Future>(first: A, second: B) -> Join<A, B> {
    let rounds = Arc::new(Rounds {
        state: AtomicU8::new(IDLE),
        task: AtomicWaker::new(),
        first_pending: AtomicBool::new(false),
    });
    Join {
        first: maybe_done(first),
        second: maybe_done(second),
        waker: Waker::from(Arc::clone(&rounds)),
        first_waker: Waker::from(Arc::new(FirstWake(Arc::clone(&rounds)))),
        rounds,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`join`].
    pub(super) struct Join<A: Future, B: Future> {
        #[pin]
        first: MaybeDone<A>,
        #[pin]
        second: MaybeDone<B>,
        rounds: Arc<Rounds>,
        // `rounds` as a waker, lent to `second`.
        waker: Waker,
        // The waker lent to `first`: its wakes during a poll wait for the
        // next poll of the task.
        first_waker: Waker,
    }
}

impl<A: Future, B: Future> Future for Join<A, B> {
    type Output = (A::Output, B::Output);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let rounds = &*this.rounds;
        rounds.task.register(cx.waker());
        rounds.state.store(POLLING, Ordering::SeqCst);
        let mut for_first = Context::from_waker(this.first_waker);
        let mut for_second = Context::from_waker(this.waker);
        rounds.first_pending.store(false, Ordering::SeqCst);
        let first_done = this.first.as_mut().poll(&mut for_first).is_ready();
        for _ in 0..MAX_ROUNDS {
            let second_done = this.second.as_mut().poll(&mut for_second).is_ready();
            if first_done && second_done {
                rounds.state.store(IDLE, Ordering::SeqCst);
                let first = this.first.as_mut().take_output().expect("done");
                let second = this.second.as_mut().take_output().expect("done");
                return Poll::Ready((first, second));
            }
            // Woken during the round: another round. Not woken: wait, unless
            // a wake comes in between, which makes it another round too.
            if rounds
                .state
                .compare_exchange(POLLING, IDLE, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                rounds.wake_task_if_first_pending(cx);
                return Poll::Pending;
            }
            rounds.state.store(POLLING, Ordering::SeqCst);
        }
        // More work than a poll should do: back in the runtime's queue.
        rounds.state.store(IDLE, Ordering::SeqCst);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The state of one [`join`], and the waker it lends `second`: a wake
/// during a poll is another round.
struct Rounds {
    state: AtomicU8,
    /// The task's waker, registered at each poll.
    task: AtomicWaker,
    /// `first` was woken during the poll.
    first_pending: AtomicBool,
}

impl Rounds {
    fn wake_task_if_first_pending(&self, cx: &Context<'_>) {
        if self.first_pending.swap(false, Ordering::SeqCst) {
            cx.waker().wake_by_ref();
        }
    }
}

/// The waker [`join`] lends `first`: a wake during a poll waits for the
/// task's next poll.
struct FirstWake(Arc<Rounds>);

impl Wake for FirstWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let rounds = &self.0;
        rounds.first_pending.store(true, Ordering::SeqCst);
        if rounds.state.load(Ordering::SeqCst) == IDLE
            && rounds.first_pending.swap(false, Ordering::SeqCst)
        {
            rounds.task.wake();
        }
    }
}

impl Wake for Rounds {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.state.load(Ordering::SeqCst);
        loop {
            match state {
                POLLING => match self.state.compare_exchange(
                    POLLING,
                    WOKEN,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                ) {
                    Ok(_) => return,
                    Err(now) => state = now,
                },
                WOKEN => return,
                _ => {
                    self.task.wake();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// A future that counts how often the task that polls it is polled.
    fn counting<F: Future>(polls: &AtomicUsize, inner: F) -> impl Future<Output = F::Output> {
        let mut inner = Box::pin(inner);
        poll_fn(move |cx| {
            polls.fetch_add(1, Ordering::SeqCst);
            inner.as_mut().poll(cx)
        })
    }

    #[tokio::test]
    async fn what_first_hands_to_second_is_taken_in_the_same_poll_and_the_answer_in_the_next() {
        let (to_second, mut from_first) = tokio::sync::mpsc::unbounded_channel();
        let (to_first, mut from_second) = tokio::sync::mpsc::unbounded_channel();
        let polls = AtomicUsize::new(0);
        let first = async {
            let mut answers = 0;
            for i in 0..100 {
                to_second.send(i).unwrap();
                assert_eq!(from_second.recv().await, Some(i * 2));
                answers += 1;
            }
            drop(to_second);
            answers
        };
        let second = async {
            while let Some(i) = from_first.recv().await {
                to_first.send(i * 2).unwrap();
            }
        };
        let joined = counting(&polls, join(first, second));
        let (answers, ()) = tokio::time::timeout(Duration::from_secs(60), joined)
            .await
            .expect("no wake is lost");
        assert_eq!(answers, 100);
        // One poll of the task per exchange: the message is taken by
        // `second` in the poll that sent it, the answer by `first` in the
        // next (`tokio::join!` takes two polls per exchange).
        let polls = polls.load(Ordering::SeqCst);
        assert!(
            (100..=102).contains(&polls),
            "{polls} polls for 100 exchanges"
        );
    }

    #[tokio::test]
    async fn a_wake_from_elsewhere_between_polls_wakes_the_task() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sender = tokio::spawn(async move {
            for i in 0..50 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                tx.send(i).unwrap();
            }
        });
        let receiver = async {
            let mut got = Vec::new();
            while let Some(i) = rx.recv().await {
                got.push(i);
            }
            got
        };
        let (got, ()) = join(receiver, async {}).await;
        assert_eq!(got, (0..50).collect::<Vec<_>>());
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn work_that_never_ends_still_lets_other_tasks_run() {
        let other = tokio::spawn(async { 7 });
        let spin = async {
            loop {
                if other.is_finished() {
                    return other.await.unwrap();
                }
                tokio::task::yield_now().await;
            }
        };
        let (seven, ()) = join(spin, async {}).await;
        assert_eq!(seven, 7);
    }
}
