//! Connection ids: unique in the host and, in a cluster, across its hosts,
//! because every id names the host that holds its connection; and
//! unguessable, so an id tells a tenant nothing about the host's other
//! connections.
//!
//! ```text
//! bit 63 ........ 53 | 52 ......... 33 | 32 ............ 0
//!       always 0     |  host id (20)    |  count (33), permuted
//! ```
//!
//! Ids stay below 2^53, so a JavaScript number (a browser client that
//! reads an id from JSON) holds every one of them exactly.
//!
//! The count part is the host's connection count passed through a keyed
//! permutation ([`Permutation`]) chosen at random when the host starts:
//! distinct counts give distinct ids, as a counter does, but an id does
//! not reveal how many connections the host (all its apps) made before or
//! since, nor the id the next connection gets.

use std::fmt;
use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering};

use super::ConnectionId;

/// Bits of an id that count a host's connections: 2^33 - 1 (8.6 billion)
/// ids before the count starts again, by which time the connection that
/// had an id is long gone (and an app's hub refuses to attach a second
/// connection under a live id).
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
    shuffle: Permutation,
}

impl ConnectionIds {
    pub(crate) fn new(host: HostId) -> Self {
        Self {
            host,
            counted: AtomicU64::new(0),
            shuffle: Permutation::random(COUNT_BITS.div_ceil(2), COUNT_SPAN),
        }
    }

    /// A new id: the host's id and the next count, permuted (never 0).
    pub(crate) fn next(&self) -> ConnectionId {
        let n = self.counted.fetch_add(1, Ordering::Relaxed) % COUNT_SPAN;
        let count = self.shuffle.apply(n) + 1;
        (u64::from(self.host.0) << COUNT_BITS) | count
    }
}

/// A keyed permutation of `0..span`: a four-round Feistel network over
/// two halves of `half_bits` bits each (a permutation of
/// `0..2^(2 * half_bits)`, with SipHash under random keys as its round
/// function), walked until it lands in `0..span` again. Walking a
/// permutation of a larger set that way is a permutation of the smaller
/// one; with `span` over half the larger set, a walk takes two steps on
/// average.
struct Permutation {
    keys: std::collections::hash_map::RandomState,
    half_bits: u32,
    span: u64,
}

/// Keys are random and not shown.
impl fmt::Debug for Permutation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permutation")
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}

impl Permutation {
    /// Four rounds: the fewest for which a Feistel network with random
    /// round functions is indistinguishable from a random permutation.
    const ROUNDS: u8 = 4;

    fn random(half_bits: u32, span: u64) -> Self {
        assert!(span <= 1 << (2 * half_bits), "the span fits the network");
        Self {
            keys: std::collections::hash_map::RandomState::new(),
            half_bits,
            span,
        }
    }

    /// Where `n` (below the span) goes.
    fn apply(&self, n: u64) -> u64 {
        debug_assert!(n < self.span);
        let mut x = self.feistel(n);
        while x >= self.span {
            x = self.feistel(x);
        }
        x
    }

    fn feistel(&self, x: u64) -> u64 {
        let mask = (1 << self.half_bits) - 1;
        let (mut left, mut right) = (x >> self.half_bits, x & mask);
        for round in 0..Self::ROUNDS {
            let mixed = self.keys.hash_one((round, right)) & mask;
            (left, right) = (right, left ^ mixed);
        }
        (left << self.half_bits) | right
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

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
        let id = local.next();
        assert!((1..=COUNT_SPAN).contains(&id), "{id}");
    }

    #[test]
    fn ids_are_distinct_and_do_not_count_the_hosts_connections() {
        let ids = ConnectionIds::new(HostId::new(5).unwrap());
        let handed: Vec<ConnectionId> = (0..100_000).map(|_| ids.next()).collect();
        let distinct: HashSet<_> = handed.iter().collect();
        assert_eq!(distinct.len(), handed.len());
        // A counter's ids rise by one; these are spread over the whole
        // count: neither their order nor their gaps tell how many
        // connections came between two of them.
        let rising = handed.windows(2).filter(|w| w[1] > w[0]).count();
        assert!(
            (40_000..60_000).contains(&rising),
            "{rising} of 99,999 rise"
        );
        let counts = handed.iter().map(|id| id & COUNT_SPAN);
        assert!(counts.clone().any(|count| count > COUNT_SPAN / 2));
        assert!(counts.clone().any(|count| count < COUNT_SPAN / 2));
        // Another host start, another order.
        let again = ConnectionIds::new(HostId::new(5).unwrap());
        let other: Vec<ConnectionId> = (0..8).map(|_| again.next()).collect();
        assert_ne!(other, handed[..8]);
    }

    #[test]
    fn the_permutation_is_one_to_one_on_its_span() {
        for (half_bits, span) in [(4, 256), (4, 200), (5, 600), (3, 33)] {
            let shuffle = Permutation::random(half_bits, span);
            let images: HashSet<u64> = (0..span).map(|n| shuffle.apply(n)).collect();
            assert_eq!(images.len() as u64, span);
            assert!(images.iter().all(|image| *image < span));
        }
    }

    #[test]
    fn the_count_starts_again_without_touching_the_host_bits() {
        let ids = ConnectionIds::new(HostId::new(5).unwrap());
        ids.counted.store(COUNT_SPAN - 1, Ordering::Relaxed);
        let last = ids.next();
        let first_again = ids.next();
        ids.counted.store(0, Ordering::Relaxed);
        assert_eq!(first_again, ids.next(), "the count wrapped to its start");
        assert_ne!(last, first_again);
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
