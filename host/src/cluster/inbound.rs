//! Group messages from other hosts on their way to this host's members,
//! per app: bounded in bytes, and offered to the members in the app's own
//! turns of the host's fair scheduler ([`crate::runtime::Lane`]).
//!
//! A publish from another host costs this host a fan-out: one queue offer
//! per local member. Run in a plain task, that work would be charged to
//! nobody, and an app whose members receive a flood from other hosts
//! would take the workers from every other app's executions. So one task
//! per app takes the app's group messages off its subscription as they
//! come (cheap: no fan-out) into an [`Inbound`] queue of at most
//! [`INBOUND_BYTES`], and the fan-out runs inside the app's lane, giving
//! its turn back after [`FANOUT_SLICE`]; what does not fit in the queue is
//! dropped and counted.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

/// Bytes of group messages from other hosts one app's queue holds at most
/// (an empty queue takes one message of any size): a few seconds of a
/// busy chat, and what a flood from other hosts can pin on this host per
/// app besides the NATS client's own subscription queue.
pub(super) const INBOUND_BYTES: usize = 8 << 20;

/// How long the fan-out runs in one turn of the app's lane before it
/// gives the turn back: a turn is one poll, and a poll should stay well
/// below the scheduler's 10 ms tick (a message to 10,000 members is 10,000
/// queue offers).
pub(super) const FANOUT_SLICE: Duration = Duration::from_millis(2);

/// One app's group messages from other hosts, not yet offered.
#[derive(Debug, Default)]
pub(super) struct Inbound {
    queue: Mutex<Queue>,
    waiting: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    messages: VecDeque<async_nats::Message>,
    bytes: usize,
}

impl Inbound {
    /// Queue `message`; returns `false` (and drops it) when the queue holds
    /// [`INBOUND_BYTES`] already.
    pub(super) fn push(&self, message: async_nats::Message) -> bool {
        let len = message.length;
        let mut queue = self.queue.lock().expect("not poisoned");
        if !queue.messages.is_empty() && queue.bytes + len > INBOUND_BYTES {
            return false;
        }
        queue.bytes += len;
        queue.messages.push_back(message);
        drop(queue);
        self.waiting.notify_one();
        true
    }

    /// The next message; waits while there is none.
    pub(super) async fn next(&self) -> async_nats::Message {
        loop {
            if let Some(message) = self.take() {
                return message;
            }
            self.waiting.notified().await;
        }
    }

    /// The next message, if one waits.
    pub(super) fn take(&self) -> Option<async_nats::Message> {
        let mut queue = self.queue.lock().expect("not poisoned");
        let message = queue.messages.pop_front()?;
        queue.bytes -= message.length;
        Some(message)
    }

    /// Bytes waiting now.
    pub(super) fn bytes(&self) -> usize {
        self.queue.lock().expect("not poisoned").bytes
    }
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::Bytes;

    use super::*;

    fn message(size: usize) -> async_nats::Message {
        async_nats::Message {
            subject: "s".into(),
            reply: None,
            payload: Bytes::from(vec![0; size]),
            headers: None,
            status: None,
            description: None,
            length: size,
        }
    }

    #[tokio::test]
    async fn the_queue_holds_its_bytes_and_one_message_whatever_its_size() {
        let inbound = Inbound::default();
        assert!(inbound.push(message(INBOUND_BYTES * 2)), "empty: takes one");
        assert!(!inbound.push(message(1)));
        assert_eq!(inbound.next().await.length, INBOUND_BYTES * 2);
        let mut taken = 0;
        while inbound.push(message(4096)) {
            taken += 1;
        }
        assert_eq!(taken, INBOUND_BYTES / 4096);
        assert_eq!(inbound.bytes(), INBOUND_BYTES);
        inbound.next().await;
        assert!(inbound.push(message(4096)), "room again");
    }
}
