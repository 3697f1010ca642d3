//! The requests a host makes of the other hosts of an app (send to a
//! connection, count, list) while they wait for their answers: each has an
//! id that its answers' subject names (`...reply.HOST.Q.PEER`), and the
//! task that reads the answers passes each to the request that waits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::hub::HostId;

/// Parts of answers one request may have waiting before it reads them.
const ANSWERS_QUEUED: usize = 64;

/// One peer's answer to a request.
#[derive(Debug)]
pub(super) enum Answer {
    /// Every part of its answer, in order.
    Parts(Vec<async_nats::Message>),
    /// The peer is gone: nobody subscribes to its subject any more.
    Gone,
}

/// One part of a peer's answer, on its way to the request that waits.
pub(super) type AnswerPart = (HostId, async_nats::Message);

/// The open requests by id, each with where its answers go.
type OpenQuestions = Arc<Mutex<HashMap<u64, mpsc::Sender<AnswerPart>>>>;

/// The requests of this host that wait for answers.
#[derive(Debug, Default)]
pub(super) struct Questions {
    next: AtomicU64,
    open: OpenQuestions,
}

/// One open request: its id and where its answers arrive. Dropping it
/// closes the request; later answers are ignored.
pub(super) struct Question {
    pub(super) id: u64,
    pub(super) answers: mpsc::Receiver<AnswerPart>,
    open: OpenQuestions,
}

impl Drop for Question {
    fn drop(&mut self) {
        self.open.lock().expect("not poisoned").remove(&self.id);
    }
}

impl Questions {
    pub(super) fn open(&self) -> Question {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, answers) = mpsc::channel(ANSWERS_QUEUED);
        self.open.lock().expect("not poisoned").insert(id, sender);
        Question {
            id,
            answers,
            open: Arc::clone(&self.open),
        }
    }

    /// Pass `answer` to request `id`, if it still waits and has room.
    pub(super) fn route(&self, id: u64, peer: HostId, answer: async_nats::Message) {
        if let Some(waiting) = self.open.lock().expect("not poisoned").get(&id) {
            let _ = waiting.try_send((peer, answer));
        }
    }
}
