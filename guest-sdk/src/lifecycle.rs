//! Connection lifecycle hooks: decide who may connect, and learn when a
//! connection has ended.
//!
//! A handler names a flow in `on_connect` and `on_close` in the manifest;
//! the host then calls that flow's [`Flow::on_connect`](crate::Flow::on_connect)
//! before each upgrade, and its [`Flow::on_close`](crate::Flow::on_close) once
//! after each connection. Both run in a fresh instance, like a data-mode
//! execution, without a [`Connection`](crate::Connection): they reach the
//! app's connections through [`groups`](crate::groups).
//!
//! ```no_run
//! use wsflow_sdk::lifecycle::{Closed, ConnectRequest, Decision};
//! use wsflow_sdk::{groups, Connection, Event, Flow};
//!
//! struct Room;
//!
//! impl Flow for Room {
//!     fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
//!         let room: String = event.path_param("room")?;
//!         if let Some(text) = event.text() {
//!             groups::publish_except(&room, text, conn.id())?;
//!         }
//!         Ok(())
//!     }
//!
//!     fn on_connect(request: ConnectRequest) -> Decision {
//!         let Ok(Some(name)) = request.query_param::<Option<String>>("name") else {
//!             return Decision::reject(400, "give your name in ?name=");
//!         };
//!         let room: String = request.path_param("room").unwrap_or_default();
//!         let _ = groups::publish(&room, format!("{name} joined"));
//!         Decision::accept().attachment(name.into_bytes()).join(room)
//!     }
//!
//!     fn on_close(closed: Closed) -> wsflow_sdk::Result {
//!         let name = String::from_utf8_lossy(closed.attachment()).into_owned();
//!         for room in closed.groups() {
//!             groups::publish(room, format!("{name} left"))?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! wsflow_sdk::export!(Room);
//! ```

use crate::Result;
use crate::bindings::exports::wsflow::flow::lifecycle as wit;
use crate::bindings::wsflow::flow::types;
use crate::event::lookup;
use crate::param::{FromParam, ParamValue};

/// A client asking to connect, before the upgrade.
#[derive(Debug)]
pub struct ConnectRequest {
    raw: wit::ConnectRequest,
}

impl ConnectRequest {
    pub(crate) fn from_raw(raw: wit::ConnectRequest) -> Self {
        Self { raw }
    }

    /// The id the connection will have if it is accepted.
    pub fn id(&self) -> u64 {
        self.raw.id
    }

    /// The client's address, e.g. `127.0.0.1:53122`.
    pub fn peer_addr(&self) -> &str {
        &self.raw.peer_addr
    }

    /// The request path, without the query.
    pub fn path(&self) -> &str {
        &self.raw.path
    }

    /// A path parameter, converted to `T`.
    pub fn path_param<T: FromParam>(&self, name: &str) -> Result<T> {
        lookup(&self.raw.path_params, "path parameter", name)
    }

    /// A query parameter, converted to `T` (`Option<T>` if it may be absent).
    pub fn query_param<T: FromParam>(&self, name: &str) -> Result<T> {
        lookup(&self.raw.query_params, "query parameter", name)
    }

    /// A header (any case), converted to `T`.
    pub fn header<T: FromParam>(&self, name: &str) -> Result<T> {
        lookup(&self.raw.headers, "header", &name.to_ascii_lowercase())
    }

    /// All query parameters.
    pub fn query_params(&self) -> impl Iterator<Item = (&str, &ParamValue)> {
        params(&self.raw.query_params)
    }

    /// The subprotocols the client offered, in its order.
    pub fn subprotocols(&self) -> &[String] {
        &self.raw.subprotocols
    }
}

/// Whether a client may connect, and how its connection starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Upgrade.
    Accept {
        /// Answered to the client; must be one it offered.
        subprotocol: Option<String>,
        /// The connection's first attachment (see
        /// [`Connection::set_attachment`](crate::Connection::set_attachment)).
        attachment: Vec<u8>,
        /// Groups the connection is in from its first moment.
        groups: Vec<String>,
    },
    /// Refuse with an HTTP status (400-599) and a short plain-text reason.
    Reject {
        /// E.g. 401 for a bad token, 403 for a forbidden room.
        status: u16,
        /// The response body (at most 1,024 bytes are sent).
        reason: String,
    },
}

impl Decision {
    /// Accept, with no subprotocol, attachment or groups.
    pub fn accept() -> Self {
        Decision::Accept {
            subprotocol: None,
            attachment: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// Refuse with `status` and `reason`.
    pub fn reject(status: u16, reason: impl Into<String>) -> Self {
        Decision::Reject {
            status,
            reason: reason.into(),
        }
    }

    /// Answer with `protocol` (one the client offered). No effect on a
    /// rejection.
    pub fn subprotocol(mut self, protocol: impl Into<String>) -> Self {
        if let Decision::Accept { subprotocol, .. } = &mut self {
            *subprotocol = Some(protocol.into());
        }
        self
    }

    /// Start the connection with this attachment. No effect on a rejection.
    pub fn attachment(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        if let Decision::Accept { attachment, .. } = &mut self {
            *attachment = bytes.into();
        }
        self
    }

    /// Start the connection in `group` too. No effect on a rejection.
    pub fn join(mut self, group: impl Into<String>) -> Self {
        if let Decision::Accept { groups, .. } = &mut self {
            groups.push(group.into());
        }
        self
    }

    pub(crate) fn into_raw(self) -> wit::Decision {
        match self {
            Decision::Accept {
                subprotocol,
                attachment,
                groups,
            } => wit::Decision::Accept(wit::Accepted {
                subprotocol,
                attachment,
                groups,
            }),
            Decision::Reject { status, reason } => {
                wit::Decision::Reject(wit::Rejected { status, reason })
            }
        }
    }
}

/// A connection that has ended.
#[derive(Debug)]
pub struct Closed {
    raw: wit::ClosedConnection,
}

impl Closed {
    pub(crate) fn from_raw(raw: wit::ClosedConnection) -> Self {
        Self { raw }
    }

    /// The connection's id.
    pub fn id(&self) -> u64 {
        self.raw.id
    }

    /// The client's address.
    pub fn peer_addr(&self) -> &str {
        &self.raw.peer_addr
    }

    /// The close code: the client's if it closed first, the host's if the
    /// host did; 1006 when the connection ended without a close frame.
    pub fn code(&self) -> u16 {
        self.raw.code
    }

    /// The close reason.
    pub fn reason(&self) -> &str {
        &self.raw.reason
    }

    /// The groups it was in when it ended, in name order.
    pub fn groups(&self) -> &[String] {
        &self.raw.groups
    }

    /// Its attachment when it ended (empty if none).
    pub fn attachment(&self) -> &[u8] {
        &self.raw.attachment
    }

    /// A path parameter of its request, converted to `T`.
    pub fn path_param<T: FromParam>(&self, name: &str) -> Result<T> {
        lookup(&self.raw.path_params, "path parameter", name)
    }

    /// A query parameter of its request, converted to `T`.
    pub fn query_param<T: FromParam>(&self, name: &str) -> Result<T> {
        lookup(&self.raw.query_params, "query parameter", name)
    }
}

fn params(params: &[types::Param]) -> impl Iterator<Item = (&str, &ParamValue)> {
    params.iter().map(|p| (p.name.as_str(), &p.value))
}
