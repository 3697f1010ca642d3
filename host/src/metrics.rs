//! What the host records for `GET /metrics` beyond the plain counters of
//! [`AppStats`](crate::app::AppStats): histograms of execution time and
//! message size, and which limit stopped an execution. Recording is cheap
//! enough for every message: a search over a dozen fixed bucket bounds and
//! two relaxed atomic adds; no lock, no allocation.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What a histogram measures: its bucket bounds in recorded units, and how
/// a recorded value is shown.
pub(crate) trait Unit {
    /// Inclusive upper bounds of the buckets, ascending; one more bucket
    /// (`+Inf`) takes the rest.
    const BOUNDS: &'static [u64];
    /// Recorded units per shown unit (microseconds per second, say).
    const PER_SHOWN: f64;
}

/// Execution time, recorded in microseconds and shown in seconds: from
/// 100 µs (a small data-mode flow) to an hour (a long connection-mode
/// session).
#[derive(Debug)]
pub(crate) enum Seconds {}

impl Unit for Seconds {
    const BOUNDS: &'static [u64] = &[
        100,
        250,
        500,
        1_000,
        2_500,
        5_000,
        10_000,
        25_000,
        50_000,
        100_000,
        250_000,
        500_000,
        1_000_000,
        2_500_000,
        5_000_000,
        10_000_000,
        60_000_000,
        600_000_000,
        3_600_000_000,
    ];
    const PER_SHOWN: f64 = 1e6;
}

/// Message size in bytes, from 16 bytes to 16 MiB (the largest
/// `max_message_size` worth a bucket of its own).
#[derive(Debug)]
pub(crate) enum Bytes {}

impl Unit for Bytes {
    const BOUNDS: &'static [u64] = &[
        16,
        64,
        256,
        1 << 10,
        4 << 10,
        16 << 10,
        64 << 10,
        256 << 10,
        1 << 20,
        4 << 20,
        16 << 20,
    ];
    const PER_SHOWN: f64 = 1.0;
}

/// A histogram with fixed buckets: a count per bucket (not cumulative: a
/// value is counted once) and the sum of the values.
#[derive(Debug)]
pub(crate) struct Histogram<U: Unit> {
    /// One per bound, then `+Inf`.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    unit: PhantomData<U>,
}

impl<U: Unit> Default for Histogram<U> {
    fn default() -> Self {
        Self {
            buckets: (0..=U::BOUNDS.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            unit: PhantomData,
        }
    }
}

impl<U: Unit> Histogram<U> {
    /// Count one value (in recorded units).
    pub(crate) fn record(&self, value: u64) {
        let bucket = U::BOUNDS.partition_point(|&bound| bound < value);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// The buckets as Prometheus shows them: cumulative counts by upper
    /// bound (in shown units, `+Inf` last), the sum (shown units) and the
    /// count. Read while others record, the count is that of the buckets
    /// read, and the sum may be a few values ahead or behind.
    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(self.buckets.len());
        for (i, bucket) in self.buckets.iter().enumerate() {
            running += bucket.load(Ordering::Relaxed);
            let bound = U::BOUNDS.get(i).map(|&bound| bound as f64 / U::PER_SHOWN);
            cumulative.push((bound, running));
        }
        HistogramSnapshot {
            cumulative,
            sum: self.sum.load(Ordering::Relaxed) as f64 / U::PER_SHOWN,
            count: running,
        }
    }
}

impl Histogram<Seconds> {
    /// Count one duration.
    pub(crate) fn record_duration(&self, duration: Duration) {
        self.record(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX));
    }
}

/// A point-in-time copy of a [`Histogram`], in shown units.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistogramSnapshot {
    /// Upper bound (`None`: `+Inf`) and the count of values up to it.
    pub(crate) cumulative: Vec<(Option<f64>, u64)>,
    pub(crate) sum: f64,
    pub(crate) count: u64,
}

/// What an execution ran as, for its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExecutionKind {
    /// Data mode: one message, in a fresh or a reused instance.
    Message,
    /// Connection mode: the connection's whole session.
    Session,
    /// A lifecycle hook (`on_connect`, `on_close`).
    Hook,
}

impl ExecutionKind {
    pub(crate) const ALL: [Self; 3] = [Self::Message, Self::Session, Self::Hook];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Session => "session",
            Self::Hook => "hook",
        }
    }
}

/// A limit that stopped an execution or closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    Memory,
    AppMemory,
    CpuTime,
    WallTime,
    SlowClient,
}

impl Limit {
    pub(crate) const ALL: [Self; 5] = [
        Self::Memory,
        Self::AppMemory,
        Self::CpuTime,
        Self::WallTime,
        Self::SlowClient,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::AppMemory => "app_memory",
            Self::CpuTime => "cpu_time",
            Self::WallTime => "wall_time",
            Self::SlowClient => "slow_client",
        }
    }
}

/// The histograms and limit counters of one app.
#[derive(Debug, Default)]
pub(crate) struct AppMetrics {
    /// Execution time by [`ExecutionKind`], in its order.
    execution_time: [Histogram<Seconds>; 3],
    /// Sizes of data messages read from clients.
    pub(crate) message_size_in: Histogram<Bytes>,
    /// Sizes of data messages flows sent.
    pub(crate) message_size_out: Histogram<Bytes>,
    /// Executions stopped by each [`Limit`], in its order.
    limit_hits: [AtomicU64; 5],
    /// Time outbound HTTP requests took to their response's headers (or
    /// their failure), denied ones not included.
    pub(crate) outbound_request_time: Histogram<Seconds>,
    /// Time of key-value operations, from the flow's call to the
    /// backend's answer.
    pub(crate) kv_operation_time: Histogram<Seconds>,
}

impl AppMetrics {
    /// Count an execution of `kind` that ran for `took`.
    pub(crate) fn record_execution(&self, kind: ExecutionKind, took: Duration) {
        self.execution_time(kind).record_duration(took);
    }

    pub(crate) fn execution_time(&self, kind: ExecutionKind) -> &Histogram<Seconds> {
        &self.execution_time[kind as usize]
    }

    /// Count an execution stopped by `limit`.
    pub(crate) fn record_limit(&self, limit: Limit) {
        self.limit_hits[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Executions stopped by `limit` so far.
    pub(crate) fn limit_hits(&self, limit: Limit) -> u64 {
        self.limit_hits[limit as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let histogram = Histogram::<Bytes>::default();
        for size in [0, 16, 17, 64, 1 << 30] {
            histogram.record(size);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 5);
        assert_eq!(snapshot.sum, (16 + 17 + 64 + (1u64 << 30)) as f64);
        assert_eq!(snapshot.cumulative[0], (Some(16.0), 2));
        assert_eq!(snapshot.cumulative[1], (Some(64.0), 4));
        assert_eq!(snapshot.cumulative.last(), Some(&(None, 5)));
        assert!(
            snapshot.cumulative.windows(2).all(|w| w[0].1 <= w[1].1),
            "cumulative: {snapshot:?}"
        );
    }

    #[test]
    fn durations_are_shown_in_seconds() {
        let histogram = Histogram::<Seconds>::default();
        histogram.record_duration(Duration::from_micros(1_500));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.sum, 0.0015);
        let first_holding_it = snapshot.cumulative.iter().find(|(_, n)| *n == 1);
        assert_eq!(first_holding_it, Some(&(Some(0.0025), 1)));
    }

    #[test]
    fn the_bounds_ascend() {
        assert!(Seconds::BOUNDS.windows(2).all(|w| w[0] < w[1]));
        assert!(Bytes::BOUNDS.windows(2).all(|w| w[0] < w[1]));
    }
}
