//! Running flows: one wasmtime engine and linker for the host, one
//! pre-instantiated component per flow, one fresh store per execution.

pub(crate) mod bindings;
mod capabilities;
pub(crate) mod connection;
mod cpu;
mod ctx;
pub(crate) mod flag;
mod groups;
mod history;
pub(crate) mod http;
pub(crate) mod keyvalue;
mod limits;
mod log;
mod properties;
pub(crate) mod queue;
mod scheduler;
mod stdio;
mod wasi;

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher};
use std::num::NonZero;
use std::path::Path;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::error::Context as _;
use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy,
    PoolingAllocationConfig, Store, UpdateDeadline,
};

pub(crate) use connection::{ConnectionShared, HostConnection, Outbound};
use ctx::FlowCtx;
pub(crate) use history::Start;
pub(crate) use limits::{AppMemory, LimitExceeded};
pub(crate) use scheduler::Lane;
use scheduler::Scheduler;
pub(crate) use stdio::guest_line;
use tracing::Instrument as _;

use crate::app::{AppInfo, AppStats};
use crate::manifest::AppSpec;
use crate::manifest::spec::{FlowGrants, HandlerSpec};
use crate::metrics::ExecutionKind;

/// How often the engine's epoch advances while no execution waits for a
/// turn. At every tick an execution's CPU time is checked and the execution
/// yields its turn (see [`scheduler`]), so a runaway loop is stopped within
/// a tick of its limit and a worker serves the network at least this often.
/// Kept long so that an idle or lightly loaded host wakes rarely.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How often the epoch advances while executions wait for a turn: a tick is
/// a guest's time slice, and an app with work to run waits about a tick per
/// busy app. Short enough that an echo next to hundreds of spinning
/// executions answers in milliseconds (`bench/run.sh fairness`: 10 ms
/// slices gave a p99 three to four times that of 2 ms ones), long enough
/// that the few microseconds of a yield are well under 1% of a slice.
const CONTENDED_TICK: Duration = Duration::from_millis(2);

/// How the host's engine is set up.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuntimeOptions {
    /// Keep compiled components in this directory, so a restart does not
    /// compile them again.
    pub(crate) cache_dir: Option<std::path::PathBuf>,
    /// Pre-allocate instance slots (the pooling allocator) instead of
    /// mapping memory for every instance.
    pub(crate) pool: Option<PoolSize>,
}

/// How many instances may live at once, and how large their memory may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolSize {
    instances: u32,
    max_memory: usize,
}

impl PoolSize {
    /// Beyond this many slots the pool's address-space reservation stops
    /// paying for itself; such hosts allocate on demand.
    const MAX_INSTANCES: u32 = 4096;

    /// The pool `apps` need: each app's execution slots, plus its slots for
    /// instances kept for a connection where a handler keeps them (reused
    /// instances, connection-mode sessions); `None` when that is more than
    /// the pool should hold.
    pub(crate) fn for_apps(apps: &[AppSpec]) -> Option<Self> {
        let mut instances: u64 = 0;
        let mut max_memory = 0;
        for app in apps {
            let limits = &app.limits;
            instances += limits.max_executions as u64;
            let keeps_instances = app
                .triggers
                .iter()
                .flat_map(|trigger| &trigger.handlers)
                .any(HandlerSpec::keeps_an_instance);
            if keeps_instances {
                instances += limits.max_reused_instances as u64;
            }
            max_memory = max_memory.max(limits.max_memory);
        }
        let instances = u32::try_from(instances).ok()?;
        (instances > 0 && instances <= Self::MAX_INSTANCES).then_some(Self {
            instances,
            max_memory,
        })
    }

