//! How the connection that `on_connect` accepts starts, beyond its
//! [`Decision`](crate::lifecycle::Decision): what it is sent before
//! anything else, and the groups it joins from a history position.
//!
//! Called anywhere but in `on_connect`, these answer
//! [`HistoryError::NotConnecting`]; with a rejecting decision nothing of
//! them happens.
//!
//! ```no_run
//! use wsflow_sdk::lifecycle::{ConnectRequest, Decision};
//! use wsflow_sdk::opening;
//!
//! fn on_connect(_request: ConnectRequest) -> Decision {
//!     // The client's first message, before anything its rooms deliver.
//!     let _ = opening::send_first(r#"{"type":"topic","text":"tea"}"#);
//!     Decision::accept().join("room:lobby")
//! }
//! ```

use crate::connection::Message;
use crate::history::{HistoryError, Position};

use crate::bindings::wsflow::flow::opening as raw;

/// Send `message` to the connection first: these messages go out in call
/// order, before any message of its groups. At most 1,000, and together
/// within the connection's outbound queue (`queue_per_connection`):
/// [`HistoryError::QueueFull`] beyond.
pub fn send_first(message: impl Into<Message>) -> Result<(), HistoryError> {
    raw::send_first(&message.into())
}

/// Join `group` from `since` as the connection opens, after what
/// [`send_first`] queued: it is sent the group's kept messages after
/// `since`, then the live ones, none twice and none lost at the seam. A
/// group the decision joins as well is joined once, from `since`.
pub fn join_from(group: &str, since: Position) -> Result<(), HistoryError> {
    raw::join_from(group, since.into())
}
