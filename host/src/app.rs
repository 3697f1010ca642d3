//! An app (a tenant) as the running host sees it: its name, properties,
//! limits, counters and the shared budgets its executions draw from. Every
//! execution and connection holds an `Arc<AppInfo>` of its own app and no
//! way to reach another's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cluster::Cluster;
use crate::hub::{ConnectionId, ConnectionIds, HostId, HubLimits, LocalHub, Transport};
use crate::manifest::spec::{AppLimits, AppSpec, DEFAULT_MAX_MESSAGE_SIZE};
use crate::metrics::AppMetrics;
use crate::runtime::Lane;

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
    /// Hands out the ids of the host's connections.
    ids: Arc<ConnectionIds>,
    /// Bytes of messages flows have sent that wait for the app's clients
    /// (`limits.queue_per_app`).
    pub(crate) outbound_budget: ByteBudget,
    /// Bytes of messages read from the app's clients that wait for its
    /// flows (`limits.queue_per_app`).
    pub(crate) inbound_budget: ByteBudget,
}

/// What the apps of one host share: the ids their connections get and, in
/// a cluster, the way to the other hosts.
#[derive(Debug, Clone)]
pub(crate) struct HostHubs {
    ids: Arc<ConnectionIds>,
    cluster: Option<Cluster>,
}

impl HostHubs {
    /// The hubs of a host in `cluster`, or of a host on its own.
    pub(crate) fn new(cluster: Option<&Cluster>) -> Self {
        let host = cluster.map_or(HostId::LOCAL, Cluster::host);
        Self {
            ids: Arc::new(ConnectionIds::new(host)),
            cluster: cluster.cloned(),
        }
    }

    fn hub(&self, app: &str, limits: HubLimits, turns: &Lane) -> Arc<dyn Transport> {
        match &self.cluster {
            Some(cluster) => cluster.hub(app, limits, turns),
            None => Arc::new(LocalHub::new(limits)),
        }
    }
}

impl AppInfo {
    /// An app on a host of its own, outside any cluster.
    #[cfg(test)]
    pub(crate) fn new(spec: &AppSpec) -> Self {
        Self::in_host(spec, &HostHubs::new(None), &Lane::of_its_own())
    }

    /// An app on the host whose apps share `host`, whose work runs in
    /// `turns`.
    pub(crate) fn in_host(spec: &AppSpec, host: &HostHubs, turns: &Lane) -> Self {
        let limits = spec.limits.clone();
        let max_message_size = spec
            .triggers
            .iter()
            .map(|trigger| trigger.limits.max_message_size)
            .max()
            .unwrap_or(DEFAULT_MAX_MESSAGE_SIZE);
        let hub = host.hub(
            spec.name.as_str(),
            HubLimits::new(&limits, max_message_size),
            turns,
        );
        Self {
            name: spec.name.as_str().into(),
            properties: spec.properties.clone(),
            executions: Arc::new(Semaphore::new(limits.max_executions)),
            reused_instances: Arc::new(Semaphore::new(limits.max_reused_instances)),
            log_budget: LogBudget::new(limits.log_lines_per_second),
            hub,
            ids: Arc::clone(&host.ids),
            outbound_budget: ByteBudget::new(limits.queue_per_app),
            inbound_budget: ByteBudget::new(limits.queue_per_app),
            limits,
            stats: AppStats::default(),
        }
    }

    /// A new connection's id.
    pub(crate) fn next_connection_id(&self) -> ConnectionId {
        self.ids.next()
    }

