//! A one-way flag that can be awaited: the states of a connection
//! (closing, aborted, gone).
//!
//! A connection's task checks these states on every message, several
//! times: [`Flag::is_raised`] is one atomic load, and awaiting a raised flag
//! registers nothing. `tokio_util`'s `CancellationToken` does the same job
//! for trees of tokens, with a mutex taken on every check.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// Lowered until [`Flag::raise`], then raised for good.
#[derive(Debug, Default)]
pub(crate) struct Flag {
    raised: AtomicBool,
    notify: Notify,
}

impl Flag {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Raise the flag and wake everyone waiting for it. Returns whether this
    /// call raised it.
    pub(crate) fn raise(&self) -> bool {
        let first = !self.raised.swap(true, Ordering::AcqRel);
        if first {
            self.notify.notify_waiters();
        }
        first
    }

    pub(crate) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Completes once the flag is raised: at once if it is. A future kept
    /// across polls (a loop's, or a `select!`'s that is polled on every
    /// wake-up of its task) registers once and then costs an atomic load
    /// per poll while its task's waker stays the same.
    pub(crate) fn raised(&self) -> Raised<'_> {
        Raised {
            flag: self,
            notified: self.notify.notified(),
            registered: None,
        }
    }
}

pin_project! {
    /// The future of [`Flag::raised`].
    pub(crate) struct Raised<'a> {
        flag: &'a Flag,
        #[pin]
        notified: Notified<'a>,
        // The waker the registration in `notified` wakes.
        registered: Option<Waker>,
    }
}

impl Future for Raised<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if this.flag.is_raised() {
            return Poll::Ready(());
        }
        if this
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        // Registered before the check below: a raise between the check and
        // the wait is not missed (`raise` sets the flag, then wakes).
        this.notified.as_mut().enable();
        if this.flag.is_raised() {
            return Poll::Ready(());
        }
        match this.notified.poll(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => {
                *this.registered = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_raised_flag_is_ready_at_once() {
        let flag = Flag::new();
        assert!(!flag.is_raised());
        assert!(flag.raise());
        assert!(!flag.raise(), "only the first raise counts");
        assert!(flag.is_raised());
        flag.raised().await;
    }

    #[tokio::test]
    async fn waiters_wake_when_the_flag_is_raised() {
        let flag = Arc::new(Flag::new());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let flag = Arc::clone(&flag);
                tokio::spawn(async move { flag.raised().await })
            })
            .collect();
        tokio::task::yield_now().await;
        for waiter in &waiters {
            assert!(!waiter.is_finished());
        }
        flag.raise();
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("woken")
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_future_kept_across_polls_sees_a_later_raise() {
        let flag = Flag::new();
        let mut raised = std::pin::pin!(flag.raised());
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(raised.as_mut().poll(&mut cx).is_pending());
        assert!(raised.as_mut().poll(&mut cx).is_pending());
        flag.raise();
        assert!(raised.as_mut().poll(&mut cx).is_ready());
    }
}
