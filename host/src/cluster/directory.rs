//! Which other hosts serve an app, and which groups each holds members in.
//!
//! Every host announces itself on the app's `hosts` subject each
//! [`HEARTBEAT`] and says `bye` when it stops. A host is forgotten only
//! when it says `bye` or when the broker says nobody answers for it any
//! more ("no responders": its connection closed); one merely silent stays
//! listed, so counts and listings ask it and answer `unavailable` while it
//! does not answer, never a smaller number. A host silent for
//! [`HOST_TIMEOUT`] is probed, so a host that is gone is noticed even when
//! no count asks for it.
//!
//! What groups a peer holds comes from the peer: once this host has heard
//! of it, it asks for the whole set, and the peer then tells every change
//! before a join of its returns ([`super::interest`]). Until the set has
//! arrived the peer counts as holding every group, so a publish is sent
//! to the broker whenever any peer might hold a member.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::hub::{GroupName, HostId};

/// How often a host says it serves an app.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(1);

/// A host not heard from for this long is probed: five heartbeats, so a
/// host that is merely busy for a few seconds is not bothered.
pub(super) const HOST_TIMEOUT: Duration = Duration::from_secs(5);

/// The other hosts of one app: when each was last heard from, and the
/// groups each holds.
#[derive(Debug, Default)]
pub(super) struct Directory {
    hosts: Mutex<HashMap<HostId, Peer>>,
}

#[derive(Debug)]
struct Peer {
    heard: Instant,
    /// When its groups were last asked for, while they are unknown.
    asked: Option<Instant>,
    /// The groups it holds members in; `None` until its whole set arrived.
    groups: Option<HashSet<GroupName>>,
    /// The parts of a set on its way.
    arriving: Option<HashSet<GroupName>>,
}

impl Peer {
    fn new(now: Instant) -> Self {
        Self {
            heard: now,
            asked: None,
            groups: None,
            arriving: None,
        }
    }
}

/// One change a peer tells: it holds members of a group now, or no more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    Holds(GroupName),
    Dropped(GroupName),
}

impl Directory {
    /// `host` was heard from now; returns whether to ask for its groups:
    /// they are unknown, and were not asked for in the last [`HEARTBEAT`]
    /// (the answer may be on its way).
    pub(super) fn heard(&self, host: HostId) -> bool {
        self.heard_at(host, Instant::now())
    }

    fn heard_at(&self, host: HostId, now: Instant) -> bool {
        let mut hosts = self.lock();
        let peer = hosts.entry(host).or_insert_with(|| Peer::new(now));
        peer.heard = now;
        let ask = peer.groups.is_none()
            && peer
                .asked
                .is_none_or(|asked| now.duration_since(asked) >= HEARTBEAT);
        if ask {
            peer.asked = Some(now);
        }
        ask
    }

    /// `host` started, or is back after losing the broker: what it held
    /// before may have changed unseen; its groups are unknown again.
    pub(super) fn hello(&self, host: HostId) {
        self.lock().insert(host, Peer::new(Instant::now()));
    }

    /// This host is back after losing the broker: what every peer holds
    /// may have changed unseen.
    pub(super) fn forget_groups(&self) {
        for peer in self.lock().values_mut() {
            peer.groups = None;
            peer.arriving = None;
            peer.asked = None;
        }
    }

    /// `host` said goodbye, or nobody answers for it any more.
    pub(super) fn forget(&self, host: HostId) {
        self.lock().remove(&host);
    }

    /// Every host listed, in id order: the ones to ask.
    pub(super) fn peers(&self) -> Vec<HostId> {
        let mut peers: Vec<HostId> = self.lock().keys().copied().collect();
        peers.sort_unstable();
        peers
    }

    /// The hosts not heard from for [`HOST_TIMEOUT`], to probe.
    pub(super) fn silent(&self) -> Vec<HostId> {
        self.silent_at(Instant::now())
    }

    fn silent_at(&self, now: Instant) -> Vec<HostId> {
        self.lock()
            .iter()
            .filter(|(_, peer)| now.duration_since(peer.heard) > HOST_TIMEOUT)
            .map(|(host, _)| *host)
            .collect()
    }

