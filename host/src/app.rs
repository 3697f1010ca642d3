//! An app (a tenant) as the running host sees it: its name, properties,
//! limits, counters and the shared budgets its executions draw from. Every
//! execution and connection holds an `Arc<AppInfo>` of its own app and no
//! way to reach another's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::hub::{HubLimits, LocalHub, Transport};
use crate::manifest::spec::{AppLimits, AppSpec, DEFAULT_MAX_MESSAGE_SIZE};

/// What the host knows about a running app.
#[derive(Debug)]
pub(crate) struct AppInfo {
    pub(crate) name: Arc<str>,
    pub(crate) properties: BTreeMap<String, String>,
    pub(crate) limits: AppLimits,
    pub(crate) stats: AppStats,
    /// Slots for running executions (`limits.max_executions`).
    pub(crate) executions: Arc<Semaphore>,
    /// Slots for instances kept for a connection
    /// (`limits.max_reused_instances`).
    pub(crate) reused_instances: Arc<Semaphore>,
    pub(crate) log_budget: LogBudget,
    /// Where the app's group operations go; its connections attach here.
    pub(crate) hub: Arc<dyn Transport>,
}

impl AppInfo {
    pub(crate) fn new(spec: &AppSpec) -> Self {
        let limits = spec.limits.clone();
        let max_message_size = spec
            .triggers
            .iter()
            .map(|trigger| trigger.limits.max_message_size)
            .max()
            .unwrap_or(DEFAULT_MAX_MESSAGE_SIZE);
        let hub = LocalHub::new(HubLimits::new(&limits, max_message_size));
        Self {
            name: spec.name.as_str().into(),
            properties: spec.properties.clone(),
            executions: Arc::new(Semaphore::new(limits.max_executions)),
            reused_instances: Arc::new(Semaphore::new(limits.max_reused_instances)),
            log_budget: LogBudget::new(limits.log_lines_per_second),
            hub: Arc::new(hub),
            limits,
            stats: AppStats::default(),
        }
    }
}

/// Counters of one app, readable while it runs.
#[derive(Debug, Default)]
pub(crate) struct AppStats {
    pub(crate) connections_open: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) executions_ok: AtomicU64,
    pub(crate) executions_failed: AtomicU64,
    pub(crate) executions_trapped: AtomicU64,
    pub(crate) executions_limit_exceeded: AtomicU64,
    pub(crate) messages_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) log_lines_dropped: AtomicU64,
    pub(crate) group_messages_published: AtomicU64,
    pub(crate) group_messages_delivered: AtomicU64,
    pub(crate) group_messages_dropped: AtomicU64,
    pub(crate) slow_members_closed: AtomicU64,
}

/// A point-in-time copy of [`AppStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Connections open now.
    pub connections_open: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Upgrades refused because a connection limit was reached.
    pub connections_refused: u64,
    /// Executions whose flow returned `ok`.
    pub executions_ok: u64,
    /// Executions whose flow returned an error.
    pub executions_failed: u64,
    /// Executions that trapped.
    pub executions_trapped: u64,
    /// Executions stopped by a limit.
    pub executions_limit_exceeded: u64,
    /// Data messages read from clients.
    pub messages_in: u64,
    /// Data messages flows sent.
    pub messages_out: u64,
    /// Payload bytes read from clients.
    pub bytes_in: u64,
    /// Payload bytes flows sent.
    pub bytes_out: u64,
    /// Guest output lines dropped over the log budget.
    pub log_lines_dropped: u64,
    /// Group messages flows published or sent to a connection by id.
    pub group_messages_published: u64,
    /// Group messages queued for a member (one publish to N members: N).
    pub group_messages_delivered: u64,
    /// Group messages not queued because the member's queue was full.
    pub group_messages_dropped: u64,
    /// Members closed (1008) because their queue was full (`slow_member =
    /// "close"`).
    pub slow_members_closed: u64,
}

impl AppStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
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
            group_messages_published: get(&self.group_messages_published),
            group_messages_delivered: get(&self.group_messages_delivered),
            group_messages_dropped: get(&self.group_messages_dropped),
            slow_members_closed: get(&self.slow_members_closed),
        }
    }
}

/// A token bucket for guest output lines: a flood from one app cannot fill
/// the disk or keep the host busy logging.
#[derive(Debug)]
pub(crate) struct LogBudget {
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
pub(crate) enum LogPermit {
    Log { dropped_before: u64 },
    Drop,
}

impl LogBudget {
    pub(crate) fn new(per_second: u32) -> Self {
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
    pub(crate) fn take(&self) -> LogPermit {
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
