//! Per-execution store state: what one flow execution can reach.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::filesystem::FsPerms;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

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
    /// Built when the flow first calls WASI: most executions of a small flow
    /// never do, and building it is a good part of a fresh execution's cost.
    wasi: Option<WasiCtx>,
    grants: Arc<FlowGrants>,
    pub(super) table: ResourceTable,
    pub(super) limiter: ExecutionLimiter,
    pub(super) cpu: Arc<CpuMeter>,
    pub(super) app: Arc<AppInfo>,
}

impl FlowCtx {
    pub(super) fn new(app: Arc<AppInfo>, grants: &Arc<FlowGrants>) -> wasmtime::Result<Self> {
        let cpu = Arc::new(CpuMeter::new(app.limits.cpu_time));
        // A directory grant can fail to open: that is found here, when the
        // execution starts, not in the middle of a WASI call.
        let wasi = match &grants.read_only_dir {
            Some(dir) => {
                let mut wasi = wasi_builder(&app, grants, &cpu);
                wasi.preopened_dir(dir, GRANTED_DIR_GUEST_PATH, FsPerms::ReadOnly)?;
                Some(wasi.build())
            }
            None => None,
        };
        Ok(Self {
            wasi,
            grants: Arc::clone(grants),
            table: ResourceTable::new(),
            limiter: ExecutionLimiter::new(app.limits.max_memory, Arc::clone(&app.memory)),
            cpu,
            app,
        })
    }
}

/// The WASI context of an execution, but for a directory grant. No ambient
/// authority: no host environment, no files, no network; stdin is empty and
/// stdout/stderr go to the host log. Only what the manifest grants is added.
fn wasi_builder(app: &Arc<AppInfo>, grants: &FlowGrants, cpu: &Arc<CpuMeter>) -> WasiCtxBuilder {
    let mut wasi = WasiCtx::builder();
    wasi.stdout(LogOutput::new(app, "stdout", cpu))
        .stderr(LogOutput::new(app, "stderr", cpu))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .envs(&grants.env);
    wasi
}

impl WasiView for FlowCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let ctx = match &mut self.wasi {
            Some(ctx) => ctx,
            // A flow with a directory grant has had its context built.
            wasi @ None => wasi.insert(wasi_builder(&self.app, &self.grants, &self.cpu).build()),
        };
        WasiCtxView {
            ctx,
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
