//! Per-execution store state: what one flow execution can reach. Each
//! capability (`capabilities.rs`) implements its interfaces on [`FlowCtx`]
//! and keeps what it needs per execution here.

use std::sync::Arc;

use wasmtime::component::ResourceTable;

use super::cpu::CpuMeter;
use super::history::ExecutionOpening;
use super::http::ExecutionHttp;
use super::keyvalue::ExecutionKeyValue;
use super::limits::ExecutionLimiter;
use super::wasi::ExecutionWasi;
use crate::app::AppInfo;
use crate::manifest::spec::FlowGrants;

/// The data of one execution's `Store`.
///
/// Built fresh for every execution: nothing a flow does survives it except
/// what it sent over its connection.
pub(crate) struct FlowCtx {
    /// The `wasi` capability's state.
    pub(super) wasi: ExecutionWasi,
    /// The `http` capability's state.
    pub(super) http: ExecutionHttp,
    /// The `keyvalue` capability's state.
    pub(super) key_value: ExecutionKeyValue,
    /// The `history` capability's state: how a connection `on_connect`
    /// accepts starts.
    pub(super) opening: ExecutionOpening,
    /// Resources the flow holds handles to (its connection, WASI's).
    pub(super) table: ResourceTable,
    pub(super) limiter: ExecutionLimiter,
    pub(super) cpu: Arc<CpuMeter>,
    pub(super) app: Arc<AppInfo>,
}

impl FlowCtx {
    pub(super) fn new(app: Arc<AppInfo>, grants: &Arc<FlowGrants>) -> wasmtime::Result<Self> {
        let cpu = Arc::new(CpuMeter::new(app.limits.cpu_time));
        Ok(Self {
            wasi: ExecutionWasi::new(&app, grants, &cpu)?,
            http: ExecutionHttp::new(&app, grants),
            key_value: ExecutionKeyValue::new(grants),
            opening: ExecutionOpening::default(),
            table: ResourceTable::new(),
            limiter: ExecutionLimiter::new(app.limits.max_memory, Arc::clone(&app.memory)),
            cpu,
            app,
        })
    }
}
