//! What waits to go to the broker, in lanes: one lane per app, served in
//! turn, and a reserved control lane served first.
//!
//! The host has one connection to NATS for all its apps. Were the waiting
//! messages one queue, an app publishing in a loop would fill it and every
//! other app's publishes, sends and questions would find it full
//! (`unavailable`), and the heartbeats and answers other hosts wait for
//! would queue behind the flood (other hosts would take this one for gone).
//! So:
//!
//! - each app has a lane of its own, and may hold at most its share of the
//!   outbox ([`OUTBOX_BYTES`] divided by the apps served), so an app that
//!   floods fills its own lane and gets `unavailable` while the others
//!   still have room;
//! - the sender takes one message from each app with messages waiting in
//!   turn, so an app's message waits behind at most one message of each
//!   other app, however many they queued;
//! - heartbeats, answers to other hosts' requests and the groups this host
//!   holds go in the control lane ([`CONTROL_BYTES`], apart from the apps'
//!   budget), which the sender empties before it takes an app's message.
//!
//! A message is charged its payload, subject and headers plus
//! [`MESSAGE_OVERHEAD`], what holding it costs besides its bytes, so many
//! empty messages fill a lane too.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};

use super::link::Outgoing;
use super::wire;

/// Bytes the apps' lanes hold at most together, so a stalled broker cannot
/// grow the host: room for bursts while the broker is briefly slower than
/// the flows.
pub(super) const OUTBOX_BYTES: usize = 64 << 20;

/// Bytes the control lane holds at most: heartbeats are a few dozen bytes,
/// answers at most one broker payload each; this is for a burst of
/// listings.
pub(super) const CONTROL_BYTES: usize = 16 << 20;

/// What a queued message costs besides its payload, subject and headers:
/// its place in the lane and the allocations of its subject and headers.
pub(super) const MESSAGE_OVERHEAD: usize = 256;

/// Which lane a message takes.
#[derive(Debug, Clone)]
pub(super) enum Lane {
    /// Heartbeats, answers, the groups this host holds: served first.
    Control,
    /// What an app's flows asked for: its publishes, sends and questions.
    App(Arc<str>),
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// The app's lane holds its share of the outbox already.
    OverShare,
    /// The outbox (or the control lane) is full.
    Full,
}

/// What the sender takes out: a message, or a mark that says when every
/// control message before it has been handed to the client.
pub(super) enum Next {
    Message(Outgoing),
    Mark(oneshot::Sender<()>),
}

/// The lanes and the sender's wake-up.
#[derive(Default)]
pub(super) struct Outbox {
    lanes: Mutex<Lanes>,
    waiting: Notify,
}

#[derive(Default)]
struct Lanes {
    control: VecDeque<Next>,
    control_bytes: usize,
    apps: HashMap<Arc<str>, AppLane>,
    /// Apps with messages waiting, in the order of their next turn.
    turns: VecDeque<Arc<str>>,
    /// Bytes of all the apps' lanes.
    app_bytes: usize,
}

#[derive(Default)]
struct AppLane {
    messages: VecDeque<(Outgoing, usize)>,
    bytes: usize,
}

/// What holding `message` costs.
pub(super) fn cost(message: &Outgoing) -> usize {
    message.payload.len()
        + message.subject.len()
        + message.reply.as_ref().map_or(0, |reply| reply.len())
        + wire::headers_len(&message.headers)
        + MESSAGE_OVERHEAD
}

impl Outbox {
    /// Serve `app` from now on: the apps' budget is shared by one more.
    pub(super) fn open(&self, app: &Arc<str>) {
        self.lock().apps.entry(Arc::clone(app)).or_default();
    }

    /// Stop serving `app`: what its lane holds is dropped.
    pub(super) fn close(&self, app: &str) {
        let mut lanes = self.lock();
        if let Some(lane) = lanes.apps.remove(app) {
            lanes.app_bytes -= lane.bytes;
            lanes.turns.retain(|turn| &**turn != app);
        }
    }

    /// Queue `message` in `lane`, without waiting.
    pub(super) fn push(&self, lane: &Lane, message: Outgoing) -> Result<(), Refused> {
        let cost = cost(&message);
        let mut lanes = self.lock();
        match lane {
            Lane::Control => {
                if lanes.control_bytes + cost > CONTROL_BYTES {
                    return Err(Refused::Full);
                }
                lanes.control_bytes += cost;
                lanes.control.push_back(Next::Message(message));
            }
            Lane::App(app) => {
                let share = OUTBOX_BYTES / lanes.apps.len().max(1);
                let total = lanes.app_bytes;
                let Some(queue) = lanes.apps.get_mut(app) else {
                    return Err(Refused::Full);
                };
                // An empty lane takes one message whatever its share, so a
                // message as large as the broker takes always has a way.
                if !queue.messages.is_empty() && queue.bytes + cost > share {
                    return Err(Refused::OverShare);
                }
                if total + cost > OUTBOX_BYTES {
                    return Err(Refused::Full);
                }
                let first = queue.messages.is_empty();
                queue.messages.push_back((message, cost));
                queue.bytes += cost;
                lanes.app_bytes += cost;
                if first {
                    lanes.turns.push_back(Arc::clone(app));
                }
            }
        }
        drop(lanes);
        self.waiting.notify_one();
        Ok(())
    }

