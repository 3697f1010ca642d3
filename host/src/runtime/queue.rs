//! A bounded queue from one sender to one receiver, small while empty.
//!
//! A connection has two of them (messages read, messages to write), and
//! most connections idle with both empty. tokio's `mpsc` channel takes
//! about 2.8 KiB before the first message (cache-padded fields and a first
//! block of 32 slots); this one takes a few hundred bytes, and its buffer
//! grows with the messages actually queued.
//!
//! The API is the subset of `tokio::sync::mpsc` that connections use, with
//! its error types: slots reserved before the message is ready
//! ([`Permit`]), `try_recv`, and closing from the receiving side.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::sync::mpsc::error::{SendError, TryRecvError, TrySendError};
use tokio::sync::{Semaphore, SemaphorePermit};

/// A queue of at most `capacity` values.
pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        slots: Semaphore::new(capacity),
        receiver: AtomicWaker::new(),
        sender_gone: AtomicBool::new(false),
        receiver_gone: AtomicBool::new(false),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    queue: Mutex<VecDeque<T>>,
    /// Free slots. Closed once the receiver closes or is dropped: from then
    /// on no slot is handed out.
    slots: Semaphore,
    /// The receiver's task while it waits for a value.
    receiver: AtomicWaker,
    sender_gone: AtomicBool,
    /// Set, under the queue's lock, when the receiver is dropped.
    receiver_gone: AtomicBool,
}

impl<T> Shared<T> {
    fn queue(&self) -> MutexGuard<'_, VecDeque<T>> {
        // A panic while the lock is held leaves the queue intact: pushing
        // and popping cannot half-happen.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn pop(&self) -> Option<T> {
        let value = {
            let mut queue = self.queue();
            let value = queue.pop_front();
            // A burst grows the buffer; an emptied queue gives it back, so
            // a connection that once queued thousands of messages does not
            // keep room for them while it idles.
            if queue.is_empty() && queue.capacity() > KEPT_CAPACITY {
                queue.shrink_to(KEPT_CAPACITY);
            }
            value
        };
        if value.is_some() {
            self.slots.add_permits(1);
        }
        value
    }
}

/// Room an emptied queue keeps: a queue that holds a few values at a time
/// never reallocates, one that held a burst shrinks back to this.
const KEPT_CAPACITY: usize = 64;

/// The sending half.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// A slot in the queue, reserved for one value.
pub(crate) struct Permit<'a, T> {
    shared: &'a Shared<T>,
    slot: SemaphorePermit<'a>,
}

impl<T> Sender<T> {
    /// A slot if one is free now.
    pub(crate) fn try_reserve(&self) -> Result<Permit<'_, T>, TrySendError<()>> {
        match self.shared.slots.try_acquire() {
            Ok(slot) => Ok(Permit {
                shared: &self.shared,
                slot,
            }),
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(TrySendError::Full(())),
            Err(tokio::sync::TryAcquireError::Closed) => Err(TrySendError::Closed(())),
        }
    }

    /// A slot, once one is free (first come, first served); an error once
    /// the receiver has closed.
    pub(crate) async fn reserve(&self) -> Result<Permit<'_, T>, SendError<()>> {
        match self.shared.slots.acquire().await {
            Ok(slot) => Ok(Permit {
                shared: &self.shared,
                slot,
            }),
            Err(_closed) => Err(SendError(())),
        }
    }

    /// Queue `value` once a slot is free; gives it back if the receiver has
    /// closed.
    pub(crate) async fn send(&self, value: T) -> Result<(), SendError<T>> {
        match self.reserve().await {
            Ok(permit) => {
                permit.send(value);
                Ok(())
            }
            Err(SendError(())) => Err(SendError(value)),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.sender_gone.store(true, Ordering::Release);
        self.shared.receiver.wake();
    }
}

impl<T> Permit<'_, T> {
    /// Queue `value` in the reserved slot. Once the receiver is gone the
    /// value is dropped instead, as it would be in the queue.
    pub(crate) fn send(self, value: T) {
        let mut queue = self.shared.queue();
        if self.shared.receiver_gone.load(Ordering::Relaxed) {
            drop(queue);
            drop(value);
            return;
        }
        queue.push_back(value);
        drop(queue);
        // The slot is the value's now: the receiver frees it.
        self.slot.forget();
        self.shared.receiver.wake();
    }
}

/// The receiving half.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("queued", &self.shared.queue().len())
            .finish_non_exhaustive()
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("queued", &self.shared.queue().len())
            .finish_non_exhaustive()
    }
}

