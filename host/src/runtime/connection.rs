//! The `connection` resource: the host side of the handle a flow uses to
//! talk to its client.
//!
//! The trigger owns the socket; a flow only ever holds a [`HostConnection`],
//! which lives in the execution's own resource table (so it cannot be forged
//! from an integer or used from another store) and reaches the socket through
//! the connection's bounded outbound queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;
use wasmtime::component::Resource;

use super::bindings::wsflow::flow::connection as wit;
use super::bindings::{CloseError, Message, ReceiveError, SendError};
use super::ctx::FlowCtx;
use super::limits::LimitExceeded;
use crate::app::{AppInfo, AppStats};
use crate::close::{Close, InvalidClose};
use crate::hub::Delivery;

/// What a connection's writer sends to the client.
#[derive(Debug)]
pub(crate) enum Outbound {
    Message(tungstenite::Message),
    Close(Close),
}

/// State of one client connection shared by its reader, its writer and the
/// executions serving it.
#[derive(Debug)]
pub(crate) struct ConnectionShared {
    pub(crate) id: u64,
    pub(crate) app: Arc<AppInfo>,
    pub(crate) peer: SocketAddr,
    pub(crate) max_message_size: usize,
    closed: AtomicBool,
    outbound: mpsc::Sender<Outbound>,
    abort: CancellationToken,
}

/// How long a close frame may wait for room in the outbound queue before
/// the host gives up on the closing handshake and drops the connection.
const CLOSE_QUEUE_WAIT: Duration = Duration::from_secs(1);

impl ConnectionShared {
    pub(crate) fn new(
        id: u64,
        app: Arc<AppInfo>,
        peer: SocketAddr,
        max_message_size: usize,
        outbound: mpsc::Sender<Outbound>,
    ) -> Self {
        Self {
            id,
            app,
            peer,
            max_message_size,
            closed: AtomicBool::new(false),
            outbound,
            abort: CancellationToken::new(),
        }
    }

    /// Whether a close has been sent or received.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Record that the connection is closing; later sends fail with `closed`.
    pub(crate) fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Queue a message, waiting while the outbound queue is full.
    pub(crate) async fn send(&self, message: tungstenite::Message) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        self.outbound
            .send(Outbound::Message(message))
            .await
            .map_err(|_| SendError::Closed)
    }

    /// Start the closing handshake, once. Returns whether this call closed
    /// it. If the close frame cannot even be queued (the client does not
    /// read), the connection is aborted instead.
    pub(crate) async fn close(&self, close: Close) -> bool {
        if self.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.queue_close(close, CLOSE_QUEUE_WAIT).await
    }

    /// Like [`ConnectionShared::close`], for callers that must not wait (a
    /// publish that finds this connection's queue full): the connection is
    /// closing from now on, and the close frame waits in the background,
    /// up to `patience`, for room behind what is queued.
    pub(crate) fn close_later(self: &Arc<Self>, close: Close, patience: Duration) -> bool {
        if self.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move { this.queue_close(close, patience).await });
        true
    }

    /// Queue the close frame, or abort the connection if there is no room
    /// for it within `patience` (the client does not read).
    async fn queue_close(&self, close: Close, patience: Duration) -> bool {
        let queued = self.outbound.send(Outbound::Close(close));
        match tokio::time::timeout(patience, queued).await {
            Ok(result) => result.is_ok(),
            Err(_elapsed) => {
                self.abort.cancel();
                false
            }
        }
    }

    /// Queue a message if there is room now; never waits.
    pub(crate) fn try_send(&self, message: tungstenite::Message) -> Delivery {
        if self.is_closed() {
            return Delivery::Closed;
        }
        match self.outbound.try_send(Outbound::Message(message)) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Delivery::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Closed,
        }
    }

    /// Drop the connection without a closing handshake.
    pub(crate) fn abort(&self) {
        self.closed.store(true, Ordering::Release);
        self.abort.cancel();
    }

    /// Cancelled when the connection must be dropped at once.
    pub(crate) fn aborted(&self) -> &CancellationToken {
        &self.abort
    }
}

/// The resource behind a flow's `connection` handle.
pub struct HostConnection {
    shared: Arc<ConnectionShared>,
    /// Messages from the client; present in connection mode only.
    inbound: Option<mpsc::Receiver<tungstenite::Message>>,
}

impl HostConnection {
    pub(crate) fn new(
        shared: Arc<ConnectionShared>,
        inbound: Option<mpsc::Receiver<tungstenite::Message>>,
    ) -> Self {
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
        let patience = self.app.limits.slow_client_timeout;
        // Waiting for room in the queue is not charged (the execution is
        // not polled meanwhile); the work of sending is.
        let sent = tokio::time::timeout(patience, shared.send(into_ws_message(msg))).await;
        let Ok(result) = sent else {
            // The client has not read for `patience`: its fault, not the
            // flow's. Drop it and end the execution.
            shared.abort();
            return Err(wasmtime::Error::new(LimitExceeded::SlowClient {
                waited: patience,
            }));
        };
        if result.is_ok() {
            AppStats::add(&self.app.stats.messages_out, 1);
            AppStats::add(&self.app.stats.bytes_out, len as u64);
        }
        Ok(result)
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
        let shared = Arc::clone(&self.table.get(&this)?.shared);
        shared.close(close).await;
        Ok(Ok(()))
    }

    async fn drop(&mut self, this: Resource<HostConnection>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl wit::Host for FlowCtx {}

/// A data message from the client as the flow sees it; control frames are
/// handled by the host and never reach flows.
pub(crate) fn from_ws_message(message: tungstenite::Message) -> Option<Message> {
    match message {
        tungstenite::Message::Text(text) => Some(Message::Text(text.as_str().to_owned())),
        tungstenite::Message::Binary(bytes) => Some(Message::Binary(bytes.to_vec())),
        _ => None,
    }
}
