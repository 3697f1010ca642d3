//! Which other hosts serve an app: every host announces itself on the
//! app's `hosts` subject each [`HEARTBEAT`] and says `bye` when it stops;
//! one not heard from for [`HOST_TIMEOUT`] is taken for gone. Counts and
//! listings ask the hosts listed here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use std::time::Instant;

use crate::hub::HostId;

/// How often a host says it serves an app.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(1);

/// A host not heard from for this long is gone: five heartbeats, so a
/// host that is merely busy for a few seconds is not dropped (its members
/// would vanish from counts).
pub(super) const HOST_TIMEOUT: Duration = Duration::from_secs(5);

/// The other hosts of one app and when each was last heard from.
#[derive(Debug, Default)]
pub(super) struct Directory {
    heard: Mutex<HashMap<HostId, Instant>>,
}

impl Directory {
    /// `host` was heard from now.
    pub(super) fn heard(&self, host: HostId) {
        self.heard_at(host, Instant::now());
    }

    /// `host` was heard from at `now`; returns whether it was unknown.
    fn heard_at(&self, host: HostId, now: Instant) -> bool {
        self.heard
            .lock()
            .expect("not poisoned")
            .insert(host, now)
            .is_none_or(|last| now.duration_since(last) > HOST_TIMEOUT)
    }

    /// `host` said goodbye, or has no subscriptions left.
    pub(super) fn forget(&self, host: HostId) {
        self.heard.lock().expect("not poisoned").remove(&host);
    }

    /// The hosts heard from within [`HOST_TIMEOUT`], in id order; the
    /// others are forgotten.
    pub(super) fn peers(&self) -> Vec<HostId> {
        self.peers_at(Instant::now())
    }

    fn peers_at(&self, now: Instant) -> Vec<HostId> {
        let mut heard = self.heard.lock().expect("not poisoned");
        heard.retain(|_, last| now.duration_since(*last) <= HOST_TIMEOUT);
        let mut peers: Vec<HostId> = heard.keys().copied().collect();
        peers.sort_unstable();
        peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(n: u32) -> HostId {
        HostId::new(n).unwrap()
    }

    #[test]
    fn a_silent_host_is_gone_after_the_timeout_and_a_bye_at_once() {
        let directory = Directory::default();
        let start = Instant::now();
        assert!(directory.heard_at(host(1), start));
        assert!(directory.heard_at(host(2), start));
        assert!(!directory.heard_at(host(2), start));
        assert!(directory.heard_at(host(3), start));
        assert_eq!(directory.peers_at(start), [host(1), host(2), host(3)]);

        directory.forget(host(3));
        let later = start + HOST_TIMEOUT - HEARTBEAT;
        directory.heard_at(host(2), later);
        assert_eq!(directory.peers_at(later), [host(1), host(2)]);

        let much_later = later + HEARTBEAT * 2;
        assert_eq!(
            directory.peers_at(much_later),
            [host(2)],
            "host 1 was silent too long"
        );
        assert!(
            directory.heard_at(host(1), much_later),
            "a host back after the timeout is new"
        );
    }
}
