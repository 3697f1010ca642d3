//! Write wsflow flows in Rust.
//!
//! A flow is a WebAssembly component that the wsflow host runs whenever a
//! WebSocket client sends a message (data mode) or connects (connection
//! mode). Implement [`Flow`] for a type and export it:
//!
//! ```no_run
//! use wsflow_sdk::{Connection, Event, Flow};
//!
//! struct Echo;
//!
//! impl Flow for Echo {
//!     fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
//!         if let Some(message) = event.message() {
//!             conn.send(message)?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! wsflow_sdk::export!(Echo);
//! ```
//!
//! Connections of one app reach each other through [`groups`]: join named
//! groups, publish to them, send to a connection by id; groups that keep
//! [`history`] let a reconnecting client get what it missed. State that
//! outlives an execution goes in the app's key-value stores ([`kv`]).
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the
//! resulting `.wasm` file is a component that a `wsflow.toml` manifest names
//! as a flow's `component`.
#![deny(missing_docs)]

mod connection;
mod error;
mod event;
pub mod groups;
pub mod history;
pub mod http;
pub mod kv;
pub mod lifecycle;
pub mod log;
pub mod opening;
mod param;

pub use connection::{CloseError, Connection, Message, ReceiveError, ReceiveTextError, SendError};
pub use error::{Error, Result};
pub use event::{Content, Event, Mode};
pub use param::{FromParam, ParamValue};

/// Raw bindings generated from the WIT contract in `wit/`. Most flows never
/// need them: [`Event`], [`Connection`] and the helpers wrap them.
#[expect(
    clippy::too_many_arguments,
    reason = "generated code lowers a whole `event` record into flat arguments"
)]
#[expect(
    missing_docs,
    reason = "generated code documents what the WIT documents, not every item"
)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "flow-with-hooks",
        pub_export_macro: true,
        export_macro_name: "__export_flow_world",
        default_bindings_module: "wsflow_sdk::bindings",
        // The WASI interfaces `wasi:http` uses (`io`, `clocks`) and the
        // vendored `wasi:keyvalue` interfaces are generated here too.
        generate_all,
    });
}

/// A flow: the code that runs for each event a handler receives.
///
/// Return `Err` to report a failure: the host logs it and keeps the
/// connection open. A panic traps the component; the host then closes the
/// connection with status 1011 (internal error).
///
/// ```no_run
/// use wsflow_sdk::{Connection, Event, Flow};
///
/// #[derive(serde::Deserialize)]
/// struct Order { item: String, qty: u32 }
///
/// struct Orders;
///
/// impl Flow for Orders {
///     fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
///         let order: Order = event.json()?;
///         let region: String = event.path_param("region")?;
///         conn.send_json(&serde_json::json!({
///             "region": region, "item": order.item, "qty": order.qty,
///         }))?;
///         Ok(())
///     }
/// }
///
/// wsflow_sdk::export!(Orders);
/// ```
pub trait Flow {
    /// Handle one event. `conn` is valid only during this call.
    fn handle(event: Event, conn: &Connection) -> Result;

    /// Decide whether a client may connect: runs before the upgrade when a
    /// handler names this flow in `on_connect`. The default accepts
    /// everyone. See [`lifecycle`].
    fn on_connect(request: lifecycle::ConnectRequest) -> lifecycle::Decision {
        let _ = request;
        lifecycle::Decision::accept()
    }

    /// Runs once after a connection ended when a handler names this flow in
    /// `on_close`. The default does nothing. See [`lifecycle`].
    fn on_close(closed: lifecycle::Closed) -> Result {
        let _ = closed;
        Ok(())
    }
}

/// Read an app property (`[properties]` in the manifest).
pub fn property(name: &str) -> Option<String> {
    bindings::wsflow::flow::properties::get(name)
}

/// All app properties, as `(name, value)` pairs.
pub fn properties() -> Vec<(String, String)> {
    bindings::wsflow::flow::properties::all()
}

#[doc(hidden)]
pub mod __private {
    use crate::bindings::exports::wsflow::flow::lifecycle;
    use crate::bindings::wsflow::flow::{connection, types};

    /// Adapts [`crate::Flow::on_connect`] to the generated trait.
    pub fn on_connect<F: crate::Flow>(request: lifecycle::ConnectRequest) -> lifecycle::Decision {
        F::on_connect(crate::lifecycle::ConnectRequest::from_raw(request)).into_raw()
    }

    /// Adapts [`crate::Flow::on_close`] to the generated trait.
    pub fn on_close<F: crate::Flow>(closed: lifecycle::ClosedConnection) -> Result<(), String> {
        F::on_close(crate::lifecycle::Closed::from_raw(closed)).map_err(|error| error.to_string())
    }

    /// Adapts a [`crate::Flow`] to the generated `Guest` trait.
    pub fn handle<F: crate::Flow>(
        event: types::Event,
        conn: &connection::Connection,
    ) -> Result<(), String> {
        let conn = crate::Connection::from_raw(conn);
        F::handle(crate::Event::from_raw(event), &conn).map_err(|error| error.to_string())
    }
}

/// Export a type that implements [`Flow`] as the component's flow and
/// its lifecycle hooks ([`Flow::on_connect`], [`Flow::on_close`]).
///
/// Put it once at the top level of the flow crate:
///
/// ```ignore
/// wsflow_sdk::export!(MyFlow);
/// ```
#[macro_export]
macro_rules! export {
    ($flow:ident) => {
        impl $crate::bindings::Guest for $flow {
            fn handle(
                event: $crate::bindings::wsflow::flow::types::Event,
                conn: &$crate::bindings::wsflow::flow::connection::Connection,
            ) -> ::core::result::Result<(), ::std::string::String> {
                $crate::__private::handle::<$flow>(event, conn)
            }
        }
        impl $crate::bindings::exports::wsflow::flow::lifecycle::Guest for $flow {
            fn on_connect(
                request: $crate::bindings::exports::wsflow::flow::lifecycle::ConnectRequest,
            ) -> $crate::bindings::exports::wsflow::flow::lifecycle::Decision {
                $crate::__private::on_connect::<$flow>(request)
            }
            fn on_close(
                closed: $crate::bindings::exports::wsflow::flow::lifecycle::ClosedConnection,
            ) -> ::core::result::Result<(), ::std::string::String> {
                $crate::__private::on_close::<$flow>(closed)
            }
        }
        $crate::bindings::__export_flow_world!($flow with_types_in $crate::bindings);
    };
}