    fn allocation_strategy(self) -> InstanceAllocationStrategy {
        let n = self.instances;
        let mut pooling = PoolingAllocationConfig::new();
        pooling
            .total_component_instances(n)
            .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_FLOW))
            .max_core_instances_per_component(CORE_INSTANCES_PER_FLOW)
            .total_memories(n.saturating_mul(MEMORIES_PER_FLOW))
            .max_memories_per_component(MEMORIES_PER_FLOW)
            .total_tables(n.saturating_mul(TABLES_PER_FLOW))
            .max_tables_per_component(TABLES_PER_FLOW)
            .total_stacks(n)
            .max_memory_size(self.max_memory)
            // Returning a slot's pages to the kernel flushes TLBs on every
            // CPU; batching the returns makes that rarer.
            .decommit_batch_size(DECOMMIT_BATCH)
            // Small, hot regions are cheaper to zero than to return.
            .async_stack_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(TABLE_KEEP_RESIDENT)
            // The pages an execution wrote stay mapped and are copied back
            // from the component's memory image when the slot is freed, so
            // the next execution in the slot takes no page faults on them.
            // Where the kernel can say which pages were written (Linux 6.7+,
            // `PAGEMAP_SCAN`), only those are reset; elsewhere wasmtime
            // resets the slot's lowest `keep_resident` bytes and returns the
            // rest to the kernel, as before.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT);
        InstanceAllocationStrategy::Pooling(pooling)
    }
}

/// A Rust flow built for `wasm32-wasip2` is a component of a few core
/// instances (the flow, WASI adapter shims), one or two memories and a few
/// tables; these bounds leave room for larger flows. They size the pool's
/// slots and cap every store (`limits::ExecutionLimiter`).
const CORE_INSTANCES_PER_FLOW: u32 = 16;
const DECOMMIT_BATCH: usize = 64;
const KEEP_RESIDENT: usize = 16 << 10;
/// A table of one page or less (512 functions, more than a Rust flow's
/// component has) is reset with a `memset` of the page; with more kept
/// resident, every table is reset with a `PAGEMAP_SCAN` system call, a
/// microsecond each, and a flow has two or three tables.
const TABLE_KEEP_RESIDENT: usize = 4 << 10;
/// Written pages of a linear memory reset in place rather than returned to
/// the kernel, per slot: far more than an execution of a small flow writes
/// (an echo writes 5 pages, 20 KiB), little enough that a full pool of 256
/// slots keeps at most 64 MiB resident for it.
const MEMORY_KEEP_RESIDENT: usize = 256 << 10;
const MEMORIES_PER_FLOW: u32 = 2;
const TABLES_PER_FLOW: u32 = 8;

impl RuntimeOptions {
    /// The default cache directory: `$WSFLOW_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/wsflow`, else `$HOME/.cache/wsflow`.
    pub(crate) fn default_cache_dir() -> Option<std::path::PathBuf> {
        use std::path::PathBuf;
        if let Some(dir) = std::env::var_os("WSFLOW_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            return Some(PathBuf::from(dir).join("wsflow"));
        }
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("wsflow"))
    }
}

/// The engine and linker shared by every app in the host.
#[derive(Clone)]
pub(crate) struct Runtime {
    engine: Engine,
    linker: Arc<Linker<FlowCtx>>,
    /// Components compiled for the apps loaded last, by content: flows (or
    /// apps) that use the same component file share one compilation.
    compiled: Arc<Mutex<Compiled>>,
    /// Turns to run guest work, shared fairly between the apps.
    scheduler: Scheduler,
    /// The on-disk cache of compiled components, if there is one.
    cache: Option<Cache>,
}

/// Compiled components by content, each with the last load that used it.
/// A reload forgets what it did not use ([`Runtime::forget_unused_since`]):
/// executions of older versions hold their own reference, so the map only
/// ever holds the components of the apps as loaded now.
#[derive(Default)]
struct Compiled {
    components: HashMap<ContentKey, (Component, u64)>,
    /// The current load.
    generation: u64,
}

/// Identifies component bytes by the bytes themselves. The hash only picks
/// the bucket: two keys are equal when their bytes are, so components that
/// share a hash (by chance, or made to by an app's author) are never
/// confused.
#[derive(Debug, Clone)]
struct ContentKey {
    hash: u64,
    bytes: Arc<[u8]>,
}

