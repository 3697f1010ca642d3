//! The `connection` resource: the host side of the handle a flow uses to
//! talk to its client.
//!
//! The trigger owns the socket; a flow only ever holds a [`HostConnection`],
//! which lives in the execution's own resource table (so it cannot be forged
//! from an integer or used from another store) and reaches the socket through
//! the connection's bounded outbound queue.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio_tungstenite::tungstenite;
use wasmtime::component::Resource;

use super::bindings::wsflow::flow::connection as wit;
use super::bindings::{CloseError, Message, ReceiveError, SendError};
use super::ctx::FlowCtx;
use super::flag::Flag;
use super::limits::LimitExceeded;
use super::queue;
use crate::app::{AppInfo, AppStats, ByteBudget, Charge};
use crate::close::{Close, InvalidClose};
use crate::hub::Delivery;

/// A message waiting for the connection's writer, with the bytes it holds
/// of the connection's and the app's outbound budgets.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) message: tungstenite::Message,
    pub(crate) charge: Charge,
}

impl Outbound {
    /// What a queued message costs the host beyond its payload: its entry
    /// in the queue and its largest frame header. Charged to the budgets
    /// with the payload, so the budgets bound the queue whatever the
    /// messages' sizes, empty ones included.
    pub(crate) const OVERHEAD: usize = size_of::<Self>() + 14;

    /// The bytes a message of `len` bytes takes from the budgets.
    pub(crate) fn cost(len: usize) -> usize {
        len.saturating_add(Self::OVERHEAD)
    }

    /// Slots for a connection's outbound queue. Every queued message holds
    /// at least [`Outbound::OVERHEAD`] bytes of the connection's budget, so
    /// the budget, not this count, is what bounds the queue: a client that
    /// reads is never closed because of how many messages a burst holds,
    /// only for bytes or for taking none.
    pub(crate) fn slots(queue_per_connection: usize) -> usize {
        queue_per_connection / Self::OVERHEAD + 1
    }
}

/// Where the reader puts messages for the flow side.
pub(crate) type InboundSender = queue::Sender<(tungstenite::Message, Charge)>;

/// Messages read from the client that wait for the flow side; each holds
/// its bytes of the connection's and the app's inbound budgets until taken.
#[derive(Debug)]
pub(crate) struct Inbound(queue::Receiver<(tungstenite::Message, Charge)>);

impl Inbound {
    /// A queue of at most `messages` messages (the byte budgets bound it
    /// further).
    pub(crate) fn channel(messages: usize) -> (InboundSender, Self) {
        let (tx, rx) = queue::channel(messages);
        (tx, Self(rx))
    }

    /// The next message; `None` once the reader has stopped and every
    /// message it read has been taken.
    pub(crate) async fn recv(&mut self) -> Option<tungstenite::Message> {
        self.0.recv().await.map(|(message, _charge)| message)
    }

    /// The next message if one has been read already.
    pub(crate) fn try_recv(&mut self) -> Result<tungstenite::Message, TryRecvError> {
        self.0.try_recv().map(|(message, _charge)| message)
    }
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendFailure {
    /// The connection is closing or closed.
    Closed,
    /// The send waited this long for a client that does not read, and the
    /// host is closing the connection with 1008.
    SlowClient(Duration),
}

/// State of one client connection shared by its reader, its writer, the
/// executions serving it and its app's hub.
#[derive(Debug)]
pub(crate) struct ConnectionShared {
    pub(crate) id: u64,
    pub(crate) app: Arc<AppInfo>,
    pub(crate) peer: SocketAddr,
    pub(crate) max_message_size: usize,
    outbound: queue::Sender<Outbound>,
    /// This connection's outbound bytes; the app's are in `app`.
    outbound_budget: ByteBudget,
    /// Raised once a close has been sent or received: sends fail.
    closing: Flag,
    /// The close the host is to send after what is queued, once. Its lock
    /// also orders every push onto `outbound` against the start of the
    /// close, so the writer, which drains the queue once it sees the close,
    /// sees every message a sender was told was queued.
    requested: Mutex<Option<Close>>,
    /// The client is being closed (1008) for not reading.
    slow: AtomicBool,
    abort: Flag,
    /// Raised once the socket is closed.
    gone: Flag,
    /// The first close frame sent or received: code and reason.
    ended_with: OnceLock<(u16, String)>,
}

impl ConnectionShared {
    pub(crate) fn new(
        id: u64,
        app: Arc<AppInfo>,
        peer: SocketAddr,
        max_message_size: usize,
        outbound: queue::Sender<Outbound>,
    ) -> Self {
        let outbound_budget = ByteBudget::new(app.limits.queue_per_connection);
        Self {
            id,
            app,
            peer,
            max_message_size,
            outbound,
            outbound_budget,
            closing: Flag::new(),
            requested: Mutex::new(None),
            slow: AtomicBool::new(false),
            abort: Flag::new(),
            gone: Flag::new(),
            ended_with: OnceLock::new(),
        }
    }

