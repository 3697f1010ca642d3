//! The host's capabilities: what a flow can call. Each is one module in
//! the shape of wasmtime's own `wasmtime-wasi-*` crates — the WIT
//! interfaces it implements, its `Host` impls on the execution's
//! [`FlowCtx`], the state it keeps per execution there, the grant it reads
//! from the manifest (if any) — and an `add_to_linker` function. This list
//! is what the linker links; a new capability is a new module and one
//! entry here.
//!
//! | capability | interfaces | per execution | granted by |
//! | --- | --- | --- | --- |
//! | [`connection`](super::connection) | `wsflow:flow/types`, `wsflow:flow/connection` | the connection's handle in the resource table | every flow |
//! | [`log`](super::log) | `wsflow:flow/log` | — (the app's log budget) | every flow |
//! | [`properties`](super::properties) | `wsflow:flow/properties` | — (the app's properties) | every flow |
//! | [`groups`](super::groups) | `wsflow:flow/groups` | — (the app's hub) | every flow |
//! | [`history`](super::history) | `wsflow:flow/history`, `wsflow:flow/opening` | in `on_connect`, how the connection starts | `[[history]]` (which groups keep it) |
//! | [`http`](super::http) | `wasi:http/outgoing-handler`, `wasi:http/types` | the request count; the app's slots for requests in flight | `[flows.NAME] allowed_outbound_hosts`, `[limits] *outbound*` |
//! | [`keyvalue`](super::keyvalue) | `wasi:keyvalue/store`, `atomics`, `batch` (0.2.0-draft), `wsflow:flow/keyvalue-cas` | the flow's grants; open stores in the resource table | `[key_value.stores]`, `[flows.NAME] key_value_stores` |
//! | [`wasi`](super::wasi) | `wasi:cli`, `wasi:clocks`, `wasi:filesystem`, `wasi:io`, `wasi:random`, `wasi:sockets` (denied) | a WASI context, built on first use | `[flows.NAME] env`, `read_only_dir` |
//!
//! The lifecycle hooks are exports, not capabilities: a flow provides
//! them (`bindings::hooks`).

use wasmtime::component::Linker;
use wasmtime::error::Context as _;

use super::ctx::FlowCtx;

/// One capability of the host.
#[derive(Debug)]
pub(crate) struct Capability {
    /// Its name in errors and logs.
    pub(crate) name: &'static str,
    /// Adds its host functions to the flow linker.
    pub(crate) add_to_linker: fn(&mut Linker<FlowCtx>) -> wasmtime::Result<()>,
}

/// Every capability, in the order they are linked.
pub(crate) const ALL: &[Capability] = &[
    super::connection::CAPABILITY,
    super::log::CAPABILITY,
    super::properties::CAPABILITY,
    super::groups::CAPABILITY,
    super::history::CAPABILITY,
    super::keyvalue::CAPABILITY,
    super::wasi::CAPABILITY,
    super::http::CAPABILITY,
];

/// Link every capability into `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<FlowCtx>) -> wasmtime::Result<()> {
    for capability in ALL {
        (capability.add_to_linker)(linker)
            .with_context(|| format!("linking the {} capability", capability.name))?;
    }
    Ok(())
}
