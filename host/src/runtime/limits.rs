//! Per-execution limits: linear memory (a resource limiter), CPU time
//! (epoch interruption, not charging time spent waiting in host calls) and,
//! enforced by the caller, wall-clock time.

use std::time::{Duration, Instant};

/// A limit an execution ran into. The execution ends; its connection is
/// closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LimitExceeded {
    #[error(
        "memory limit: tried to grow linear memory to {requested} bytes, {over} over the limit of {limit}"
    , over = requested - limit)]
    Memory { requested: usize, limit: usize },
    #[error("CPU time limit: ran {used:?}, {over:?} over the limit of {limit:?}", over = used.saturating_sub(*limit))]
    CpuTime { used: Duration, limit: Duration },
    #[error("wall-clock limit: still running after {limit:?}")]
    WallTime { limit: Duration },
    #[error("slow client: a send waited {waited:?} for a client that does not read")]
    SlowClient { waited: Duration },
}

impl LimitExceeded {
    /// Whether the client caused it (close 1008) rather than the flow (1011).
    pub(crate) fn is_client_fault(&self) -> bool {
        matches!(self, LimitExceeded::SlowClient { .. })
    }
}

/// Caps linear memory and tables and remembers the first refusal.
#[derive(Debug)]
pub(crate) struct ExecutionLimiter {
    max_memory: usize,
    pub(super) exceeded: Option<LimitExceeded>,
}

/// Table elements an execution may have: far more than a Rust flow uses,
/// far less than would hurt the host.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ExecutionLimiter {
    pub(crate) fn new(max_memory: usize) -> Self {
        Self {
            max_memory,
            exceeded: None,
        }
    }
}

impl wasmtime::ResourceLimiter for ExecutionLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.exceeded.get_or_insert(LimitExceeded::Memory {
                requested: desired,
                limit: self.max_memory,
            });
            return Ok(false);
        }
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
}

/// Measures the time an execution spends running: wall-clock time since it
/// started minus the time it spent waiting in host calls.
#[derive(Debug)]
pub(crate) struct CpuMeter {
    started: Instant,
    waiting: Duration,
    pub(crate) limit: Duration,
}

impl CpuMeter {
    pub(crate) fn new(limit: Duration) -> Self {
        Self {
            started: Instant::now(),
            waiting: Duration::ZERO,
            limit,
        }
    }

    pub(crate) fn used(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.waiting)
    }

    /// Record time spent waiting (in `receive`, or in `send` for a client).
    pub(crate) fn waited(&mut self, duration: Duration) {
        self.waiting += duration;
    }
}
