//! An app (a tenant) as the running host sees it: its name, properties,
//! limits, counters and the shared budgets its executions draw from. Every
//! execution and connection holds an `Arc<AppInfo>` of its own app and no
//! way to reach another's.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cluster::Cluster;
use bytes::Bytes;

use crate::hub::{
    ConnectionId, ConnectionIds, Fanout, GroupName, Histories, HostId, HubLimits, LargestMessage,
    LocalHub, Transport,
};
use crate::manifest::spec::{AppLimits, AppSpec, DEFAULT_MAX_MESSAGE_SIZE};
use crate::runtime::http::{AppOutbound, Resolver};
use crate::runtime::keyvalue::AppKeyValue;
use crate::runtime::{AppMemory, Lane};
pub(crate) use crate::stats::{AppStats, StatsSnapshot};

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
    /// The largest message its groups carry, as its hub sees it.
    pub(crate) largest_message: LargestMessage,
    /// Hands out the ids of the host's connections.
    ids: Arc<ConnectionIds>,
    /// Bytes of messages flows have sent that wait for the app's clients
    /// (`limits.queue_per_app`).
    pub(crate) outbound_budget: ByteBudget,
    /// Bytes of messages read from the app's clients that wait for its
    /// flows (`limits.queue_per_app`).
    pub(crate) inbound_budget: ByteBudget,
    /// Linear memory of all the app's instances (`limits.app_memory`).
    pub(crate) memory: Arc<AppMemory>,
    /// What the app's outbound HTTP requests share.
    pub(crate) outbound: AppOutbound,
    /// The app's key-value stores, and the names it declared.
    pub(crate) key_value: AppKeyValue,
    pub(crate) key_value_stores: Vec<String>,
    /// How backends reach the app through the server API, if they may.
    pub(crate) api: Option<crate::manifest::spec::ApiSpec>,
    /// Attachments held unique per group (`unique_attachment`).
    pub(crate) claims: Arc<AttachmentClaims>,
}

/// The (group, attachment) pairs of an app's connections whose handler has
/// `unique_attachment`, each held from `on_connect`'s decision until the
/// connection ends. Taking one is atomic: of two connections accepted with
/// the same attachment into the same group at the same moment, one gets it.
#[derive(Debug, Default)]
pub(crate) struct AttachmentClaims(Mutex<HashSet<(GroupName, Bytes)>>);

/// What one connection claimed; given back when dropped.
#[derive(Debug)]
pub(crate) struct Claim {
    claims: Arc<AttachmentClaims>,
    held: Vec<(GroupName, Bytes)>,
}

