//! Connection ids: unique in the host and, in a cluster, across its hosts,
//! because every id names the host that holds its connection.
//!
//! ```text
//! bit 63 ........ 53 | 52 ......... 33 | 32 ............ 0
//!       always 0     |  host id (20)    |  count (33)
//! ```
//!
//! Ids stay below 2^53, so a JavaScript number (a browser client that
//! reads an id from JSON) holds every one of them exactly.

use std::fmt;
use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering};

use super::ConnectionId;

/// Bits of an id that count a host's connections: 2^33 - 1 (8.6 billion)
/// ids before the count starts again at 1, by which time the connection
/// that had an id is long gone.
const COUNT_BITS: u32 = 33;

/// Bits of an id that name its host: room for a million host ids, so a
/// randomly chosen one rarely meets another.
const HOST_BITS: u32 = 20;

const COUNT_SPAN: u64 = (1 << COUNT_BITS) - 1;

/// A host's id in its cluster, 1 to 2^20 - 1; a host without a cluster
/// is [`HostId::LOCAL`] (0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct HostId(u32);

impl HostId {
    /// The host of an app served without a cluster.
    pub(crate) const LOCAL: Self = Self(0);

    const MAX: u32 = (1 << HOST_BITS) - 1;

    /// `n` as a cluster host's id, if it is one (1 to 2^20 - 1).
    pub(crate) fn new(n: u32) -> Option<Self> {
        (1..=Self::MAX).contains(&n).then_some(Self(n))
    }

    /// A cluster host's id, chosen at random: the std hasher's random keys
    /// mixed with the time and the process id.
    pub(crate) fn random() -> Self {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        std::time::SystemTime::now().hash(&mut hasher);
        std::process::id().hash(&mut hasher);
        let n = (hasher.finish() % u64::from(Self::MAX)) + 1;
        Self(u32::try_from(n).expect("below 2^20"))
    }

    /// The host that holds connection `id`.
    pub(crate) fn of(id: ConnectionId) -> Self {
        let host = (id >> COUNT_BITS) & u64::from(Self::MAX);
        Self(u32::try_from(host).expect("below 2^20"))
    }

    pub(crate) fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Hands out the ids of one host's connections (all its apps').
#[derive(Debug)]
pub(crate) struct ConnectionIds {
    host: HostId,
    counted: AtomicU64,
}

impl ConnectionIds {
    pub(crate) fn new(host: HostId) -> Self {
        Self {
            host,
            counted: AtomicU64::new(0),
        }
    }

    /// A new id: the host's id and the next count (never 0).
    pub(crate) fn next(&self) -> ConnectionId {
        let n = self.counted.fetch_add(1, Ordering::Relaxed);
        let count = n % COUNT_SPAN + 1;
        (u64::from(self.host.0) << COUNT_BITS) | count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_host_and_fit_a_javascript_number() {
        for host in [1, 2, 77, HostId::MAX] {
            let ids = ConnectionIds::new(HostId::new(host).unwrap());
            for _ in 0..3 {
                let id = ids.next();
                assert_eq!(HostId::of(id).get(), host);
                assert!(id < 1 << 53, "{id}");
                assert!(id & COUNT_SPAN != 0);
            }
        }
        let local = ConnectionIds::new(HostId::LOCAL);
        assert_eq!([local.next(), local.next()], [1, 2]);
    }

    #[test]
    fn the_count_starts_again_without_touching_the_host_bits() {
        let ids = ConnectionIds::new(HostId::new(5).unwrap());
        ids.counted.store(COUNT_SPAN - 1, Ordering::Relaxed);
        let last = ids.next();
        let first_again = ids.next();
        assert_eq!(last & COUNT_SPAN, COUNT_SPAN);
        assert_eq!(first_again & COUNT_SPAN, 1);
        assert_eq!(HostId::of(last).get(), 5);
        assert_eq!(HostId::of(first_again).get(), 5);
    }

    #[test]
    fn host_ids_are_one_to_2_pow_20_minus_1() {
        assert_eq!(HostId::new(0), None);
        assert_eq!(HostId::new(1 << 20), None);
        for _ in 0..1000 {
            let host = HostId::random();
            assert!(HostId::new(host.get()).is_some(), "{host}");
        }
    }
}