impl ContentKey {
    fn of(bytes: &[u8]) -> Self {
        let mut hasher = std::hash::DefaultHasher::new();
        bytes.hash(&mut hasher);
        Self {
            hash: hasher.finish(),
            bytes: bytes.into(),
        }
    }
}

impl PartialEq for ContentKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.bytes == other.bytes
    }
}

impl Eq for ContentKey {}

impl std::hash::Hash for ContentKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl Runtime {
    pub(crate) fn new(options: &RuntimeOptions) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let mut cache = None;
        if let Some(dir) = &options.cache_dir {
            // wasmtime keys each entry by the component's bytes and the
            // engine's settings and version, and recompiles an entry that
            // does not load (stale, foreign or damaged). It wants an
            // absolute path: `--cache-dir cache` is the current directory's.
            let dir = std::path::absolute(dir)
                .with_context(|| format!("the cache directory {}", dir.display()))?;
            let mut settings = CacheConfig::new();
            settings.with_directory(&dir);
            let opened = Cache::new(settings).with_context(|| {
                format!("setting up the compilation cache in {}", dir.display())
            })?;
            config.cache(Some(opened.clone()));
            cache = Some(opened);
        }
        if let Some(pool) = options.pool {
            config.allocation_strategy(pool.allocation_strategy());
        }
        let engine = Engine::new(&config).context("creating the WebAssembly engine")?;
        let scheduler = Scheduler::new(worker_threads());
        start_epoch_ticker(&engine, &scheduler);
        let mut linker = Linker::new(&engine);
        capabilities::add_to_linker(&mut linker)?;
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            compiled: Arc::default(),
            scheduler,
            cache,
        })
    }

    /// A lane on the host's scheduler, for one app: every flow of the app
    /// runs in it.
    pub(crate) fn lane(&self) -> Lane {
        self.scheduler.lane()
    }

    /// Compile a component file and check that this host can run it: every
    /// import satisfied, and `handle` or the lifecycle hooks (or both)
    /// exported with the right types. Which of them a handler may use is
    /// checked where the handler names the flow ([`FlowPre::role`]).
    pub(crate) fn load_flow(
        &self,
        app: &Arc<AppInfo>,
        lane: &Lane,
        name: &str,
        component: &Path,
        grants: FlowGrants,
    ) -> anyhow::Result<FlowPre> {
        let bytes = std::fs::read(component)
            .with_context(|| format!("reading component {}", component.display()))?;
        let component = self.compile(&bytes, component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .context("the component's imports do not match what wsflow provides")?;
        let handle = bindings::FlowIndices::new(&pre).ok().map(Arc::new);
        let hooks = bindings::hooks::HooksIndices::new(&pre).ok().map(Arc::new);
        if handle.is_none() && hooks.is_none() {
            anyhow::bail!(
                "the component exports neither the wsflow `handle` function nor the \
                 `wsflow:flow/lifecycle` hooks; build it with wsflow-sdk and `wsflow_sdk::export!`"
            );
        }
        Ok(FlowPre {
            name: name.into(),
            app: Arc::clone(app),
            lane: lane.clone(),
            grants: Arc::new(grants),
            pre,
            handle,
            hooks,
        })
    }
}

/// The async runtime's worker threads: as many polls of guest work may run
/// at once. Called from inside the runtime (the loader runs on its blocking
/// pool); outside one, the CPUs this process may use.
fn worker_threads() -> usize {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime.metrics().num_workers(),
        Err(_) => std::thread::available_parallelism().map_or(1, NonZero::get),
    }
}