    /// Remember a close frame sent or received; only the first counts.
    pub(crate) fn record_close(&self, code: u16, reason: &str) {
        let _ = self.ended_with.set((code, reason.to_owned()));
    }

    /// The close that ended the connection: the first close frame sent or
    /// received, or 1006 (no close frame) if there was none.
    pub(crate) fn ended_with(&self) -> (u16, String) {
        self.ended_with
            .get()
            .cloned()
            .unwrap_or_else(|| (1006, String::new()))
    }

    /// Whether a close has been sent or received.
    pub(crate) fn is_closed(&self) -> bool {
        self.closing.is_raised()
    }

    /// Raised once a close has been sent or received.
    pub(crate) fn closing(&self) -> &Flag {
        &self.closing
    }

    /// Record that the client has closed (or the connection has failed):
    /// later sends fail with `closed`, and what is still queued is dropped.
    pub(crate) fn mark_closed(&self) {
        let _requested = self.requested.lock().expect("not poisoned");
        self.closing.raise();
    }

    /// Start the closing handshake, once, without waiting: the writer sends
    /// what is queued, then `close`. Returns whether this call closed the
    /// connection.
    pub(crate) fn close(&self, close: Close) -> bool {
        let mut requested = self.requested.lock().expect("not poisoned");
        if self.closing.is_raised() {
            return false;
        }
        *requested = Some(close);
        self.closing.raise();
        true
    }

    /// The close the host asked for and the writer has not sent yet.
    pub(crate) fn take_requested_close(&self) -> Option<Close> {
        self.requested.lock().expect("not poisoned").take()
    }

    /// Close the client (1008) because it does not read: what is queued is
    /// dropped, and a send waiting for room ends its execution. `why` goes
    /// to the log.
    pub(crate) fn close_slow_client(&self, why: &str) {
        if !self.slow.swap(true, Ordering::AcqRel) {
            tracing::info!("client does not read: {why}; closing with 1008");
        }
        self.close(Close::SLOW_CLIENT);
    }

