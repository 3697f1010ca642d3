//! Group history: the recent messages of the groups your manifest's
//! `[[history]]` names, each with a [`Position`], so that a client that
//! was away gets what it missed, and says so when it cannot.
//!
//! ```toml
//! [[history]]
//! groups = "room:*"          # one group, or every group starting with `room:`
//! size = 100                 # messages kept per group
//! ttl = "10m"                # how long a message is kept
//! position_field = "pos"     # add "pos":"EPOCH:OFFSET" to JSON-object text messages
//! ```
//!
//! Every message published to such a group (by [`crate::groups::publish`],
//! [`publish`], a hook or the server API) is kept with its position before
//! any member gets it. A client that reconnects with the last position it
//! saw is sent what it missed, then live messages, none twice and none
//! lost at the seam:
//!
//! ```no_run
//! use wsflow_sdk::history::{self, Position};
//! use wsflow_sdk::lifecycle::{ConnectRequest, Decision};
//! use wsflow_sdk::opening;
//!
//! fn on_connect(request: ConnectRequest) -> Decision {
//!     let since: Option<Position> = request
//!         .query_param::<String>("since")
//!         .ok()
//!         .and_then(|since| since.parse().ok());
//!     let Ok(page) = history::read("room:lobby", since, 100) else {
//!         return Decision::reject(503, "the room is unavailable");
//!     };
//!     for entry in &page.entries {
//!         let _ = opening::send_first(entry.message.clone());
//!     }
//!     // Whatever is published from now on, after the last entry read.
//!     let from = page.entries.last().map_or(page.head, |entry| entry.position);
//!     let _ = opening::join_from("room:lobby", from);
//!     Decision::accept()
//! }
//! ```

use std::fmt;
use std::str::FromStr;

use crate::Connection;
use crate::bindings::wsflow::flow::history as raw;
use crate::connection::Message;

pub use raw::HistoryError;

/// Where a message is in its group's history. `offset` grows by one per
/// message of the group; `epoch` changes when the history is lost (a
/// restart, a group dropped for the app's limits). Written `EPOCH:OFFSET`,
/// the epoch in hex (what `position_field` adds to messages), and parsed
/// back from it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// The history the offset counts in.
    pub epoch: u64,
    /// The message's number in its group (the first is 1).
    pub offset: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}:{}", self.epoch, self.offset)
    }
}

/// A text that is not `EPOCH:OFFSET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPosition;

impl fmt::Display for BadPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a position is EPOCH:OFFSET, the epoch in hex, e.g. 3f2a9c:17")
    }
}

impl std::error::Error for BadPosition {}

impl FromStr for Position {
    type Err = BadPosition;

    fn from_str(text: &str) -> Result<Self, BadPosition> {
        let (epoch, offset) = text.split_once(':').ok_or(BadPosition)?;
        Ok(Self {
            epoch: u64::from_str_radix(epoch, 16).map_err(|_| BadPosition)?,
            offset: offset.parse().map_err(|_| BadPosition)?,
        })
    }
}

impl From<raw::Position> for Position {
    fn from(position: raw::Position) -> Self {
        Self {
            epoch: position.epoch,
            offset: position.offset,
        }
    }
}

impl From<Position> for raw::Position {
    fn from(position: Position) -> Self {
        Self {
            epoch: position.epoch,
            offset: position.offset,
        }
    }
}

/// A kept message and its position.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its place in the group's history.
    pub position: Position,
    /// The message as members got it (with `position_field` added).
    pub message: Message,
}

/// Messages of a group's history, as [`read`] found them.
#[derive(Debug, Clone)]
pub struct Page {
    /// Oldest first.
    pub entries: Vec<Entry>,
    /// `false`: the history no longer reaches back to the position asked
    /// from; `entries` are the oldest messages it still has.
    pub complete: bool,
    /// The group's newest position now (offset 0: no message yet).
    pub head: Position,
}

/// [`crate::groups::publish`], answering with the message's position when
/// the group keeps history.
pub fn publish(
    group: &str,
    message: impl Into<Message>,
    except: Option<u64>,
) -> Result<Option<Position>, HistoryError> {
    Ok(raw::publish(group, &message.into(), except)?.map(Into::into))
}

/// The messages of `group` after `since`, oldest first, at most `limit`
/// (at most 1,000); without `since`, the newest `limit`.
pub fn read(group: &str, since: Option<Position>, limit: u32) -> Result<Page, HistoryError> {
    let page = raw::read(group, since.map(Into::into), limit)?;
    Ok(Page {
        entries: page
            .entries
            .into_iter()
            .map(|entry| Entry {
                position: entry.position.into(),
                message: entry.msg,
            })
            .collect(),
        complete: page.complete,
        head: page.head.into(),
    })
}

impl Connection<'_> {
    /// Join `group` from `since`: this connection is sent the group's kept
    /// messages after `since`, then every live message, each once and in
    /// order. `Ok(false)`: the history did not reach back to `since`, and
    /// every kept message was sent.
    pub fn join_from(&self, group: &str, since: Position) -> Result<bool, HistoryError> {
        raw::join_from(self.raw(), group, since.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_back_what_they_write() {
        let position = Position {
            epoch: 0x3f2a_9c00_dead_beef,
            offset: 17,
        };
        assert_eq!(position.to_string(), "3f2a9c00deadbeef:17");
        assert_eq!("3f2a9c00deadbeef:17".parse(), Ok(position));
        for bad in ["", "17", "xyz:1", "1:", ":1", "1:-1", "1:1:1"] {
            assert_eq!(bad.parse::<Position>(), Err(BadPosition), "{bad}");
        }
    }
}