/// Advance the engine's epoch for as long as the engine lives: every
/// [`EPOCH_TICK`], every [`CONTENDED_TICK`] while executions wait for a
/// turn, and at once when they start waiting.
fn start_epoch_ticker(engine: &Engine, scheduler: &Scheduler) {
    let weak = engine.weak();
    let contention = scheduler.clone();
    let ticker = std::thread::Builder::new()
        .name("wsflow-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                let tick = if contention.contended() {
                    CONTENDED_TICK
                } else {
                    EPOCH_TICK
                };
                std::thread::park_timeout(tick);
            }
        })
        .expect("spawning the epoch thread");
    scheduler.unpark_on_contention(ticker.thread().clone());
}

impl Runtime {
    /// Compile a component file ahead of serving it (`wsflow build`), into
    /// the on-disk cache if there is one, and say whether the cache held it.
    pub(crate) fn precompile(&self, component: &Path) -> anyhow::Result<Precompiled> {
        let bytes = std::fs::read(component)
            .with_context(|| format!("reading component {}", component.display()))?;
        let hits = self.cache.as_ref().map(Cache::cache_hits);
        self.compile(&bytes, component)?;
        Ok(match (&self.cache, hits) {
            (Some(cache), Some(before)) if cache.cache_hits() > before => Precompiled::FromCache,
            (Some(cache), _) => Precompiled::Cached(cache.directory().clone()),
            (None, _) => Precompiled::NotCached,
        })
    }

    /// Compile component bytes, or reuse an earlier compilation of the same
    /// bytes.
    fn compile(&self, bytes: &[u8], path: &Path) -> anyhow::Result<Component> {
        let key = ContentKey::of(bytes);
        {
            let mut compiled = self.compiled.lock().expect("not poisoned");
            let generation = compiled.generation;
            if let Some((component, used)) = compiled.components.get_mut(&key) {
                *used = generation;
                return Ok(component.clone());
            }
        }
        let component = Component::new(&self.engine, bytes)
            .with_context(|| format!("compiling component {}", path.display()))?;
        let mut compiled = self.compiled.lock().expect("not poisoned");
        let generation = compiled.generation;
        compiled
            .components
            .insert(key, (component.clone(), generation));
        Ok(component)
    }

    /// Start a load of every app: the components it compiles or finds
    /// compiled are marked as used by it. Returns the load's generation.
    pub(crate) fn begin_load(&self) -> u64 {
        let mut compiled = self.compiled.lock().expect("not poisoned");
        compiled.generation += 1;
        compiled.generation
    }

    /// Forget the compiled components no load since `generation` used: the
    /// apps now serve other versions.
    pub(crate) fn forget_unused_since(&self, generation: u64) {
        let mut compiled = self.compiled.lock().expect("not poisoned");
        compiled
            .components
            .retain(|_, (_, used)| *used >= generation);
    }

    /// How many compiled components are kept.
    #[cfg(test)]
    fn compiled_components(&self) -> usize {
        self.compiled.lock().expect("not poisoned").components.len()
    }
}

/// Where [`Runtime::precompile`] got a compiled component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Precompiled {
    /// The on-disk cache held it.
    FromCache,
    /// Compiled, and stored in the cache in this directory (or already
    /// compiled by this runtime).
    Cached(std::path::PathBuf),
    /// Compiled; there is no cache to keep it in.
    NotCached,
}

/// How one execution ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// `handle` returned `ok`.
    Completed,
    /// `handle` returned `err` with this message.
    Failed(String),
    /// The guest trapped (panic, unreachable, out-of-bounds access, stack
    /// overflow, ...).
    Trapped(wasmtime::Error),
    /// The execution ran into one of the app's limits and was stopped.
    LimitExceeded(LimitExceeded),
}

/// How long an execution's instance lives, which decides the limits it
/// counts against.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lifetime {
    /// Data mode: one message. Takes one of the app's `max_executions`
    /// slots while it runs, and is stopped after `wall_time`.
    Message { wall_time: Duration },
    /// Connection mode: the connection's life. Capped by the app's
    /// `max_reused_instances` (the connection took a slot at admission);
    /// they take no execution slot, so sessions waiting for their clients
    /// do not hold up the app's other handlers.
    Connection,
}