    /// Whether the client is being closed for not reading.
    pub(crate) fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Acquire)
    }

    /// What a send that found the connection closing is told.
    fn closed_failure(&self, started: Instant) -> SendFailure {
        if self.is_slow() {
            SendFailure::SlowClient(started.elapsed())
        } else {
            SendFailure::Closed
        }
    }

    /// Queue a message, waiting while the budgets or the queue are full.
    ///
    /// A client that does not read fills its connection's budget: a send
    /// that waits `slow_client_timeout` for room closes it with 1008. The
    /// app's budget is shared; clients that read release it, and clients
    /// that do not are closed within `slow_client_timeout`, so waiting for
    /// it is not this client's fault.
    pub(crate) async fn send(&self, message: tungstenite::Message) -> Result<(), SendFailure> {
        if self.is_closed() {
            return Err(SendFailure::Closed);
        }
        let started = Instant::now();
        let len = Outbound::cost(message.len());
        // Room now (the usual case): nothing to wait for or register.
        if let Some(own) = self.outbound_budget.try_take(len)
            && let Some(app) = self.app.outbound_budget.try_take(len)
            && let Ok(slot) = self.outbound.try_reserve()
        {
            return self.queue(slot, message, Charge::new(own, app), started);
        }
        let patience = self.app.limits.slow_client_timeout;
        let room = async {
            let own = tokio::time::timeout(patience, self.outbound_budget.take(len)).await?;
            let app = self.app.outbound_budget.take(len).await;
            let slot = tokio::time::timeout(patience, self.outbound.reserve()).await?;
            let room = slot.map(|slot| (slot, Charge::new(own, app)));
            Ok::<_, tokio::time::error::Elapsed>(room)
        };
        let room = tokio::select! {
            // A send still waiting when the connection closes is told so.
            biased;
            () = self.closing.raised() => return Err(self.closed_failure(started)),
            room = room => room,
        };
        match room {
            Ok(Ok((slot, charge))) => self.queue(slot, message, charge, started),
            Ok(Err(_writer_gone)) => Err(SendFailure::Closed),
            Err(_elapsed) => {
                self.close_slow_client(&format!("a send waited {patience:?} for room"));
                Err(SendFailure::SlowClient(started.elapsed()))
            }
        }
    }

    /// Put a message into the slot reserved for it, unless the connection
    /// started closing meanwhile.
    fn queue(
        &self,
        slot: queue::Permit<'_, Outbound>,
        message: tungstenite::Message,
        charge: Charge,
        started: Instant,
    ) -> Result<(), SendFailure> {
        let _requested = self.requested.lock().expect("not poisoned");
        if self.is_closed() {
            return Err(self.closed_failure(started));
        }
        slot.send(Outbound { message, charge });
        Ok(())
    }

    /// Queue a message if there is room now (in this connection's budget
    /// and its app's); never waits. A group message: its payload is shared
    /// by every member's queue, but each member's writer copies it into
    /// its WebSocket's buffer, so it is charged in full to each member and,
    /// for each member, to the app. A message larger than this
    /// connection's trigger accepts is refused: its client could not be
    /// sent it.
    pub(crate) fn try_send(&self, message: tungstenite::Message) -> Delivery {
        if self.is_closed() {
            return Delivery::Closed;
        }
        if message.len() > self.max_message_size {
            return Delivery::TooLarge;
        }
        let cost = Outbound::cost(message.len());
        let Some(own) = self.outbound_budget.try_take(cost) else {
            return Delivery::Full;
        };
        let Some(app) = self.app.outbound_budget.try_take(cost) else {
            return Delivery::Full;
        };
        let _requested = self.requested.lock().expect("not poisoned");
        if self.is_closed() {
            return Delivery::Closed;
        }
        match self.outbound.try_reserve() {
            Ok(slot) => {
                let charge = Charge::new(own, app);
                slot.send(Outbound { message, charge });
                Delivery::Queued
            }
            Err(TrySendError::Full(())) => Delivery::Full,
            Err(TrySendError::Closed(())) => Delivery::Closed,
        }
    }

    /// Drop the connection without a closing handshake.
    pub(crate) fn abort(&self) {
        self.mark_closed();
        self.abort.raise();
    }

    /// Raised when the connection must be dropped at once.
    pub(crate) fn aborted(&self) -> &Flag {
        &self.abort
    }

    /// Record that the socket is closed.
    pub(crate) fn mark_gone(&self) {
        self.mark_closed();
        self.gone.raise();
    }

    /// Raised once the socket is closed: the client has gone.
    pub(crate) fn gone(&self) -> &Flag {
        &self.gone
    }
}

/// The resource behind a flow's `connection` handle.
pub struct HostConnection {
    shared: Arc<ConnectionShared>,
    /// Messages from the client; present in connection mode only.
    inbound: Option<Inbound>,
}

impl HostConnection {
    pub(crate) fn new(shared: Arc<ConnectionShared>, inbound: Option<Inbound>) -> Self {
        Self { shared, inbound }
    }

    pub(super) fn shared(&self) -> &Arc<ConnectionShared> {
        &self.shared
    }
}

pub(super) fn into_ws_message(message: Message) -> tungstenite::Message {
    match message {
        Message::Text(text) => tungstenite::Message::text(text),
        Message::Binary(bytes) => tungstenite::Message::binary(bytes),
    }
}

fn message_len(message: &Message) -> usize {
    match message {
        Message::Text(text) => text.len(),
        Message::Binary(bytes) => bytes.len(),
    }
}

