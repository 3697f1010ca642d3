//! The one `bindgen!` of the host: Rust types and traits generated from the
//! WIT contract in `wit/`. Everything else uses the re-exports below.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "flow",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "wsflow:flow/connection.connection": crate::runtime::connection::HostConnection,
    },
});

pub use self::wsflow::flow::connection::{CloseError, ReceiveError, SendError};
pub use self::wsflow::flow::log::Level;
pub use self::wsflow::flow::types::{Content, Input, Message, Mode, Param, ParamValue};
