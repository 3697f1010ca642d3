//! Groups and addressing: reach other connections of your app.
//!
//! A connection joins named groups ([`Connection::join`]); a flow publishes
//! to a group ([`publish`]), sends to one connection by id ([`send_to`]),
//! and asks who is in a group ([`member_count`], [`members`]). Membership
//! and the attachment ([`Connection::set_attachment`]) belong to the
//! connection, not to the flow's instance: a data-mode flow can join on the
//! first message, and later messages (each in a fresh instance) find the
//! connection still a member, until it leaves or closes.
//!
//! Everything is scoped to your app: another app's groups are invisible,
//! and another app's connection ids are [`GroupError::NotFound`].
//!
//! A data-mode chat room, one message per execution:
//!
//! ```no_run
//! use wsflow_sdk::{groups, Connection, Event, Flow};
//!
//! struct Room;
//!
//! impl Flow for Room {
//!     fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
//!         let room: String = event.path_param("room")?;
//!         let text = event.text().unwrap_or_default();
//!         if let Some(name) = text.strip_prefix("/name ") {
//!             // First message: remember the name with the connection, join.
//!             conn.set_attachment(name.as_bytes())?;
//!             conn.join(&room)?;
//!             let here = groups::member_count(&room)?;
//!             conn.send_text(&format!("welcome, {name}: {here} here"))?;
//!             return Ok(());
//!         }
//!         let name = String::from_utf8(conn.attachment())?;
//!         // Everyone in the room but the sender; never waits for them.
//!         groups::publish_except(&room, format!("{name}: {text}"), conn.id())?;
//!         Ok(())
//!     }
//! }
//!
//! wsflow_sdk::export!(Room);
//! ```
//!
//! Publishing never waits for a member. A member whose outbound queue is
//! full is closed with 1008, or misses the message, as its handler's
//! `slow_member` setting says; the other members are not held up. Errors
//! are values ([`GroupError`]): a bad group name, an unknown id or a cap of
//! the app's `[limits]` never traps the flow.

use serde::Serialize;

use crate::bindings::wsflow::flow::groups as raw;
use crate::connection::Message;
use crate::{Connection, Result};

pub use raw::GroupError;

/// A member of a group, as [`members`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The connection's id ([`Connection::id`]); [`send_to`] reaches it.
    pub id: u64,
    /// What the connection's flow set with [`Connection::set_attachment`].
    pub attachment: Vec<u8>,
}

impl Member {
    /// The attachment as text, if it is UTF-8.
    pub fn attachment_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.attachment).ok()
    }

    /// The attachment deserialized from JSON (see
    /// [`Connection::set_attachment_json`]).
    pub fn attachment_json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_slice(&self.attachment)?)
    }
}

/// Queue `message` for every member of `group`, the sender included if it
/// is a member. `message` is a [`Message`], a `String`/`&str` (text) or a
/// `Vec<u8>` (binary).
pub fn publish(group: &str, message: impl Into<Message>) -> Result<(), GroupError> {
    raw::publish(group, &message.into(), None)
}

/// Queue `message` for every member of `group` but the connection with id
/// `except` (typically `conn.id()`, the sender).
pub fn publish_except(
    group: &str,
    message: impl Into<Message>,
    except: u64,
) -> Result<(), GroupError> {
    raw::publish(group, &message.into(), Some(except))
}

/// Serialize `value` as JSON and publish it as a text message to every
/// member of `group`.
pub fn publish_json<T: Serialize + ?Sized>(group: &str, value: &T) -> Result {
    let text = serde_json::to_string(value)?;
    Ok(publish(group, text)?)
}

/// Queue `message` for the connection of this app with id `id`.
/// [`GroupError::NotFound`] if no open connection of this app has that id.
pub fn send_to(id: u64, message: impl Into<Message>) -> Result<(), GroupError> {
    raw::send_to(id, &message.into())
}

/// How many connections are in `group` (0 for a group nobody joined).
pub fn member_count(group: &str) -> Result<u32, GroupError> {
    raw::member_count(group)
}

/// The members of `group` in id order; at most 1,000 are listed (a larger
/// group is [`GroupError::TooManyToList`]).
pub fn members(group: &str) -> Result<Vec<Member>, GroupError> {
    Ok(raw::members(group)?
        .into_iter()
        .map(|member| Member {
            id: member.id,
            attachment: member.attachment,
        })
        .collect())
}

impl Connection<'_> {
    /// Add this connection to `group`; joining again does nothing. The
    /// connection stays a member until it leaves or closes.
    pub fn join(&self, group: &str) -> Result<(), GroupError> {
        raw::join(self.raw(), group)
    }

    /// Take this connection out of `group`; leaving a group it is not in
    /// does nothing.
    pub fn leave(&self, group: &str) -> Result<(), GroupError> {
        raw::leave(self.raw(), group)
    }

    /// The groups this connection is in, in name order.
    pub fn groups(&self) -> Vec<String> {
        raw::joined(self.raw())
    }

    /// Keep a few bytes with this connection (at most the app's
    /// `max_attachment_size`, 2 KiB by default): listed by [`members`] and
    /// readable by later executions for the same connection.
    pub fn set_attachment(&self, attachment: &[u8]) -> Result<(), GroupError> {
        raw::set_attachment(self.raw(), attachment)
    }

    /// [`Connection::set_attachment`] with `value` as JSON.
    pub fn set_attachment_json<T: Serialize + ?Sized>(&self, value: &T) -> Result {
        let json = serde_json::to_vec(value)?;
        Ok(self.set_attachment(&json)?)
    }

    /// This connection's attachment (empty if none was set).
    pub fn attachment(&self) -> Vec<u8> {
        raw::attachment(self.raw())
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Message::Text(text)
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Self {
        Message::Text(text.to_owned())
    }
}

impl From<Vec<u8>> for Message {
    fn from(bytes: Vec<u8>) -> Self {
        Message::Binary(bytes)
    }
}

impl From<&[u8]> for Message {
    fn from(bytes: &[u8]) -> Self {
        Message::Binary(bytes.to_vec())
    }
}