/// A flow compiled and linked, ready to be instantiated once per execution.
#[derive(Clone)]
pub(crate) struct FlowPre {
    name: Arc<str>,
    app: Arc<AppInfo>,
    /// The app's lane on the host's scheduler.
    lane: Lane,
    grants: Arc<FlowGrants>,
    pre: InstancePre<FlowCtx>,
    /// Where `handle` is, if the component exports it.
    handle: Option<Arc<bindings::FlowIndices>>,
    /// Where the lifecycle hooks are, if the component exports them.
    hooks: Option<Arc<bindings::hooks::HooksIndices>>,
}

/// What a handler uses a flow for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Its `flow`: `handle`.
    Handle,
    /// Its `on_connect` or `on_close`: the lifecycle hooks.
    Hooks,
}

impl FlowPre {
    pub(crate) fn app(&self) -> &Arc<AppInfo> {
        &self.app
    }

    /// Whether the component exports what `role` calls.
    pub(crate) fn has(&self, role: Role) -> bool {
        match role {
            Role::Handle => self.handle.is_some(),
            Role::Hooks => self.hooks.is_some(),
        }
    }

    /// Check that the component exports what `role` calls; the error says
    /// what is missing and how to add it.
    pub(crate) fn role(&self, role: Role) -> anyhow::Result<()> {
        match role {
            Role::Handle if self.handle.is_none() => anyhow::bail!(
                "flow `{}` does not export the wsflow `handle` function, so it cannot be a \
                 handler's `flow`; implement `wsflow_sdk::Flow::handle`, or name it in \
                 `on_connect`/`on_close` only",
                self.name
            ),
            Role::Hooks if self.hooks.is_none() => anyhow::bail!(
                "flow `{}` does not export the `wsflow:flow/lifecycle` hooks, so it cannot be \
                 a handler's `on_connect` or `on_close`; rebuild it with this wsflow-sdk, whose \
                 `export!` exports them (implement `Flow::on_connect` / `Flow::on_close`)",
                self.name
            ),
            Role::Handle | Role::Hooks => Ok(()),
        }
    }

    /// Run the flow once in a fresh store, within the app's limits.
    ///
    /// A session (connection mode) runs in an `exec` span of its own; a
    /// message's execution logs in its connection's span, which carries the
    /// flow (`data::run`): a span per message would cost more than some
    /// messages do.
    pub(crate) async fn execute(
        &self,
        event: &bindings::Event,
        connection: HostConnection,
        lifetime: Lifetime,
    ) -> Outcome {
        let run = self.run_fresh(event, connection, lifetime);
        match lifetime {
            Lifetime::Message { .. } => run.await,
            Lifetime::Connection => {
                let span = tracing::info_span!("exec", flow = &*self.name, instance = "fresh");
                run.instrument(span).await
            }
        }
    }

    async fn run_fresh(
        &self,
        event: &bindings::Event,
        connection: HostConnection,
        lifetime: Lifetime,
    ) -> Outcome {
        {
            let (_slot, wall_time) = match lifetime {
                Lifetime::Message { wall_time } => {
                    (Some(self.execution_slot().await), Some(wall_time))
                }
                Lifetime::Connection => (None, None),
            };
            let clock = ExecutionClock::start(match lifetime {
                Lifetime::Message { .. } => ExecutionKind::Message,
                Lifetime::Connection => ExecutionKind::Session,
            });
            let mut store = match self.new_store() {
                Ok(store) => store,
                Err(error) => return self.finish(Err(error), None, clock),
            };
            let result = self
                .run_guest(&mut store, wall_time, async |store| {
                    let flow = self.instantiate_handle(store).await?;
                    let handle = store.data_mut().table.push(connection)?;
                    flow.call_handle(store, event, handle).await
                })
                .await;
            self.finish(result, Some(store.data()), clock)
        }
    }

