//! Per-execution limits: linear memory, tables, instances (a resource
//! limiter) and the error every limit ends an execution with. CPU time is
//! measured in `cpu.rs`; wall-clock time is enforced by the caller.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::metrics::Limit;

/// A limit an execution ran into. The execution ends; its connection is
/// closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LimitExceeded {
    #[error(
        "memory limit: tried to grow linear memory to {requested} bytes (all memories together), {over} over the limit of {limit}"
    , over = requested - limit)]
    Memory { requested: usize, limit: usize },
    #[error(
        "app memory limit: tried to grow linear memory by {requested} bytes while the app's instances hold {held}, over its app_memory of {limit}"
    )]
    AppMemory {
        requested: usize,
        held: usize,
        limit: usize,
    },
    #[error("CPU time limit: ran {used:?}, {over:?} over the limit of {limit:?}", over = used.saturating_sub(*limit))]
    CpuTime { used: Duration, limit: Duration },
    #[error("wall-clock limit: still running after {limit:?}")]
    WallTime { limit: Duration },
    #[error("slow client: a send waited {waited:?} for a client that does not read")]
    SlowClient { waited: Duration },
}

impl LimitExceeded {
    /// Which limit it is, for the metrics.
    pub(crate) fn limit(&self) -> Limit {
        match self {
            LimitExceeded::Memory { .. } => Limit::Memory,
            LimitExceeded::AppMemory { .. } => Limit::AppMemory,
            LimitExceeded::CpuTime { .. } => Limit::CpuTime,
            LimitExceeded::WallTime { .. } => Limit::WallTime,
            LimitExceeded::SlowClient { .. } => Limit::SlowClient,
        }
    }

    /// Whether the client caused it (close 1008) rather than the flow (1011).
    pub(crate) fn is_client_fault(&self) -> bool {
        matches!(self, LimitExceeded::SlowClient { .. })
    }
}

/// Linear memory all of an app's instances hold together, against its
/// `app_memory`: each execution's limiter takes what its memories grow by
/// and gives it all back when its store is dropped.
#[derive(Debug)]
pub(crate) struct AppMemory {
    held: AtomicUsize,
    limit: usize,
}

impl AppMemory {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            held: AtomicUsize::new(0),
            limit,
        }
    }

    /// Bytes the app's instances hold now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Take `bytes` if they fit under the limit; else what is held now.
    fn take(&self, bytes: usize) -> Result<(), usize> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .map(drop)
    }

    fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Caps what one execution's store may hold — linear memory (all its
/// memories together), table elements, and how many instances, memories
/// and tables it has — and remembers the first refusal.
#[derive(Debug)]
pub(crate) struct ExecutionLimiter {
    max_memory: usize,
    /// Bytes of linear memory granted so far, over all the store's memories
    /// (and taken from `app`).
    memory: usize,
    app: Arc<AppMemory>,
    pub(super) exceeded: Option<LimitExceeded>,
}

/// Table elements an execution may have: far more than a Rust flow uses,
/// far less than would hurt the host.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ExecutionLimiter {
    pub(crate) fn new(max_memory: usize, app: Arc<AppMemory>) -> Self {
        Self {
            max_memory,
            memory: 0,
            app,
            exceeded: None,
        }
    }
}

impl Drop for ExecutionLimiter {
    fn drop(&mut self) {
        self.app.give_back(self.memory);
    }
}

impl wasmtime::ResourceLimiter for ExecutionLimiter {
    /// `current` and `desired` are the sizes of the one memory that grows (a
    /// new memory grows from 0 to its minimum); the limit is on the sum.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory.saturating_sub(current).saturating_add(desired);
        if total > self.max_memory {
            self.exceeded.get_or_insert(LimitExceeded::Memory {
                requested: total,
                limit: self.max_memory,
            });
            return Ok(false);
        }
        let growth = total.saturating_sub(self.memory);
        if let Err(held) = self.app.take(growth) {
            self.exceeded.get_or_insert(LimitExceeded::AppMemory {
                requested: growth,
                held,
                limit: self.app.limit,
            });
            return Ok(false);
        }
        // A growth granted here can still fail (beyond the memory's own
        // maximum, or the host is out of memory). It stays counted: the
        // limiter is not told which memory failed, and counting too much
        // only ever holds back the guest that asked.
        self.memory = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    // wasmtime allows 10,000 of each per store by default. A flow is one
    // component; the pool sizes its slots with the same bounds.

    fn instances(&self) -> usize {
        super::CORE_INSTANCES_PER_FLOW as usize
    }

    fn memories(&self) -> usize {
        super::MEMORIES_PER_FLOW as usize
    }