    /// Queue a mark behind every control message queued so far; it is sent
    /// once they have been handed to the client.
    pub(super) fn mark(&self) -> oneshot::Receiver<()> {
        let (mark, handed_over) = oneshot::channel();
        self.lock().control.push_back(Next::Mark(mark));
        self.waiting.notify_one();
        handed_over
    }

    /// The next message to send: the control lane's first, or the first of
    /// the app whose turn it is. Waits while there is none.
    pub(super) async fn next(&self) -> Next {
        loop {
            if let Some(next) = self.take() {
                return next;
            }
            self.waiting.notified().await;
        }
    }

    fn take(&self) -> Option<Next> {
        let mut lanes = self.lock();
        if let Some(next) = lanes.control.pop_front() {
            if let Next::Message(message) = &next {
                lanes.control_bytes -= cost(message);
            }
            return Some(next);
        }
        let app = lanes.turns.pop_front()?;
        let queue = lanes
            .apps
            .get_mut(&app)
            .expect("a lane with a turn is open");
        let (message, cost) = queue.messages.pop_front().expect("a turn has a message");
        queue.bytes -= cost;
        let more = !queue.messages.is_empty();
        lanes.app_bytes -= cost;
        if more {
            lanes.turns.push_back(app);
        }
        Some(Next::Message(message))
    }

    /// Bytes queued in `app`'s lane now.
    pub(super) fn queued(&self, app: &str) -> usize {
        self.lock().apps.get(app).map_or(0, |lane| lane.bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.lanes.lock().expect("not poisoned")
    }
}

#[cfg(test)]
mod tests {
    use async_nats::HeaderMap;
    use tokio_tungstenite::tungstenite::Bytes;

    use super::*;

    fn message(subject: &str, size: usize) -> Outgoing {
        Outgoing {
            subject: subject.into(),
            reply: None,
            headers: HeaderMap::new(),
            payload: Bytes::from(vec![0; size]),
        }
    }

    fn subject(next: Option<Next>) -> String {
        match next {
            Some(Next::Message(message)) => message.subject.to_string(),
            Some(Next::Mark(_)) => "mark".into(),
            None => "none".into(),
        }
    }

    #[test]
    fn a_flooding_app_fills_its_share_and_waits_its_turn() {
        let outbox = Outbox::default();
        let (flood, quiet): (Arc<str>, Arc<str>) = ("flood".into(), "quiet".into());
        outbox.open(&flood);
        outbox.open(&quiet);
        let mut flooded = 0;
        while outbox
            .push(&Lane::App(flood.clone()), message("f", 4096))
            .is_ok()
        {
            flooded += 1;
        }
        assert_eq!(
            outbox.push(&Lane::App(flood), message("f", 4096)),
            Err(Refused::OverShare)
        );
        assert!(outbox.queued("flood") <= OUTBOX_BYTES / 2);
        assert!(flooded > 1000, "{flooded}");

        // The other app still has room, and its message goes second.
        outbox.push(&Lane::App(quiet), message("q", 4096)).unwrap();
        outbox.push(&Lane::Control, message("c", 10)).unwrap();
        assert_eq!(subject(outbox.take()), "c", "control first");
        assert_eq!(subject(outbox.take()), "f");
        assert_eq!(
            subject(outbox.take()),
            "q",
            "one of the flood's, then quiet's"
        );
        assert_eq!(subject(outbox.take()), "f");

        // Closing the flooding app frees its share.
        outbox.close("flood");
        assert_eq!(subject(outbox.take()), "none");
        assert_eq!(outbox.queued("flood"), 0);
    }

    #[test]
    fn an_empty_lane_takes_one_message_larger_than_its_share() {
        let outbox = Outbox::default();
        let apps: Vec<Arc<str>> = (0..128).map(|n| format!("app{n}").into()).collect();
        for app in &apps {
            outbox.open(app);
        }
        let big = OUTBOX_BYTES / 64;
        let lane = Lane::App(apps[0].clone());
        outbox.push(&lane, message("big", big)).unwrap();
        assert_eq!(
            outbox.push(&lane, message("big", big)),
            Err(Refused::OverShare)
        );
    }

    #[test]
    fn a_mark_comes_after_the_control_messages_before_it() {
        let outbox = Outbox::default();
        outbox.push(&Lane::Control, message("bye", 0)).unwrap();
        let _handed_over = outbox.mark();
        assert_eq!(subject(outbox.take()), "bye");
        assert_eq!(subject(outbox.take()), "mark");
    }
}