    /// Instantiate the flow once for a connection whose messages will all be
    /// handled by this instance (`instance = "reuse"`): state in the
    /// instance survives from one message to the next.
    pub(crate) async fn instantiate(
        &self,
        connection: HostConnection,
    ) -> Result<FlowInstance, Outcome> {
        let clock = ExecutionClock::start(ExecutionKind::Message);
        // Guest output streams log in the span current when the store is
        // made: the connection's, which carries the flow (`data::run`).
        let mut store = self
            .new_store()
            .map_err(|error| self.finish(Err(error), None, clock))?;
        let prepared = self
            .run_guest(&mut store, None, async |store| {
                let flow = self.instantiate_handle(store).await?;
                let handle = store.data_mut().table.push(connection)?;
                Ok((flow, handle.rep()))
            })
            .await;
        match prepared {
            Ok((flow, handle)) => Ok(FlowInstance {
                pre: self.clone(),
                store,
                flow,
                handle,
            }),
            Err(error) => Err(self.finish(Err(error), Some(store.data()), clock)),
        }
    }

    /// Run `on-connect` in a fresh instance, as one execution of the app
    /// (an execution slot, `wall_time`, the CPU limit), with what its
    /// `opening` calls asked for. `Err` is how the execution failed,
    /// already counted.
    pub(crate) async fn on_connect(
        &self,
        request: &bindings::hooks::ConnectRequest,
    ) -> Result<(bindings::hooks::Decision, Start), Outcome> {
        let mut decision = None;
        let outcome = self
            .run_hook("on_connect", async |hooks, store| {
                let lifecycle = hooks.wsflow_flow_lifecycle();
                store.data_mut().opening.begin();
                let decided = lifecycle.call_on_connect(&mut *store, request).await?;
                decision = Some((decided, store.data_mut().opening.take()));
                Ok(Ok(()))
            })
            .await;
        match (outcome, decision) {
            (Outcome::Completed, Some(decision)) => Ok(decision),
            (outcome, _) => Err(outcome),
        }
    }

    /// Run `on-close` in a fresh instance, as one execution of the app.
    pub(crate) async fn on_close(&self, closed: &bindings::hooks::ClosedConnection) -> Outcome {
        self.run_hook("on_close", async |hooks, store| {
            let lifecycle = hooks.wsflow_flow_lifecycle();
            lifecycle.call_on_close(store, closed).await
        })
        .await
    }

    async fn run_hook(
        &self,
        hook: &'static str,
        call: impl AsyncFnOnce(
            bindings::hooks::Hooks,
            &mut Store<FlowCtx>,
        ) -> wasmtime::Result<Result<(), String>>,
    ) -> Outcome {
        let span = tracing::info_span!("exec", flow = &*self.name, hook);
        async {
            let _slot = self.execution_slot().await;
            let clock = ExecutionClock::start(ExecutionKind::Hook);
            let mut store = match self.new_store() {
                Ok(store) => store,
                Err(error) => return self.finish(Err(error), None, clock),
            };
            let wall_time = Some(self.app.limits.wall_time);
            let result = self
                .run_guest(&mut store, wall_time, async |store| {
                    let hooks = self.hooks.as_ref().expect("checked by `role`");
                    let instance = self.pre.instantiate_async(&mut *store).await?;
                    let hooks = hooks.load(&mut *store, &instance)?;
                    call(hooks, store).await
                })
                .await;
            self.finish(result, Some(store.data()), clock)
        }
        .instrument(span)
        .await
    }

    /// A fresh instance of the component, with `handle` looked up.
    async fn instantiate_handle(
        &self,
        store: &mut Store<FlowCtx>,
    ) -> wasmtime::Result<bindings::Flow> {
        let handle = self.handle.as_ref().expect("checked by `role`");
        let instance = self.pre.instantiate_async(&mut *store).await?;
        handle.load_unchecked(store, &instance)
    }