    fn tables(&self) -> usize {
        super::TABLES_PER_FLOW as usize
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::component::{Component, Instance, Linker};
    use wasmtime::{Config, Engine, ResourceLimiter, Store};

    use super::*;
    use crate::runtime::{CORE_INSTANCES_PER_FLOW, MEMORIES_PER_FLOW, TABLES_PER_FLOW};

    const MIB: usize = 1 << 20;
    const PAGES_PER_MIB: u32 = 16;

    fn engine() -> Engine {
        let mut config = Config::new();
        config.wasm_component_model(true);
        Engine::new(&config).unwrap()
    }

    /// A store of its own engine with the execution limiter installed.
    fn limited_store(max_memory: usize) -> Store<ExecutionLimiter> {
        let mut store = Store::new(
            &engine(),
            ExecutionLimiter::new(max_memory, Arc::new(AppMemory::new(usize::MAX))),
        );
        store.limiter(|limiter| limiter as &mut dyn ResourceLimiter);
        store
    }

    fn instantiate(store: &mut Store<ExecutionLimiter>, wat: &str) -> wasmtime::Result<Instance> {
        let bytes = wat::parse_str(wat).unwrap();
        let component = Component::new(store.engine(), bytes).unwrap();
        Linker::new(store.engine()).instantiate(store, &component)
    }

    /// A component whose one core instance has `count` memories of `pages`
    /// pages each, and exports `grow0`, `grow1`, ... to grow them.
    fn memories(count: usize, pages: u32) -> String {
        let mut module = String::new();
        let mut lifted = String::new();
        for i in 0..count {
            module.push_str(&format!(
                "(memory $m{i} {pages})
                 (func (export \"grow{i}\") (param i32) (result i32)
                   (memory.grow $m{i} (local.get 0)))\n"
            ));
            lifted.push_str(&format!(
                "(func (export \"grow{i}\") (param \"pages\" u32) (result s32)
                   (canon lift (core func $i \"grow{i}\")))\n"
            ));
        }
        format!(
            "(component (core module $m {module}) (core instance $i (instantiate $m)) {lifted})"
        )
    }

    /// A component of `count` core instances of a module with `memories`
    /// memories and `tables` tables.
    fn instances(count: u32, memories: u32, tables: u32) -> String {
        let module =
            "(memory 1)".repeat(memories as usize) + &"(table 1 funcref)".repeat(tables as usize);
        let instances = "(core instance (instantiate $m))".repeat(count as usize);
        format!("(component (core module $m {module}) {instances})")
    }

    fn grow(
        store: &mut Store<ExecutionLimiter>,
        instance: &Instance,
        memory: usize,
        pages: u32,
    ) -> i32 {
        let grow = instance
            .get_typed_func::<(u32,), (i32,)>(&mut *store, &format!("grow{memory}"))
            .unwrap();
        grow.call(&mut *store, (pages,)).unwrap().0
    }

    #[test]
    fn the_memory_limit_is_for_all_memories_together() {
        let mut store = limited_store(3 * MIB);
        let instance = instantiate(&mut store, &memories(2, PAGES_PER_MIB)).unwrap();
        assert_eq!(store.data().exceeded, None);
        // 1 MiB + 1 MiB: growing the first to 2 MiB makes 3 MiB in all.
        assert_eq!(
            grow(&mut store, &instance, 0, PAGES_PER_MIB),
            PAGES_PER_MIB as i32
        );
        // Each memory alone would still fit; together they would not.
        assert_eq!(grow(&mut store, &instance, 1, PAGES_PER_MIB), -1);
        assert_eq!(
            store.data().exceeded,
            Some(LimitExceeded::Memory {
                requested: 4 * MIB,
                limit: 3 * MIB
            })
        );
    }

    #[test]
    fn initial_memories_count_against_the_limit() {
        let mut store = limited_store(3 * MIB);
        let refused = instantiate(&mut store, &memories(2, 2 * PAGES_PER_MIB));
        assert!(refused.is_err());
        assert_eq!(
            store.data().exceeded,
            Some(LimitExceeded::Memory {
                requested: 4 * MIB,
                limit: 3 * MIB
            })
        );
    }

    #[test]
    fn the_limit_is_the_total_however_the_memories_grow() {
        let mut store = limited_store(3 * MIB);
        let instance = instantiate(&mut store, &memories(2, 0)).unwrap();
        for _ in 0..3 {
            assert_ne!(grow(&mut store, &instance, 0, PAGES_PER_MIB / 2), -1);
            assert_ne!(grow(&mut store, &instance, 1, PAGES_PER_MIB / 2), -1);
        }
        assert_eq!(grow(&mut store, &instance, 0, 1), -1);
        assert_eq!(grow(&mut store, &instance, 1, 1), -1);
    }

    #[test]
    fn a_store_holds_at_most_the_memories_of_a_flow() {
        let mut store = limited_store(64 * MIB);
        instantiate(&mut store, &memories(MEMORIES_PER_FLOW as usize, 1)).unwrap();

        let mut store = limited_store(64 * MIB);
        let error = instantiate(&mut store, &memories(4, PAGES_PER_MIB)).unwrap_err();
        assert!(
            format!("{error:#}").contains("memory count too high"),
            "{error:#}"
        );

        // Spreading them over instances does not help.
        let mut store = limited_store(64 * MIB);
        let error = instantiate(&mut store, &instances(MEMORIES_PER_FLOW + 1, 1, 0)).unwrap_err();
        assert!(
            format!("{error:#}").contains("memory count too high"),
            "{error:#}"
        );
    }

    #[test]
    fn a_store_holds_at_most_the_instances_and_tables_of_a_flow() {
        let mut store = limited_store(64 * MIB);
        instantiate(&mut store, &instances(CORE_INSTANCES_PER_FLOW, 0, 0)).unwrap();
        let mut store = limited_store(64 * MIB);
        let error =
            instantiate(&mut store, &instances(CORE_INSTANCES_PER_FLOW + 1, 0, 0)).unwrap_err();
        assert!(
            format!("{error:#}").contains("instance count too high"),
            "{error:#}"
        );

        let mut store = limited_store(64 * MIB);
        instantiate(&mut store, &instances(1, 0, TABLES_PER_FLOW)).unwrap();
        let mut store = limited_store(64 * MIB);
        let error = instantiate(&mut store, &instances(1, 0, TABLES_PER_FLOW + 1)).unwrap_err();
        assert!(
            format!("{error:#}").contains("table count too high"),
            "{error:#}"
        );
    }
}