impl AttachmentClaims {
    /// Claim `attachment` in each of `groups`, all or none; `Err` names the
    /// first group where another connection holds it.
    pub(crate) fn claim(
        self: &Arc<Self>,
        attachment: &Bytes,
        groups: &[GroupName],
    ) -> Result<Claim, GroupName> {
        let mut claimed = self.0.lock().expect("not poisoned");
        let pairs: Vec<(GroupName, Bytes)> = groups
            .iter()
            .map(|group| (group.clone(), attachment.clone()))
            .collect();
        if let Some((taken, _)) = pairs.iter().find(|pair| claimed.contains(*pair)) {
            return Err(taken.clone());
        }
        claimed.extend(pairs.iter().cloned());
        Ok(Claim {
            claims: Arc::clone(self),
            held: pairs,
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut claimed = self.claims.0.lock().expect("not poisoned");
        for pair in &self.held {
            claimed.remove(pair);
        }
    }
}

/// Room for what a call carries besides its largest payload: names, ids,
/// the records around them.
const HOSTCALL_FUEL_SLACK: usize = 64 << 10;

/// What one group of an opening may cost: a name of at most 128 bytes
/// (`hub/name.rs`) and its string's place in the list.
const GROUP_NAME_COST: usize = 128 + 16;

/// The hostcall fuel of an app whose triggers take messages of up to
/// `max_message_size` bytes: the largest payload a flow sends or publishes,
/// what `on_connect` may hand back (an attachment and its groups), or a
/// key-value entry a flow writes, whichever is larger, and
/// [`HOSTCALL_FUEL_SLACK`]. (A batch of entries larger than that traps.) wasmtime's default
/// (128 MiB) would let a flow make the host allocate that much in one call
/// before the host could check what it was given.
pub(crate) fn hostcall_fuel(limits: &AppLimits, max_message_size: usize) -> usize {
    let opening = limits.max_attachment_size.saturating_add(
        limits
            .max_groups_per_connection
            .saturating_mul(GROUP_NAME_COST),
    );
    let entry = limits
        .max_kv_key_size
        .saturating_add(limits.max_kv_value_size);
    max_message_size
        .max(opening)
        .max(entry)
        .saturating_add(HOSTCALL_FUEL_SLACK)
}

/// What the apps of one host share: the ids their connections get and, in
/// a cluster, the way to the other hosts.
#[derive(Debug, Clone)]
pub(crate) struct HostHubs {
    ids: Arc<ConnectionIds>,
    cluster: Option<Cluster>,
    /// How the apps' outbound HTTP resolves host names.
    pub(crate) resolver: Resolver,
}

impl HostHubs {
    /// The hubs of a host in `cluster`, or of a host on its own.
    pub(crate) fn new(cluster: Option<&Cluster>) -> Self {
        let host = cluster.map_or(HostId::LOCAL, Cluster::host);
        Self {
            ids: Arc::new(ConnectionIds::new(host)),
            cluster: cluster.cloned(),
            resolver: Resolver::default(),
        }
    }

    fn hub(&self, spec: &AppSpec, limits: HubLimits, turns: &Lane) -> Arc<dyn Transport> {
        match &self.cluster {
            Some(cluster) => cluster.hub(spec, limits, turns),
            None => Arc::new(LocalHub::keeping(
                limits,
                Histories::new(spec.history.clone(), &spec.limits),
            )),
        }
    }
}

impl AppInfo {
    /// Count what a publish or a send did, whoever made it (a flow, a
    /// hook, the server API).
    pub(crate) fn count_fanout(&self, fanout: Fanout) {
        let stats = &self.stats;
        AppStats::add(&stats.group_messages_published, 1);
        AppStats::add(&stats.group_messages_delivered, fanout.delivered);
        AppStats::add(&stats.group_messages_dropped, fanout.dropped);
        AppStats::add(&stats.slow_members_closed, fanout.closed);
        AppStats::add(&stats.group_messages_too_large, fanout.too_large);
    }

    /// An app on a host of its own, outside any cluster.
    #[cfg(test)]
    pub(crate) fn new(spec: &AppSpec) -> Self {
        Self::in_host(spec, &HostHubs::new(None), &Lane::of_its_own(), None)
    }

    /// An app on the host whose apps share `host`, whose work runs in
    /// `turns`, keeping its key-value stores in `data_dir` (in memory
    /// without one) unless the host is in a cluster.
    pub(crate) fn in_host(
        spec: &AppSpec,
        host: &HostHubs,
        turns: &Lane,
        data_dir: Option<&std::path::Path>,
    ) -> Self {
        let limits = spec.limits.clone();
        let largest_message = LargestMessage::new(largest_message(spec));
        let hub = host.hub(
            spec,
            HubLimits::new(&limits, largest_message.clone()),
            turns,
        );
        Self {
            name: spec.name.as_str().into(),
            properties: spec.properties.clone(),
            executions: Arc::new(Semaphore::new(limits.max_executions)),
            reused_instances: Arc::new(Semaphore::new(limits.max_reused_instances)),
            log_budget: LogBudget::new(limits.log_lines_per_second),
            hub,
            largest_message,
            ids: Arc::clone(&host.ids),
            outbound_budget: ByteBudget::new(limits.queue_per_app),
            inbound_budget: ByteBudget::new(limits.queue_per_app),
            memory: Arc::new(AppMemory::new(limits.app_memory)),
            outbound: AppOutbound::new(&limits, host.resolver.clone()),
            key_value: match &host.cluster {
                Some(cluster) => AppKeyValue::in_cluster(&spec.name, cluster, &limits),
                None => AppKeyValue::new(&spec.name, data_dir, &limits),
            },
            key_value_stores: spec.key_value_stores.clone(),
            api: spec.api.clone(),
            claims: Arc::default(),
            limits,
            stats: AppStats::default(),
        }
    }

    /// Bytes a guest may hand the host in one call, or return from one
    /// export (wasmtime's hostcall fuel): the largest thing the contract
    /// takes from it, with room to spare (see [`hostcall_fuel`]).
    pub(crate) fn hostcall_fuel(&self) -> usize {
        hostcall_fuel(&self.limits, self.largest_message.get())
    }

    /// Follow a new version's triggers (after a reload): the largest
    /// message its groups carry is the largest they now accept.
    pub(crate) fn follow_triggers(&self, spec: &AppSpec) {
        self.largest_message.set(largest_message(spec));
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
        let key_value = self.key_value.usage();
        own + StatsSnapshot {
            group_messages_delivered: remote.received_fanout.delivered,
            group_messages_dropped: remote.received_fanout.dropped,
            slow_members_closed: remote.received_fanout.closed,
            group_messages_too_large: remote.received_fanout.too_large,
            cluster_messages_in: remote.received,
            cluster_messages_out: remote.forwarded,
            cluster_unavailable: remote.unavailable,
            cluster_over_share: remote.over_share,
            cluster_messages_shed: remote.shed,
            cluster_queued_bytes_out: remote.queued_out,
            cluster_queued_bytes_in: remote.queued_in,
            history_bytes: remote.history_bytes,
            history_groups: remote.history_groups,
            queued_bytes_out: self.outbound_budget.queued() as u64,
            queued_bytes_in: self.inbound_budget.queued() as u64,
            guest_memory: self.memory.held() as u64,
            kv_keys: key_value.keys,
            kv_bytes: key_value.bytes,
            ..StatsSnapshot::default()
        }
    }
}

/// The largest `max_message_size` of the app's triggers.
fn largest_message(spec: &AppSpec) -> usize {
    spec.triggers
        .iter()
        .map(|trigger| trigger.limits.max_message_size)
        .max()
        .unwrap_or(DEFAULT_MAX_MESSAGE_SIZE)
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

/// What one queued message holds of its connection's budget and of its
/// app's; dropping it gives the bytes back.
#[derive(Debug)]
pub(crate) struct Charge {
    _connection: OwnedSemaphorePermit,
    _app: OwnedSemaphorePermit,
}

impl Charge {
    pub(crate) fn new(connection: OwnedSemaphorePermit, app: OwnedSemaphorePermit) -> Self {
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
    state: Mutex<Bucket>,
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
            state: Mutex::new(Bucket {
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
