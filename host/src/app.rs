//! An app (a tenant) as the running host sees it: its name, properties,
//! limits, counters and the shared budgets its executions draw from. Every
//! execution and connection holds an `Arc<AppInfo>` of its own app and no
//! way to reach another's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

/// Limits applied to every execution and connection of an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppLimits {
    /// Linear memory a single execution may grow to.
    pub max_memory: usize,
    /// Time an execution may spend running (not waiting in `receive` or in
    /// `send` for a slow client).
    pub cpu_time: Duration,
    /// Time a data-mode execution may take from start to finish.
    pub wall_time: Duration,
    /// Executions of the app running at once; more wait for a slot.
    pub max_executions: usize,
    /// Connections of the app (all its triggers) open at once; more are
    /// refused with HTTP 503 before the upgrade.
    pub max_connections: usize,
    /// How long `send` may wait for a client that does not read before the
    /// host closes that connection with 1008.
    pub slow_client_timeout: Duration,
    /// Guest output lines (stdout, stderr, `log`) the app may write per
    /// second, with bursts up to ten times that; the rest is dropped and
    /// counted.
    pub log_lines_per_second: u32,
}

impl Default for AppLimits {
    fn default() -> Self {
        Self {
            // Enough for a Rust flow with serde and a few MiB of data; small
            // enough that hundreds of concurrent executions fit in RAM.
            max_memory: 64 << 20,
            // Generous for message handling, short enough that a runaway
            // loop is stopped before a client gives up.
            cpu_time: Duration::from_secs(1),
            wall_time: Duration::from_secs(10),
            // Two cores serve thousands of executions a second; more in
            // flight only adds memory.
            max_executions: 256,
            max_connections: 10_000,
            slow_client_timeout: Duration::from_secs(30),
            log_lines_per_second: 100,
        }
    }
}

/// What the host knows about a running app.
#[derive(Debug)]
pub struct AppInfo {
    pub name: Arc<str>,
    /// The manifest the app came from, for messages.
    pub manifest: String,
    pub properties: BTreeMap<String, String>,
    pub limits: AppLimits,
    pub stats: AppStats,
    /// Slots for running executions (`limits.max_executions`).
    pub executions: Arc<Semaphore>,
    pub log_budget: LogBudget,
}

impl AppInfo {
    pub fn new(
        name: &str,
        manifest: String,
        properties: BTreeMap<String, String>,
        limits: AppLimits,
    ) -> Self {
        Self {
            name: name.into(),
            manifest,
            properties,
            executions: Arc::new(Semaphore::new(limits.max_executions)),
            log_budget: LogBudget::new(limits.log_lines_per_second),
            limits,
            stats: AppStats::default(),
        }
    }
}

/// Counters of one app, readable while it runs.
#[derive(Debug, Default)]
pub struct AppStats {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub executions_ok: AtomicU64,
    pub executions_failed: AtomicU64,
    pub executions_trapped: AtomicU64,
    pub executions_limit_exceeded: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub log_lines_dropped: AtomicU64,
}

/// A point-in-time copy of [`AppStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub connections_open: u64,
    pub connections_total: u64,
    pub connections_refused: u64,
    pub executions_ok: u64,
    pub executions_failed: u64,
    pub executions_trapped: u64,
    pub executions_limit_exceeded: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub log_lines_dropped: u64,
}

impl AppStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            connections_open: get(&self.connections_open),
            connections_total: get(&self.connections_total),
            connections_refused: get(&self.connections_refused),
            executions_ok: get(&self.executions_ok),
            executions_failed: get(&self.executions_failed),
            executions_trapped: get(&self.executions_trapped),
            executions_limit_exceeded: get(&self.executions_limit_exceeded),
            messages_in: get(&self.messages_in),
            messages_out: get(&self.messages_out),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            log_lines_dropped: get(&self.log_lines_dropped),
        }
    }
}

/// A token bucket for guest output lines: a flood from one app cannot fill
/// the disk or keep the host busy logging.
#[derive(Debug)]
pub struct LogBudget {
    per_second: f64,
    burst: f64,
    state: std::sync::Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// Lines dropped since the last line that got through.
    dropped: u64,
}

/// Whether a line may be logged, and how many were dropped before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogPermit {
    Log { dropped_before: u64 },
    Drop,
}

impl LogBudget {
    pub fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second);
        let burst = per_second * 10.0;
        Self {
            per_second,
            burst,
            state: std::sync::Mutex::new(Bucket {
                tokens: burst,
                refilled: Instant::now(),
                dropped: 0,
            }),
        }
    }

    /// Take one line's worth from the budget.
    pub fn take(&self) -> LogPermit {
        let mut bucket = self.state.lock().expect("not poisoned");
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            let dropped_before = std::mem::take(&mut bucket.dropped);
            LogPermit::Log { dropped_before }
        } else {
            bucket.dropped += 1;
            LogPermit::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_budget_allows_a_burst_then_drops_and_counts() {
        let budget = LogBudget::new(1);
        for _ in 0..10 {
            assert!(matches!(budget.take(), LogPermit::Log { .. }));
        }
        assert_eq!(budget.take(), LogPermit::Drop);
        assert_eq!(budget.take(), LogPermit::Drop);
        budget.state.lock().unwrap().tokens = 1.0;
        assert_eq!(budget.take(), LogPermit::Log { dropped_before: 2 });
    }
}
