//! The host's `bindgen!`s: Rust types and traits generated from the WIT
//! contract in `wit/`. Everything else uses the re-exports below.
//!
//! A flow's `handle` comes from the world `flow`; the lifecycle hooks come
//! from the world `hooks`, whose imports are the same interfaces and reuse
//! the types generated for `flow`. A component may export either or both.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "flow",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "wsflow:flow/connection.connection": crate::runtime::connection::HostConnection,
        // The WASI interfaces are wasmtime's own (the `http` and `wasi`
        // capabilities link them).
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:keyvalue/store.bucket": crate::runtime::keyvalue::HostBucket,
    },
});

/// The lifecycle hooks (`on-connect`, `on-close`).
pub mod hooks {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "hooks",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "wsflow:flow": super::wsflow::flow,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:keyvalue": super::wasi::keyvalue,
        },
    });

    pub use self::exports::wsflow::flow::lifecycle::{ClosedConnection, ConnectRequest, Decision};
}

pub use self::wsflow::flow::connection::{CloseError, ReceiveError, SendError};
pub use self::wsflow::flow::log::Level;
pub use self::wsflow::flow::types::{Content, Input, Message, Mode, Param, ParamValue};

impl FlowIndices {
    /// [`FlowIndices::load`] without its type check: `FlowIndices::new`
    /// checked the export's type against the component already, and every
    /// instance of the component has that type. The check walks the whole
    /// `event` record (a microsecond or two), once per fresh instance.
    pub(crate) fn load_unchecked(
        &self,
        mut store: impl wasmtime::AsContextMut,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<Flow> {
        let handle = instance
            .get_func(&mut store, self.handle)
            .ok_or_else(|| wasmtime::format_err!("no export `handle` found"))?;
        Ok(Flow { handle })
    }
}