impl<T> Receiver<T> {
    /// The next value; `None` once the sender is gone and the queue empty.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(value) = self.shared.pop() {
            return Poll::Ready(Some(value));
        }
        self.shared.receiver.register(cx.waker());
        // Again after registering: a value queued (or the sender dropped)
        // in between woke the waker registered before.
        if let Some(value) = self.shared.pop() {
            return Poll::Ready(Some(value));
        }
        if self.shared.sender_gone.load(Ordering::Acquire) {
            // The sender may have queued a last value before it went.
            return Poll::Ready(self.shared.pop());
        }
        Poll::Pending
    }

    /// The next value if one is queued.
    pub(crate) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        if let Some(value) = self.shared.pop() {
            return Ok(value);
        }
        if self.shared.sender_gone.load(Ordering::Acquire) {
            return self.shared.pop().ok_or(TryRecvError::Disconnected);
        }
        Err(TryRecvError::Empty)
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.shared.queue().is_empty()
    }

    /// Hand out no more slots. Values already queued, and slots already
    /// reserved, can still be received.
    pub(crate) fn close(&mut self) {
        self.shared.slots.close();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.slots.close();
        // What is queued is dropped now, not when the sender goes: values
        // may hold budgets.
        let mut queue = self.shared.queue();
        self.shared.receiver_gone.store(true, Ordering::Relaxed);
        let queued = std::mem::take(&mut *queue);
        drop(queue);
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test]
    async fn values_come_out_in_order_and_free_their_slots() {
        let (tx, mut rx) = channel(2);
        tx.try_reserve().unwrap().send(1);
        tx.send(2).await.unwrap();
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Full(()))));
        assert!(!rx.is_empty());
        assert_eq!(rx.recv().await, Some(1));
        tx.try_reserve().unwrap().send(3);
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.recv().await, Some(3));
        assert!(rx.is_empty());
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[tokio::test]
    async fn a_permit_dropped_unused_frees_its_slot() {
        let (tx, _rx) = channel::<u8>(1);
        let permit = tx.try_reserve().unwrap();
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Full(()))));
        drop(permit);
        assert!(tx.try_reserve().is_ok());
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send() {
        let (tx, mut rx) = channel(1);
        let receiver = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.send("hello").await.unwrap();
        assert_eq!(receiver.await.unwrap(), Some("hello"));
    }

    #[tokio::test]
    async fn a_waiting_sender_gets_the_slot_a_receive_frees() {
        let (tx, mut rx) = channel(1);
        tx.send(1).await.unwrap();
        let sender = tokio::spawn(async move {
            tx.send(2).await.unwrap();
            tx
        });
        tokio::task::yield_now().await;
        assert_eq!(rx.recv().await, Some(1));
        let _tx = sender.await.unwrap();
        assert_eq!(rx.recv().await, Some(2));
    }

    #[tokio::test]
    async fn the_receiver_sees_the_last_values_then_the_end() {
        let (tx, mut rx) = channel(4);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_when_the_sender_goes() {
        let (tx, mut rx) = channel::<u8>(1);
        let receiver = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        drop(tx);
        assert_eq!(receiver.await.unwrap(), None);
    }

    #[tokio::test]
    async fn closing_stops_new_slots_but_not_reserved_ones() {
        let (tx, mut rx) = channel(4);
        let reserved = tx.try_reserve().unwrap();
        tx.send(1).await.unwrap();
        rx.close();
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Closed(()))));
        assert!(tx.reserve().await.is_err());
        assert_eq!(tx.send(9).await, Err(SendError(9)));
        reserved.send(2);
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn values_cross_threads_in_order_through_a_small_queue() {
        // Sender and receiver on different threads, the queue full or empty
        // most of the time: every wake-up path is taken many times.
        const VALUES: u32 = 20_000;
        let (tx, mut rx) = channel(2);
        let sender = tokio::spawn(async move {
            for value in 0..VALUES {
                match value % 3 {
                    0 => tx.send(value).await.unwrap(),
                    1 => tx.reserve().await.unwrap().send(value),
                    _ => loop {
                        match tx.try_reserve() {
                            Ok(permit) => break permit.send(value),
                            Err(TrySendError::Full(())) => tokio::task::yield_now().await,
                            Err(TrySendError::Closed(())) => panic!("closed"),
                        }
                    },
                }
            }
        });
        let receiver = tokio::spawn(async move {
            let mut next = 0;
            while let Some(value) = rx.recv().await {
                assert_eq!(value, next);
                next += 1;
            }
            next
        });
        // A lost wake-up shows as a hang; a minute is far more than any
        // machine needs for this.
        let done = async {
            sender.await.unwrap();
            receiver.await.unwrap()
        };
        let received = tokio::time::timeout(std::time::Duration::from_secs(60), done)
            .await
            .expect("a wake-up was lost");
        assert_eq!(received, VALUES);
    }

    /// Counts its drops: a queued value that holds a budget must give it
    /// back when the receiver goes.
    struct Held<'a>(&'a AtomicUsize);

    impl Drop for Held<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn dropping_the_receiver_drops_what_is_queued_and_what_comes_after() {
        let dropped = AtomicUsize::new(0);
        let (tx, rx) = channel(4);
        tx.send(Held(&dropped)).await.ok().unwrap();
        tx.send(Held(&dropped)).await.ok().unwrap();
        let reserved = tx.try_reserve().ok().unwrap();
        drop(rx);
        assert_eq!(dropped.load(Ordering::Relaxed), 2);
        reserved.send(Held(&dropped));
        assert_eq!(dropped.load(Ordering::Relaxed), 3);
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Closed(()))));
        let refused = tx.send(Held(&dropped)).await;
        assert!(refused.is_err());
        drop(refused);
        assert_eq!(dropped.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn an_emptied_queue_gives_back_what_a_burst_grew() {
        let (tx, mut rx) = channel(100_000);
        for value in 0..10_000u64 {
            tx.send(value).await.unwrap();
        }
        assert!(tx.shared.queue().capacity() >= 10_000);
        while rx.try_recv().is_ok() {}
        assert!(tx.shared.queue().capacity() <= KEPT_CAPACITY);
    }

    #[test]
    fn an_empty_queue_is_small() {
        // The point of this queue: a connection's two queues cost it a few
        // hundred bytes until messages flow.
        assert!(
            size_of::<Shared<[u8; 40]>>() <= 256,
            "{}",
            size_of::<Shared<[u8; 40]>>()
        );
        let (tx, _rx) = channel::<[u8; 40]>(64);
        assert_eq!(tx.shared.queue().capacity(), 0);
    }
}