    /// The one way guest work runs: on the app's lane, every poll charged
    /// to the store's CPU meter, its first poll starting the time slice
    /// ([`start_slice`]), within `wall_time` if it has one. Every kind of
    /// execution (a fresh instance, a reused one, a hook) and the
    /// instantiation of a reused instance go through here; what differs is
    /// only `work`, whether it holds an execution slot and how it is
    /// counted ([`FlowPre::finish`]). The work is pinned here, once: the
    /// wrappers around it hold a pointer, not a copy of a large future.
    async fn run_guest<T>(
        &self,
        store: &mut Store<FlowCtx>,
        wall_time: Option<Duration>,
        work: impl AsyncFnOnce(&mut Store<FlowCtx>) -> wasmtime::Result<T>,
    ) -> wasmtime::Result<T> {
        let cpu = Arc::clone(&store.data().cpu);
        let work = pin!(async {
            start_slice(store);
            work(store).await
        });
        let run = self.lane.run(cpu.run(work));
        match wall_time {
            None => run.await,
            Some(limit) => match tokio::time::timeout(limit, run).await {
                Ok(result) => result,
                Err(_elapsed) => Err(wasmtime::Error::new(LimitExceeded::WallTime { limit })),
            },
        }
    }

    async fn execution_slot(&self) -> tokio::sync::OwnedSemaphorePermit {
        // Waits while the app runs as many executions as it may.
        Arc::clone(&self.app.executions)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    fn new_store(&self) -> wasmtime::Result<Store<FlowCtx>> {
        let ctx = FlowCtx::new(Arc::clone(&self.app), &self.grants)?;
        let mut store = Store::new(self.pre.engine(), ctx);
        store.limiter(|ctx| &mut ctx.limiter);
        store.set_hostcall_fuel(self.app.hostcall_fuel());
        // Runs inside a poll: the meter counts that poll up to now. At
        // every tick the execution gives its turn to the next in line (see
        // `scheduler`).
        store.epoch_deadline_callback(|ctx| {
            ctx.data().cpu.check().map_err(wasmtime::Error::new)?;
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(scheduler::yield_turn()),
            ))
        });
        Ok(store)
    }

    /// Classify how a call ended and count it, with its time.
    fn finish(
        &self,
        result: wasmtime::Result<Result<(), String>>,
        ctx: Option<&FlowCtx>,
        clock: ExecutionClock,
    ) -> Outcome {
        let outcome = match result {
            Ok(Ok(())) => Outcome::Completed,
            Ok(Err(message)) => Outcome::Failed(message),
            Err(trap) => match limit_behind(&trap, ctx) {
                Some(exceeded) => Outcome::LimitExceeded(exceeded),
                None => Outcome::Trapped(trap),
            },
        };
        let stats = &self.app.stats;
        let counter = match &outcome {
            Outcome::Completed => &stats.executions_ok,
            Outcome::Failed(_) => &stats.executions_failed,
            Outcome::Trapped(_) => &stats.executions_trapped,
            Outcome::LimitExceeded(_) => &stats.executions_limit_exceeded,
        };
        AppStats::add(counter, 1);
        let metrics = &stats.metrics;
        metrics.record_execution(clock.kind, clock.started.elapsed());
        if let Outcome::LimitExceeded(exceeded) = &outcome {
            metrics.record_limit(exceeded.limit());
        }
        outcome
    }
}

/// A flow instance that serves every message of one connection.
pub(crate) struct FlowInstance {
    pre: FlowPre,
    store: Store<FlowCtx>,
    flow: bindings::Flow,
    /// The table index of the connection resource, lent to every call.
    handle: u32,
}

