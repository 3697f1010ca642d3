//! The `wasi` capability: the WASI 0.2 interfaces (wasmtime-wasi), with no
//! ambient authority. No host environment, no files, no network; stdin is
//! empty and stdout/stderr go to the host log, within the app's budget and
//! charged to the execution's CPU time. Only what `[flows.NAME]` grants is
//! added: `env` variables and a `read_only_dir` mounted at `/data`.

use std::sync::Arc;

use wasmtime::component::Linker;
use wasmtime_wasi::filesystem::FsPerms;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::capabilities::Capability;
use super::cpu::CpuMeter;
use super::ctx::FlowCtx;
use super::stdio::LogOutput;
use crate::app::AppInfo;
use crate::manifest::spec::FlowGrants;

/// Where a flow's directory grant appears inside the sandbox.
pub(crate) const GRANTED_DIR_GUEST_PATH: &str = "/data";

pub(super) const CAPABILITY: Capability = Capability {
    name: "wasi",
    add_to_linker,
};

fn add_to_linker(linker: &mut Linker<FlowCtx>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)
}

/// An execution's WASI state: its context, built when the flow first calls
/// WASI (most executions of a small flow never do, and building it is a
/// good part of a fresh execution's cost), and the grants it is built from.
pub(super) struct ExecutionWasi {
    ctx: Option<WasiCtx>,
    grants: Arc<FlowGrants>,
}

impl ExecutionWasi {
    /// The state of an execution with `grants`. A directory grant can fail
    /// to open: that is found here, when the execution starts, not in the
    /// middle of a WASI call.
    pub(super) fn new(
        app: &Arc<AppInfo>,
        grants: &Arc<FlowGrants>,
        cpu: &Arc<CpuMeter>,
    ) -> wasmtime::Result<Self> {
        let ctx = match &grants.read_only_dir {
            Some(dir) => {
                let mut wasi = builder(app, grants, cpu);
                wasi.preopened_dir(dir, GRANTED_DIR_GUEST_PATH, FsPerms::ReadOnly)?;
                Some(wasi.build())
            }
            None => None,
        };
        Ok(Self {
            ctx,
            grants: Arc::clone(grants),
        })
    }
}

/// The WASI context of an execution, but for a directory grant.
fn builder(app: &Arc<AppInfo>, grants: &FlowGrants, cpu: &Arc<CpuMeter>) -> WasiCtxBuilder {
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
        let wasi = &mut self.wasi;
        let ctx = match &mut wasi.ctx {
            Some(ctx) => ctx,
            // A flow with a directory grant has had its context built.
            ctx @ None => ctx.insert(builder(&self.app, &wasi.grants, &self.cpu).build()),
        };
        WasiCtxView {
            ctx,
            table: &mut self.table,
        }
    }
}
