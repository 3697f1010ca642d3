//! Per-execution store state: what one flow execution can reach.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::Level;
use super::bindings::wsflow::flow::{log, properties};
use super::stdio::LogOutput;
use crate::loader::AppInfo;

/// Counts an execution reports back to its connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExecutionStats {
    pub messages_out: u64,
}

/// The data of one execution's `Store`.
///
/// Built fresh for every execution: nothing a flow does survives it except
/// what it sent over its connection.
pub struct FlowCtx {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: StoreLimits,
    pub(super) app: Arc<AppInfo>,
    pub(super) flow: Arc<str>,
    pub(super) connection_id: u64,
    pub(super) stats: ExecutionStats,
}

impl FlowCtx {
    pub fn new(app: Arc<AppInfo>, flow: Arc<str>, connection_id: u64) -> Self {
        let stdout = LogOutput::new(&app.name, &flow, connection_id, "stdout");
        let stderr = LogOutput::new(&app.name, &flow, connection_id, "stderr");
        // No ambient authority: no preopened directories, no environment, no
        // network; stdin is empty and stdout/stderr go to the host log.
        let wasi = WasiCtx::builder()
            .stdout(stdout)
            .stderr(stderr)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(app.limits.max_memory_bytes)
            .instances(MAX_INSTANCES)
            .trap_on_grow_failure(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limits,
            app,
            flow,
            connection_id,
            stats: ExecutionStats::default(),
        }
    }
}

/// A Rust flow component instantiates a handful of core instances (the
/// flow, its adapter shims); this bound only stops runaway nesting.
const MAX_INSTANCES: usize = 64;

impl WasiView for FlowCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl log::Host for FlowCtx {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let (app, flow, conn) = (&*self.app.name, &*self.flow, self.connection_id);
        match level {
            Level::Trace => tracing::trace!(target: "wsflow::flow", app, flow, conn, "{message}"),
            Level::Debug => tracing::debug!(target: "wsflow::flow", app, flow, conn, "{message}"),
            Level::Info => tracing::info!(target: "wsflow::flow", app, flow, conn, "{message}"),
            Level::Warn => tracing::warn!(target: "wsflow::flow", app, flow, conn, "{message}"),
            Level::Error => tracing::error!(target: "wsflow::flow", app, flow, conn, "{message}"),
        }
        Ok(())
    }
}

impl properties::Host for FlowCtx {
    async fn get(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self.app.properties.get(&name).cloned())
    }

    async fn all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self
            .app
            .properties
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect())
    }
}

impl super::bindings::wsflow::flow::types::Host for FlowCtx {}
