//! The `log` capability (`wsflow:flow/log`): a flow's log lines, tagged
//! with its app by the host and within the app's log budget
//! ([`stdio::emit`]).

use wasmtime::component::{HasSelf, Linker};

use super::bindings::Level;
use super::bindings::wsflow::flow::log;
use super::capabilities::Capability;
use super::ctx::FlowCtx;
use super::stdio;

pub(super) const CAPABILITY: Capability = Capability {
    name: "log",
    add_to_linker,
};

fn add_to_linker(linker: &mut Linker<FlowCtx>) -> wasmtime::Result<()> {
    log::add_to_linker::<_, HasSelf<FlowCtx>>(linker, |ctx| ctx)
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
