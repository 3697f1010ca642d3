//! Running flows: one wasmtime engine and linker for the host, one
//! pre-instantiated component per flow, one fresh store per execution.

pub mod bindings;
pub mod connection;
mod ctx;
mod stdio;

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::path::Path;
use std::sync::{Arc, Mutex};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::error::Context as _;
use wasmtime::{Config, Engine, Store};

pub use connection::{ConnectionShared, HostConnection, Outbound};
pub use ctx::{ExecutionStats, FlowCtx};

use crate::loader::AppInfo;

/// The engine and linker shared by every app in the host.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<FlowCtx>>,
    /// Components compiled so far, by content: flows (or apps) that use the
    /// same component file share one compilation.
    compiled: Arc<Mutex<HashMap<ContentKey, Component>>>,
}

/// Identifies component bytes: their length and a hash of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ContentKey {
    len: usize,
    hash: u64,
}

impl ContentKey {
    fn of(bytes: &[u8]) -> Self {
        let mut hasher = std::hash::DefaultHasher::new();
        bytes.hash(&mut hasher);
        Self {
            len: bytes.len(),
            hash: hasher.finish(),
        }
    }
}

impl Runtime {
    pub fn new() -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        let engine = Engine::new(&config).context("creating the WebAssembly engine")?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .context("linking WASI into the flow linker")?;
        bindings::Flow::add_to_linker::<_, HasSelf<FlowCtx>>(&mut linker, |ctx| ctx)
            .context("linking the wsflow interfaces")?;
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            compiled: Arc::default(),
        })
    }

    /// Compile a component file and check that it is a flow this host can
    /// run: every import satisfied, `handle` exported with the right type.
    pub fn load_flow(
        &self,
        app: &Arc<AppInfo>,
        name: &str,
        component: &Path,
    ) -> anyhow::Result<FlowPre> {
        let bytes = std::fs::read(component)
            .with_context(|| format!("reading component {}", component.display()))?;
        let component = self.compile(&bytes, component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .context("the component's imports do not match what wsflow provides")?;
        let pre = bindings::FlowPre::new(pre)
            .context("the component does not export the wsflow `handle` function")?;
        Ok(FlowPre {
            name: name.into(),
            app: Arc::clone(app),
            pre,
        })
    }
}

impl Runtime {
    /// Compile component bytes, or reuse an earlier compilation of the same
    /// bytes.
    fn compile(&self, bytes: &[u8], path: &Path) -> anyhow::Result<Component> {
        let key = ContentKey::of(bytes);
        if let Some(component) = self.compiled.lock().expect("not poisoned").get(&key) {
            return Ok(component.clone());
        }
        let component = Component::new(&self.engine, bytes)
            .with_context(|| format!("compiling component {}", path.display()))?;
        self.compiled
            .lock()
            .expect("not poisoned")
            .insert(key, component.clone());
        Ok(component)
    }
}

/// How one execution ended.
#[derive(Debug)]
pub enum Outcome {
    /// `handle` returned `ok`.
    Completed,
    /// `handle` returned `err` with this message.
    Failed(String),
    /// The guest trapped (panic, unreachable, out-of-bounds access, ...).
    Trapped(wasmtime::Error),
}

/// A flow compiled and linked, ready to be instantiated once per execution.
#[derive(Clone)]
pub struct FlowPre {
    name: Arc<str>,
    app: Arc<AppInfo>,
    pre: bindings::FlowPre<FlowCtx>,
}

impl FlowPre {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn app(&self) -> &Arc<AppInfo> {
        &self.app
    }

    /// Run the flow once in a fresh store.
    pub async fn execute(
        &self,
        event: &bindings::Event,
        connection: HostConnection,
        connection_id: u64,
    ) -> (Outcome, ExecutionStats) {
        let ctx = FlowCtx::new(Arc::clone(&self.app), Arc::clone(&self.name), connection_id);
        let mut store = Store::new(self.pre.engine(), ctx);
        store.limiter(|ctx| &mut ctx.limits);
        let outcome = match self.call(&mut store, event, connection).await {
            Ok(Ok(())) => Outcome::Completed,
            Ok(Err(message)) => Outcome::Failed(message),
            Err(trap) => Outcome::Trapped(trap),
        };
        (outcome, store.data().stats)
    }

    async fn call(
        &self,
        store: &mut Store<FlowCtx>,
        event: &bindings::Event,
        connection: HostConnection,
    ) -> wasmtime::Result<Result<(), String>> {
        let flow = self.pre.instantiate_async(&mut *store).await?;
        let handle = store.data_mut().table.push(connection)?;
        flow.call_handle(&mut *store, event, handle).await
    }
}