impl wit::HostConnection for FlowCtx {
    async fn id(&mut self, this: Resource<HostConnection>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&this)?.shared.id)
    }

    async fn peer_addr(&mut self, this: Resource<HostConnection>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.shared.peer.to_string())
    }

    async fn send(
        &mut self,
        this: Resource<HostConnection>,
        msg: Message,
    ) -> wasmtime::Result<Result<(), SendError>> {
        let conn = self.table.get(&this)?;
        let len = message_len(&msg);
        if len > conn.shared.max_message_size {
            return Ok(Err(SendError::TooLarge));
        }
        let shared = Arc::clone(&conn.shared);
        // Waiting for room is not charged (the execution is not polled
        // meanwhile); the work of sending is.
        match shared.send(into_ws_message(msg)).await {
            Ok(()) => {
                AppStats::add(&self.app.stats.messages_out, 1);
                AppStats::add(&self.app.stats.bytes_out, len as u64);
                self.app.stats.metrics.message_size_out.record(len as u64);
                Ok(Ok(()))
            }
            Err(SendFailure::Closed) => Ok(Err(SendError::Closed)),
            // The client does not read: its fault, not the flow's. The
            // connection is closing; end the execution.
            Err(SendFailure::SlowClient(waited)) => {
                Err(wasmtime::Error::new(LimitExceeded::SlowClient { waited }))
            }
        }
    }

    async fn receive(
        &mut self,
        this: Resource<HostConnection>,
        timeout_ms: Option<u32>,
    ) -> wasmtime::Result<Result<Option<Message>, ReceiveError>> {
        let conn = self.table.get_mut(&this)?;
        let Some(inbound) = conn.inbound.as_mut() else {
            return Ok(Err(ReceiveError::NotConnectionMode));
        };
        // Waiting for the client is not charged (the execution is not polled
        // meanwhile). A zero timeout only takes a message already read.
        let next = match timeout_ms {
            None => Ok(inbound.recv().await),
            Some(0) => match inbound.try_recv() {
                Ok(message) => Ok(Some(message)),
                Err(TryRecvError::Disconnected) => Ok(None),
                Err(TryRecvError::Empty) => return Ok(Err(ReceiveError::Timeout)),
            },
            Some(ms) => {
                tokio::time::timeout(Duration::from_millis(ms.into()), inbound.recv()).await
            }
        };
        match next {
            Ok(next) => Ok(Ok(next.and_then(from_ws_message))),
            Err(_elapsed) => Ok(Err(ReceiveError::Timeout)),
        }
    }

    async fn close(
        &mut self,
        this: Resource<HostConnection>,
        code: u16,
        reason: String,
    ) -> wasmtime::Result<Result<(), CloseError>> {
        let close = match Close::requested(code, reason) {
            Ok(close) => close,
            Err(InvalidClose::Code) => return Ok(Err(CloseError::InvalidCode)),
            Err(InvalidClose::ReasonTooLong) => return Ok(Err(CloseError::ReasonTooLong)),
        };
        self.table.get(&this)?.shared.close(close);
        Ok(Ok(()))
    }

    async fn drop(&mut self, this: Resource<HostConnection>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl wit::Host for FlowCtx {}

impl super::bindings::wsflow::flow::types::Host for FlowCtx {}

/// The `connection` capability (`wsflow:flow/types`,
/// `wsflow:flow/connection`): the execution's own connection, through the
/// handle the host pushed into its resource table.
pub(super) const CAPABILITY: super::capabilities::Capability = super::capabilities::Capability {
    name: "connection",
    add_to_linker: |linker| {
        use super::bindings::wsflow::flow::types;
        types::add_to_linker::<_, wasmtime::component::HasSelf<FlowCtx>>(linker, |ctx| ctx)?;
        wit::add_to_linker::<_, wasmtime::component::HasSelf<FlowCtx>>(linker, |ctx| ctx)
    },
};

/// A data message from the client as the flow sees it; control frames are
/// handled by the host and never reach flows.
pub(crate) fn from_ws_message(message: tungstenite::Message) -> Option<Message> {
    match message {
        tungstenite::Message::Text(text) => Some(Message::Text(text.as_str().to_owned())),
        tungstenite::Message::Binary(bytes) => Some(Message::Binary(bytes.to_vec())),
        _ => None,
    }
}