    /// The app's counters, with what its hub counted on its own (messages
    /// from other hosts), and the bytes its queues hold now.
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let own = self.stats.snapshot();
        let remote = self.hub.counts();
        StatsSnapshot {
            group_messages_delivered: own.group_messages_delivered
                + remote.received_fanout.delivered,
            group_messages_dropped: own.group_messages_dropped + remote.received_fanout.dropped,
            slow_members_closed: own.slow_members_closed + remote.received_fanout.closed,
            cluster_messages_in: remote.received,
            cluster_messages_out: remote.forwarded,
            cluster_unavailable: remote.unavailable,
            queued_bytes_out: self.outbound_budget.queued() as u64,
            queued_bytes_in: self.inbound_budget.queued() as u64,
            ..own
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
    /// Histograms and limit hits, for `GET /metrics`.
    pub(crate) metrics: AppMetrics,
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
    /// Group messages queued for a member of this host (one publish to N
    /// members: N), wherever they were published.
    pub group_messages_delivered: u64,
    /// Group messages not queued because the member's queue was full.
    pub group_messages_dropped: u64,
    /// Members closed (1008) because their queue was full (`slow_member =
    /// "close"`).
    pub slow_members_closed: u64,
    /// Group messages and sends that came from other hosts of the cluster.
    pub cluster_messages_in: u64,
    /// Group messages and sends handed to the broker for other hosts.
    pub cluster_messages_out: u64,
    /// Group operations answered `unavailable`: the other hosts could not
    /// be reached, or not in time.
    pub cluster_unavailable: u64,
    /// Bytes of messages flows sent that wait for the app's clients, now
    /// (group messages not included).
    pub queued_bytes_out: u64,
    /// Bytes of messages read from the app's clients that wait for its
    /// flows, now.
    pub queued_bytes_in: u64,
}

impl AppStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters; the queue gauges and the cluster's counts are filled
    /// by [`AppInfo::snapshot`].
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
            cluster_messages_in: 0,
            cluster_messages_out: 0,
            cluster_unavailable: 0,
            queued_bytes_out: 0,
            queued_bytes_in: 0,
        }
    }
}

/// Bytes of queued messages that one connection, or all connections of an
/// app, may hold in one direction. A message takes its length from the
/// budget while it waits and gives it back once it has been passed on; a
/// message larger than the whole budget takes all of it, so it waits until
/// nothing else is queued. Waiters are served in order.
#[derive(Debug, Clone)]
pub(crate) struct ByteBudget {
    bytes: Arc<Semaphore>,
    capacity: usize,
}

impl ByteBudget {
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// Bytes taken now.
    pub(crate) fn queued(&self) -> usize {
        self.capacity - self.bytes.available_permits()
    }

    /// How many permits a message of `len` bytes takes.
    fn permits(&self, len: usize) -> u32 {
        u32::try_from(len.min(self.capacity)).unwrap_or(u32::MAX)
    }

    /// Wait until `len` bytes (at most the whole budget) are free and take
    /// them until the permit is dropped.
    pub(crate) async fn take(&self, len: usize) -> OwnedSemaphorePermit {
        Arc::clone(&self.bytes)
            .acquire_many_owned(self.permits(len))
            .await
            .expect("the semaphore is never closed")
    }

    /// Take `len` bytes if they are free now (and nobody waits before).
    pub(crate) fn try_take(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.bytes)
            .try_acquire_many_owned(self.permits(len))
            .ok()
    }
}

/// What one queued message holds of its connection's budget and, unless
/// it is a group message, of its app's; dropping it gives the bytes back.
#[derive(Debug)]
pub(crate) struct Charge {
    _connection: OwnedSemaphorePermit,
    _app: Option<OwnedSemaphorePermit>,
}

impl Charge {
    pub(crate) fn new(connection: OwnedSemaphorePermit, app: Option<OwnedSemaphorePermit>) -> Self {
        Self {
            _connection: connection,
            _app: app,
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
    use futures_util::FutureExt as _;

    use super::*;

    #[tokio::test]
    async fn a_byte_budget_waits_for_room_and_lets_an_oversized_message_through_alone() {
        let budget = ByteBudget::new(100);
        let first = budget.take(60).await;
        assert_eq!(budget.queued(), 60);
        assert!(budget.try_take(60).is_none());
        let mut second = Box::pin(budget.take(60));
        assert!((&mut second).now_or_never().is_none());
        drop(first);
        let second = second.await;
        assert_eq!(budget.queued(), 60);
        let mut oversized = Box::pin(budget.take(1000));
        assert!((&mut oversized).now_or_never().is_none());
        drop(second);
        let _oversized = oversized.await;
        assert_eq!(budget.queued(), 100);
    }

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
