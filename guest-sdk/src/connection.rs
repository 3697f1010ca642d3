//! The connection handle a flow sends and receives through.

use std::time::Duration;

use serde::Serialize;

use crate::Result;
use crate::bindings::wsflow::flow::connection as raw;

pub use crate::bindings::wsflow::flow::connection::{CloseError, ReceiveError, SendError};
pub use crate::bindings::wsflow::flow::types::Message;

/// A borrowed handle to the client connection, valid for one execution.
///
/// ```no_run
/// # fn f(conn: &wsflow_sdk::Connection) -> wsflow_sdk::Result {
/// use std::time::Duration;
/// conn.send_text("what is your name?")?;
/// match conn.receive_text(Some(Duration::from_secs(30)))? {
///     Some(name) => conn.send_text(&format!("hello, {name}"))?,
///     None => return Ok(()), // the client left
/// }
/// # Ok(()) }
/// ```
pub struct Connection<'a> {
    raw: &'a raw::Connection,
}

impl<'a> Connection<'a> {
    pub(crate) fn from_raw(raw: &'a raw::Connection) -> Self {
        Self { raw }
    }

    pub(crate) fn raw(&self) -> &'a raw::Connection {
        self.raw
    }

    /// A host-wide unique id of this connection.
    pub fn id(&self) -> u64 {
        self.raw.id()
    }

    /// The client's address, e.g. `127.0.0.1:53122`.
    pub fn peer_addr(&self) -> String {
        self.raw.peer_addr()
    }

    /// Send a message.
    pub fn send(&self, message: Message) -> Result<(), SendError> {
        self.raw.send(&message)
    }

    /// Send a text message.
    pub fn send_text(&self, text: &str) -> Result<(), SendError> {
        self.send(Message::Text(text.to_owned()))
    }

    /// Send a binary message.
    pub fn send_binary(&self, bytes: &[u8]) -> Result<(), SendError> {
        self.send(Message::Binary(bytes.to_vec()))
    }

    /// Serialize `value` as JSON and send it as a text message.
    pub fn send_json<T: Serialize + ?Sized>(&self, value: &T) -> Result {
        let text = serde_json::to_string(value)?;
        Ok(self.send(Message::Text(text))?)
    }

    /// Wait for the client's next message (connection mode only). `Ok(None)`
    /// means the client has closed. A `timeout` of `None` waits without limit;
    /// `Some(Duration::ZERO)` takes a message already received, or returns
    /// [`ReceiveError::Timeout`] at once.
    pub fn receive(&self, timeout: Option<Duration>) -> Result<Option<Message>, ReceiveError> {
        let timeout_ms = timeout.map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX));
        self.raw.receive(timeout_ms)
    }

    /// Like [`Connection::receive`], but expects a text message. A binary
    /// message is an error of its own ([`ReceiveTextError::Binary`], with
    /// the bytes), so a flow can tell it from a timeout and carry on.
    pub fn receive_text(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Option<String>, ReceiveTextError> {
        match self.receive(timeout) {
            Ok(None) => Ok(None),
            Ok(Some(Message::Text(text))) => Ok(Some(text)),
            Ok(Some(Message::Binary(bytes))) => Err(ReceiveTextError::Binary(bytes)),
            Err(ReceiveError::Timeout) => Err(ReceiveTextError::Timeout),
            Err(ReceiveError::NotConnectionMode) => Err(ReceiveTextError::NotConnectionMode),
        }
    }

    /// Close the connection with a status code (1000 for a normal close,
    /// 3000–4999 for application codes) and a reason of at most 123 bytes.
    pub fn close(&self, code: u16, reason: &str) -> Result<(), CloseError> {
        self.raw.close(code, reason)
    }
}

/// Why [`Connection::receive_text`] returned no text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiveTextError {
    /// No message arrived within the timeout.
    Timeout,
    /// The client sent a binary message where text was expected.
    Binary(Vec<u8>),
    /// Receiving is only possible in connection mode.
    NotConnectionMode,
}

impl std::fmt::Display for ReceiveTextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("no message arrived within the timeout"),
            Self::Binary(bytes) => write!(
                f,
                "expected a text message, got a binary one of {} bytes",
                bytes.len()
            ),
            Self::NotConnectionMode => f.write_str("receiving works in connection mode only"),
        }
    }
}

impl std::error::Error for ReceiveTextError {}