    /// A part of `host`'s set of groups; `last` ends it.
    pub(super) fn groups_part(
        &self,
        host: HostId,
        groups: impl IntoIterator<Item = GroupName>,
        last: bool,
    ) {
        let mut hosts = self.lock();
        let peer = hosts
            .entry(host)
            .or_insert_with(|| Peer::new(Instant::now()));
        let arriving = peer.arriving.get_or_insert_with(HashSet::new);
        arriving.extend(groups);
        if last {
            peer.groups = peer.arriving.take();
            peer.asked = None;
        }
    }

    /// `host` tells what changed since its set. Changes come in the order
    /// it made them, after the set they follow: before its set arrived
    /// they are in it already.
    pub(super) fn changed(&self, host: HostId, changes: impl IntoIterator<Item = Change>) {
        let mut hosts = self.lock();
        let peer = hosts
            .entry(host)
            .or_insert_with(|| Peer::new(Instant::now()));
        let Some(groups) = &mut peer.groups else {
            return;
        };
        for change in changes {
            match change {
                Change::Holds(group) => groups.insert(group),
                Change::Dropped(group) => groups.remove(&group),
            };
        }
    }

    /// Whether any peer may hold a member of `group`: one does, or one has
    /// not told its groups yet.
    pub(super) fn may_hold(&self, group: &GroupName) -> bool {
        self.lock().values().any(|peer| {
            peer.groups
                .as_ref()
                .is_none_or(|groups| groups.contains(group))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<HostId, Peer>> {
        self.hosts.lock().expect("not poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(n: u32) -> HostId {
        HostId::new(n).unwrap()
    }

    fn group(name: &str) -> GroupName {
        GroupName::parse(name).unwrap()
    }

    #[test]
    fn a_silent_host_stays_listed_and_is_probed_a_bye_removes_it() {
        let directory = Directory::default();
        let start = Instant::now();
        assert!(directory.heard_at(host(1), start));
        assert!(directory.heard_at(host(2), start));
        assert!(directory.heard_at(host(3), start));
        assert_eq!(directory.peers(), [host(1), host(2), host(3)]);

        directory.forget(host(3));
        let later = start + HOST_TIMEOUT - HEARTBEAT;
        directory.heard_at(host(2), later);
        assert_eq!(directory.peers(), [host(1), host(2)]);
        assert!(directory.silent_at(later).is_empty());

        let much_later = later + HEARTBEAT * 2;
        assert_eq!(directory.silent_at(much_later), [host(1)]);
        assert_eq!(
            directory.peers(),
            [host(1), host(2)],
            "silent is not gone: counts still ask host 1"
        );
    }

    #[test]
    fn a_peer_holds_every_group_until_its_set_arrives_then_what_it_tells() {
        let directory = Directory::default();
        assert!(!directory.may_hold(&group("a")), "no peers, nobody holds");
        assert!(directory.heard(host(1)));
        assert!(directory.may_hold(&group("a")), "groups not known yet");

        // A change before the set is in the set already.
        directory.changed(host(1), [Change::Holds(group("a"))]);
        directory.groups_part(host(1), [group("a")], false);
        assert!(directory.may_hold(&group("z")), "the set is not whole yet");
        assert!(
            !directory.heard(host(1)),
            "asked already, within a heartbeat"
        );
        directory.groups_part(host(1), [group("b")], true);
        assert!(!directory.heard(host(1)), "known");
        assert!(directory.may_hold(&group("a")));
        assert!(directory.may_hold(&group("b")));
        assert!(!directory.may_hold(&group("z")));

        directory.changed(
            host(1),
            [Change::Dropped(group("a")), Change::Holds(group("z"))],
        );
        assert!(!directory.may_hold(&group("a")));
        assert!(directory.may_hold(&group("z")));

        // Back after an outage: unknown again.
        directory.hello(host(1));
        assert!(directory.heard(host(1)));
        assert!(directory.may_hold(&group("a")));
        directory.groups_part(host(1), [], true);
        assert!(!directory.may_hold(&group("z")));
        directory.forget_groups();
        assert!(directory.may_hold(&group("z")));
    }
}
