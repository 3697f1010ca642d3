//! Per-execution store state: what one flow execution can reach.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::filesystem::FsPerms;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::Level;
use super::bindings::wsflow::flow::{log, properties};
use super::cpu::CpuMeter;
use super::limits::ExecutionLimiter;
use super::stdio::{self, LogOutput};
use crate::app::AppInfo;
use crate::manifest::spec::FlowGrants;

/// Where a flow's directory grant appears inside the sandbox.
pub(crate) const GRANTED_DIR_GUEST_PATH: &str = "/data";

/// The data of one execution's `Store`.
///
/// Built fresh for every execution: nothing a flow does survives it except
/// what it sent over its connection.
pub(crate) struct FlowCtx {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: ExecutionLimiter,
    pub(super) cpu: Arc<CpuMeter>,
    pub(super) app: Arc<AppInfo>,
}

impl FlowCtx {
    pub(super) fn new(app: Arc<AppInfo>, grants: &FlowGrants) -> wasmtime::Result<Self> {
        let cpu = Arc::new(CpuMeter::new(app.limits.cpu_time));
        let stdout = LogOutput::new(&app, "stdout", &cpu);
        let stderr = LogOutput::new(&app, "stderr", &cpu);
        // No ambient authority: no host environment, no files, no network;
        // stdin is empty and stdout/stderr go to the host log. Only what the
        // manifest grants is added.
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdout)
            .stderr(stderr)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .envs(&grants.env);
        if let Some(dir) = &grants.read_only_dir {
            wasi.preopened_dir(dir, GRANTED_DIR_GUEST_PATH, FsPerms::ReadOnly)?;
        }
        Ok(Self {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: ExecutionLimiter::new(app.limits.max_memory),
            cpu,
            app,
        })
    }
}

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
        let level = match level {
            Level::Trace => tracing::Level::TRACE,
            Level::Debug => tracing::Level::DEBUG,
            Level::Info => tracing::Level::INFO,
            Level::Warn => tracing::Level::WARN,
            Level::Error => tracing::Level::ERROR,
        };
        stdio::emit(&self.app, level, "log", &message);
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
