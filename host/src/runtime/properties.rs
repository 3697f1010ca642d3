//! The `properties` capability (`wsflow:flow/properties`): the app's
//! `[properties]`, read-only, the app's own only.

use wasmtime::component::{HasSelf, Linker};

use super::bindings::wsflow::flow::properties;
use super::capabilities::Capability;
use super::ctx::FlowCtx;

pub(super) const CAPABILITY: Capability = Capability {
    name: "properties",
    add_to_linker,
};

fn add_to_linker(linker: &mut Linker<FlowCtx>) -> wasmtime::Result<()> {
    properties::add_to_linker::<_, HasSelf<FlowCtx>>(linker, |ctx| ctx)
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
