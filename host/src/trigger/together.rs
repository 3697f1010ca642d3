//! Two futures of one task polled together, in rounds.
//!
//! A connection's sides hand work to each other through queues: the reader
//! wakes the flow side with a message, the flow side wakes the writer with
//! the reply. Under `tokio::join!` every such hand-over is a wake of the
//! task that is being polled, so the runtime puts the task back in its
//! queue and polls it again, all branches anew, before the reply reaches
//! the socket: two or three task polls per message.
//!
//! [`join`] polls its futures with a waker of its own. A wake that comes
//! while it polls them is noted, not passed on, and answered by another
//! round in the same poll; a wake that comes between polls wakes the task.
//! So a message is read, handled and answered in one poll of the task. The
//! rounds per poll are bounded: a connection that always has more work
//! gives its worker back to the runtime after [`MAX_ROUNDS`], like any
//! task whose budget is spent.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::future::maybe_done;
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
pub(super) async fn join<A: Future, B: Future>(first: A, second: B) -> (A::Output, B::Output) {
    let rounds = Arc::new(Rounds {
        state: AtomicU8::new(IDLE),
        task: AtomicWaker::new(),
    });
    let waker = Waker::from(Arc::clone(&rounds));
    let mut first = pin!(maybe_done(first));
    let mut second = pin!(maybe_done(second));
    poll_fn(|cx| {
        rounds.task.register(cx.waker());
        rounds.state.store(POLLING, Ordering::SeqCst);
        let mut inner = Context::from_waker(&waker);
        for _ in 0..MAX_ROUNDS {
            let first_done = first.as_mut().poll(&mut inner).is_ready();
            let second_done = second.as_mut().poll(&mut inner).is_ready();
            if first_done && second_done {
                rounds.state.store(IDLE, Ordering::SeqCst);
                let first = first.as_mut().take_output().expect("done");
                let second = second.as_mut().take_output().expect("done");
                return Poll::Ready((first, second));
            }
            // Woken during the round: another round. Not woken: wait, unless
            // a wake comes in between, which makes it another round too.
            if rounds
                .state
                .compare_exchange(POLLING, IDLE, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return Poll::Pending;
            }
            rounds.state.store(POLLING, Ordering::SeqCst);
        }
        // More work than a poll should do: back in the runtime's queue.
        rounds.state.store(IDLE, Ordering::SeqCst);
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// The waker [`join`] lends its futures.
struct Rounds {
    state: AtomicU8,
    /// The task's waker, registered at each poll.
    task: AtomicWaker,
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
    async fn a_hand_over_between_the_two_is_done_in_the_same_poll_of_the_task() {
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
        let (answers, ()) = counting(&polls, join(first, second)).await;
        assert_eq!(answers, 100);
        // Each hand-over is another round, not another poll of the task
        // (a poll takes up to `MAX_ROUNDS` of them).
        let polls = polls.load(Ordering::SeqCst);
        assert!(polls <= 50, "{polls} polls for 100 exchanges");
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