impl FlowInstance {
    /// Handle one message. Each call is one execution for the CPU limit,
    /// `wall_time` and the app's execution slots. The instance comes back
    /// only when the call completed or failed normally: after a trap or a
    /// limit its state is not to be trusted, and it is dropped.
    pub(crate) async fn call(
        mut self,
        event: &bindings::Event,
        wall_time: Duration,
    ) -> (Outcome, Option<Self>) {
        // In the connection's span, which carries the flow (`data::run`).
        let outcome = async {
            let _permit = self.pre.execution_slot().await;
            let clock = ExecutionClock::start(ExecutionKind::Message);
            let ctx = self.store.data_mut();
            ctx.cpu.reset();
            ctx.limiter.exceeded = None;
            let connection = wasmtime::component::Resource::new_borrow(self.handle);
            let flow = &self.flow;
            let result = self
                .pre
                .run_guest(&mut self.store, Some(wall_time), async |store| {
                    flow.call_handle(store, event, connection).await
                })
                .await;
            self.pre.finish(result, Some(self.store.data()), clock)
        }
        .await;
        match outcome {
            Outcome::Completed | Outcome::Failed(_) => (outcome, Some(self)),
            Outcome::Trapped(_) | Outcome::LimitExceeded(_) => (outcome, None),
        }
    }
}

/// Give the guest work about to run in `store` its slice: until the next
/// epoch tick. Called in the work's first poll, which comes with a turn on
/// the scheduler; set before, while the execution waited for its turn, the
/// deadline could have passed by the time it ran, and the guest would stop
/// to give up a turn it had just been given. Under load that kept the
/// executions queued (each one yielding let the next wait), and stopped
/// 40–60% of them within microseconds of their start. After a tick, wasmtime
/// sets the next deadline itself (`UpdateDeadline::YieldCustom`), again
/// when the execution runs on.
fn start_slice(store: &mut Store<FlowCtx>) {
    store.set_epoch_deadline(1);
}

/// When an execution started and what it runs as, for its time.
#[derive(Debug, Clone, Copy)]
struct ExecutionClock {
    kind: ExecutionKind,
    started: Instant,
}

impl ExecutionClock {
    fn start(kind: ExecutionKind) -> Self {
        Self {
            kind,
            started: Instant::now(),
        }
    }
}

/// The limit that caused `trap`, if one did: the error itself (CPU, wall
/// clock, slow client) or the memory refusal the limiter recorded, which
/// the guest turns into an abort.
fn limit_behind(trap: &wasmtime::Error, ctx: Option<&FlowCtx>) -> Option<LimitExceeded> {
    if let Some(exceeded) = trap.downcast_ref::<LimitExceeded>() {
        return Some(exceeded.clone());
    }
    ctx.and_then(|ctx| ctx.limiter.exceeded.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_forgets_the_components_it_no_longer_uses() {
        let runtime = Runtime::new(&RuntimeOptions::default()).unwrap();
        let component = |n: u32| {
            let text = format!("(component (core module (func (export \"f{n}\"))))");
            wat::parse_str(text).unwrap()
        };
        let path = Path::new("test.wasm");
        runtime.compile(&component(1), path).unwrap();
        runtime.compile(&component(2), path).unwrap();
        assert_eq!(runtime.compiled_components(), 2);
        // A reload that uses the second and a third.
        let generation = runtime.begin_load();
        runtime.compile(&component(2), path).unwrap();
        runtime.compile(&component(3), path).unwrap();
        runtime.forget_unused_since(generation);
        assert_eq!(runtime.compiled_components(), 2);
        // A hundred reloads of new builds keep only the last one's.
        for n in 4..104 {
            let generation = runtime.begin_load();
            runtime.compile(&component(n), path).unwrap();
            runtime.forget_unused_since(generation);
        }
        assert_eq!(runtime.compiled_components(), 1);
    }

    #[test]
    fn components_in_one_hash_bucket_are_told_apart_by_their_bytes() {
        let a = ContentKey::of(b"component a");
        let mut b = ContentKey::of(b"component b");
        assert_ne!(a, b);
        // As if the two had collided: same length, same hash.
        b.hash = a.hash;
        assert_ne!(a, b);
        let mut compiled = HashMap::new();
        compiled.insert(a.clone(), "a");
        compiled.insert(b.clone(), "b");
        assert_eq!(compiled.len(), 2);
        assert_eq!(compiled[&a], "a");
        assert_eq!(compiled[&b], "b");
        assert_eq!(compiled[&ContentKey::of(b"component a")], "a");
    }
}
