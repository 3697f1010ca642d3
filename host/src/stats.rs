//! An app's counters, declared once. Each entry of [`counters!`] gives a
//! counter's field, its Prometheus series and its meaning; from that one
//! table come the atomics the host adds to ([`AppStats`]), the copy
//! `/stats` serves ([`StatsSnapshot`]), the series `/metrics` shows
//! ([`COUNTERS`]) and the `app totals` line logged at shutdown
//! ([`StatsSnapshot::summary`]). A new counter is one new entry.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::metrics::AppMetrics;

/// Whether a series only grows or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }
}

/// One counter of an app, as `/metrics` and the shutdown log show it.
#[derive(Debug)]
pub(crate) struct Counter {
    /// The field of [`StatsSnapshot`] (and the key in `/stats`).
    pub(crate) field: &'static str,
    /// The Prometheus series, and its one label besides `app`, if the
    /// series has one (`outcome="ok"`): counters with the same series are
    /// the samples of one family.
    pub(crate) series: &'static str,
    pub(crate) label: Option<(&'static str, &'static str)>,
    pub(crate) kind: Kind,
    /// What it counts (the field's documentation).
    pub(crate) help: &'static str,
    pub(crate) read: fn(&StatsSnapshot) -> u64,
}

macro_rules! counters {
    ($(
        $(#[doc = $help:literal])+
        $field:ident: $kind:ident $series:literal $({ $key:literal = $value:literal })?;
    )*) => {
        /// Counters of one app, readable while it runs; each is a
        /// [`Counter`] of [`COUNTERS`].
        #[derive(Debug, Default)]
        pub(crate) struct AppStats {
            $($(#[doc = $help])+ pub(crate) $field: AtomicU64,)*
            /// Histograms and limit hits, for `GET /metrics`.
            pub(crate) metrics: AppMetrics,
        }

        /// A point-in-time copy of an app's counters, with what its hub
        /// counted and the bytes its queues hold (`AppInfo::snapshot`).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub struct StatsSnapshot {
            $($(#[doc = $help])+ pub $field: u64,)*
        }

        impl AppStats {
            /// The counters as they are now.
            pub(crate) fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $($field: self.$field.load(Ordering::Relaxed),)*
                }
            }

            /// The atomics, in table order.
            #[cfg(test)]
            fn atomics(&self) -> Vec<&AtomicU64> {
                vec![$(&self.$field,)*]
            }
        }

        impl std::ops::Add for StatsSnapshot {
            type Output = Self;

            fn add(self, other: Self) -> Self {
                Self {
                    $($field: self.$field + other.$field,)*
                }
            }
        }

        /// Every counter, in the order `/stats`, `/metrics` and the
        /// shutdown log show them.
        pub(crate) const COUNTERS: &[Counter] = &[
            $(Counter {
                field: stringify!($field),
                series: $series,
                label: counters!(@label $($key, $value)?),
                kind: Kind::$kind,
                help: concat!($($help),+).trim_ascii(),
                read: |s| s.$field,
            },)*
        ];
    };
    (@label) => { None };
    (@label $key:literal, $value:literal) => { Some(($key, $value)) };
}

counters! {
    /// Connections open now.
    connections_open: Gauge "wsflow_connections_open";
    /// Connections accepted (upgraded) since start.
    connections_total: Counter "wsflow_connections_total";
    /// Upgrades refused because a connection limit was reached.
    connections_refused: Counter "wsflow_connections_refused_total";
    /// Executions whose flow returned `ok`.
    executions_ok: Counter "wsflow_executions_total" { "outcome" = "ok" };
    /// Executions whose flow returned an error.
    executions_failed: Counter "wsflow_executions_total" { "outcome" = "failed" };
    /// Executions that trapped.
    executions_trapped: Counter "wsflow_executions_total" { "outcome" = "trapped" };
    /// Executions stopped by a limit.
    executions_limit_exceeded: Counter "wsflow_executions_total" { "outcome" = "limit_exceeded" };
    /// Data messages read from clients.
    messages_in: Counter "wsflow_messages_total" { "direction" = "in" };
    /// Data messages flows sent.
    messages_out: Counter "wsflow_messages_total" { "direction" = "out" };
    /// Payload bytes read from clients.
    bytes_in: Counter "wsflow_message_bytes_total" { "direction" = "in" };
    /// Payload bytes flows sent.
    bytes_out: Counter "wsflow_message_bytes_total" { "direction" = "out" };
    /// Guest output lines dropped over the app's log budget.
    log_lines_dropped: Counter "wsflow_log_lines_dropped_total";
    /// Group messages flows published or sent to a connection by id.
    group_messages_published: Counter "wsflow_group_messages_published_total";
    /// Group messages queued for a member of this host (one publish to N
    /// members: N), wherever they were published.
    group_messages_delivered: Counter "wsflow_group_messages_delivered_total";
    /// Group messages not queued because the member's queue was full.
    group_messages_dropped: Counter "wsflow_group_messages_dropped_total";
    /// Group members closed (1008) because their queue was full
    /// (`slow_member = "close"`).
    slow_members_closed: Counter "wsflow_slow_members_closed_total";
    /// Group messages not queued for a member because they are larger
    /// than its trigger's `max_message_size` (the member stays; a
    /// `send_to` is answered `too-large` instead).
    group_messages_too_large: Counter "wsflow_group_messages_too_large_total";
    /// Group messages and sends that came from other hosts of the cluster.
    cluster_messages_in: Counter "wsflow_cluster_messages_in_total";
    /// Group messages and sends handed to the broker for other hosts.
    cluster_messages_out: Counter "wsflow_cluster_messages_out_total";
    /// Group operations answered `unavailable`: the other hosts could not
    /// be reached, or not in time.
    cluster_unavailable: Counter "wsflow_cluster_unavailable_total";
    /// Outbound HTTP requests that got a response.
    outbound_requests_ok: Counter "wsflow_outbound_requests_total" { "outcome" = "ok" };
    /// Outbound HTTP requests refused: no grant names the destination, or
    /// it resolves to an address the flow may not reach.
    outbound_requests_denied: Counter "wsflow_outbound_requests_total" { "outcome" = "denied" };
    /// Outbound HTTP requests refused over the app's in-flight or
    /// per-execution limit.
    outbound_requests_limited: Counter "wsflow_outbound_requests_total" { "outcome" = "limited" };
    /// Outbound HTTP requests that timed out connecting or waiting for
    /// the response's headers.
    outbound_requests_timeout: Counter "wsflow_outbound_requests_total" { "outcome" = "timeout" };
    /// Outbound HTTP requests that failed otherwise (name lookup,
    /// connection, TLS, protocol).
    outbound_requests_failed: Counter "wsflow_outbound_requests_total" { "outcome" = "failed" };
    /// Publishes and requests for other hosts refused because the app's
    /// lane of the link held its share (answered `unavailable`).
    cluster_over_share: Counter "wsflow_cluster_over_share_total";
    /// Group messages from other hosts dropped because the app's inbound
    /// queue was full.
    cluster_messages_shed: Counter "wsflow_cluster_messages_shed_total";
    /// Bytes the app's lane of the link holds for other hosts, now.
    cluster_queued_bytes_out: Gauge "wsflow_cluster_queued_bytes" { "direction" = "out" };
    /// Bytes of group messages from other hosts waiting for the app's
    /// members, now.
    cluster_queued_bytes_in: Gauge "wsflow_cluster_queued_bytes" { "direction" = "in" };
    /// Bytes of the messages the app's groups keep as history, now
    /// (`limits.max_history_bytes`).
    history_bytes: Gauge "wsflow_history_bytes";
    /// Groups of the app keeping history, now (`limits.max_history_groups`).
    history_groups: Gauge "wsflow_history_groups";
    /// Bytes of messages flows sent that wait for the app's clients, now:
    /// group messages once per member they wait for, and each message
    /// with its overhead in the queue.
    queued_bytes_out: Gauge "wsflow_queued_bytes" { "direction" = "out" };
    /// Bytes of messages read from the app's clients that wait for its
    /// flows, now.
    queued_bytes_in: Gauge "wsflow_queued_bytes" { "direction" = "in" };
    /// Bytes of linear memory the app's instances hold now, against its
    /// `app_memory`.
    guest_memory: Gauge "wsflow_guest_memory_bytes";
    /// Key-value operations that succeeded.
    kv_operations_ok: Counter "wsflow_kv_operations_total" { "outcome" = "ok" };
    /// Key-value operations answered with an error (quotas included).
    kv_operations_failed: Counter "wsflow_kv_operations_total" { "outcome" = "failed" };
    /// Key-value writes refused because they would take the app over a
    /// `max_kv_*` quota.
    kv_quota_exceeded: Counter "wsflow_kv_quota_exceeded_total";
    /// Key-value stores a flow asked to open and was refused: not granted
    /// to it, or not declared by its app.
    kv_denied: Counter "wsflow_kv_denied_total";
    /// Keys the app's key-value stores hold now.
    kv_keys: Gauge "wsflow_kv_keys";
    /// Bytes (keys and values) the app's key-value stores hold now.
    kv_bytes: Gauge "wsflow_kv_bytes";
    /// Server API publishes to a group.
    api_publish: Counter "wsflow_api_requests_total" { "operation" = "publish" };
    /// Server API sends to a connection.
    api_send: Counter "wsflow_api_requests_total" { "operation" = "send" };
    /// Server API closes of a connection.
    api_close: Counter "wsflow_api_requests_total" { "operation" = "close" };
    /// Server API group listings.
    api_group: Counter "wsflow_api_requests_total" { "operation" = "group" };
    /// Server API batches of publishes.
    api_batch: Counter "wsflow_api_requests_total" { "operation" = "batch" };
    /// Server API requests refused over the app's limits (413, 429).
    api_refused: Counter "wsflow_api_refused_total";
}

/// The help of series whose samples are several counters (told apart by
/// a label), where no single counter's help describes the family.
pub(crate) const FAMILIES: &[(&str, &str)] = &[
    (
        "wsflow_executions_total",
        "Executions by how they ended: ok, failed (the flow returned an error), trapped, \
         limit_exceeded.",
    ),
    (
        "wsflow_messages_total",
        "Data messages by direction: in (read from clients), out (sent by flows).",
    ),
    (
        "wsflow_message_bytes_total",
        "Payload bytes of data messages by direction.",
    ),
    (
        "wsflow_outbound_requests_total",
        "Outbound HTTP requests by outcome: ok (a response came), denied (no grant, or a \
         forbidden address), limited (over an app limit), timeout (connecting or waiting for \
         the headers), failed.",
    ),
    (
        "wsflow_kv_operations_total",
        "Key-value operations by outcome: ok, failed (an error value, quotas included).",
    ),
    (
        "wsflow_api_requests_total",
        "Server API requests by operation: publish, send, close, group, batch.",
    ),
    (
        "wsflow_queued_bytes",
        "Message bytes waiting now, by direction: in (for flows), out (for clients).",
    ),
    (
        "wsflow_cluster_queued_bytes",
        "Cluster bytes waiting now, by direction: out (in the app's lane of the link), in \
         (from other hosts, for the app's members).",
    ),
];

impl AppStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl StatsSnapshot {
    /// Every counter as `field=value`, space-separated, in table order: the
    /// `app totals` line.
    pub(crate) fn summary(&self) -> String {
        let mut line = String::new();
        for counter in COUNTERS {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(counter.field);
            line.push('=');
            line.push_str(&(counter.read)(self).to_string());
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_reads_its_own_field() {
        let stats = AppStats::default();
        let atomics = stats.atomics();
        assert_eq!(atomics.len(), COUNTERS.len());
        for (i, atomic) in atomics.into_iter().enumerate() {
            AppStats::add(atomic, i as u64 + 1);
        }
        let snapshot = stats.snapshot();
        let json = serde_json::to_value(snapshot).unwrap();
        for (i, counter) in COUNTERS.iter().enumerate() {
            assert_eq!((counter.read)(&snapshot), i as u64 + 1, "{}", counter.field);
            assert_eq!(json[counter.field], i as u64 + 1, "{}", counter.field);
        }
        assert_eq!(json.as_object().unwrap().len(), COUNTERS.len());
    }

    #[test]
    fn series_with_several_counters_are_labelled_and_described_as_a_family() {
        for counter in COUNTERS {
            let family: Vec<_> = COUNTERS
                .iter()
                .filter(|other| other.series == counter.series)
                .collect();
            if family.len() > 1 {
                assert!(counter.label.is_some(), "{}", counter.field);
                assert!(
                    FAMILIES.iter().any(|(name, _)| *name == counter.series),
                    "{} has no family help",
                    counter.series
                );
                assert!(family.iter().all(|other| other.kind == counter.kind));
            }
        }
    }

    #[test]
    fn the_summary_names_every_counter() {
        let stats = AppStats::default();
        AppStats::add(&stats.messages_in, 7);
        let summary = stats.snapshot().summary();
        assert!(summary.contains("messages_in=7"), "{summary}");
        assert_eq!(summary.split(' ').count(), COUNTERS.len());
    }
}
