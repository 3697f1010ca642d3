//! The host's client sockets: how many it may hold at once, derived from
//! the process's descriptor limit so that some descriptors are always left
//! for the host itself; how many of those may still be in a handshake; and
//! how an accept loop backs off when accepting fails.
//!
//! Every listener takes a slot before it accepts, so a full host stops
//! accepting (clients wait in the listen backlog) instead of running out of
//! descriptors, which would stop every listener and the admin endpoint.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Client sockets a host whose descriptors are unlimited may hold.
const UNLIMITED_SOCKETS: usize = 1 << 20;

/// Descriptors kept for the host: listeners, the admin endpoint and its
/// clients, files flows read through `read_only_dir`, the compile cache,
/// the log. A tenth of the limit, at least 64 and at most 4,096, and never
/// more than half the limit.
fn kept_for_the_host(limit: u64) -> u64 {
    (limit / 10).clamp(64, 4096).min(limit / 2)
}

/// Limits on the client sockets of the whole host.
#[derive(Debug)]
pub(crate) struct HostSockets {
    /// Every accepted client socket, from accept until its connection ends.
    open: Arc<Semaphore>,
    /// Accepted sockets still in TLS or the upgrade.
    handshakes: Arc<Semaphore>,
    max_open: usize,
    max_handshakes: usize,
    /// The soft `RLIMIT_NOFILE` the limits were derived from.
    descriptor_limit: Option<u64>,
}

impl HostSockets {
    /// The limits for this process's descriptor limit (`RLIMIT_NOFILE`, read
    /// once).
    pub(crate) fn for_this_process() -> Self {
        Self::for_descriptor_limit(descriptor_limit())
    }

    /// The limits for a soft descriptor limit (`None`: unlimited): all but
    /// the host's share of descriptors for client sockets, and at most half
    /// of those in a handshake, so upgraded clients always have room.
    pub(crate) fn for_descriptor_limit(limit: Option<u64>) -> Self {
        let max_open = match limit {
            None => UNLIMITED_SOCKETS,
            Some(limit) => usize::try_from(limit - kept_for_the_host(limit))
                .unwrap_or(UNLIMITED_SOCKETS)
                .clamp(2, UNLIMITED_SOCKETS),
        };
        let max_handshakes = max_open / 2;
        Self {
            open: Arc::new(Semaphore::new(max_open)),
            handshakes: Arc::new(Semaphore::new(max_handshakes)),
            max_open,
            max_handshakes,
            descriptor_limit: limit,
        }
    }

    /// One line for the log: the limits and where they come from.
    pub(crate) fn describe(&self) -> String {
        let source = match self.descriptor_limit {
            Some(limit) => format!(
                "descriptor limit {limit}, {} kept for the host",
                kept_for_the_host(limit)
            ),
            None => "no descriptor limit".to_owned(),
        };
        format!(
            "client sockets: at most {} open, {} of them in a handshake ({source})",
            self.max_open, self.max_handshakes
        )
    }

    /// The handshake slots of one listener: its setting, but never more than
    /// half the host's, so one crowded listener leaves room for the others.
    pub(crate) fn listener_handshakes(&self, configured: usize) -> ListenerHandshakes {
        let max = configured.min(self.max_handshakes / 2).max(1);
        ListenerHandshakes {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot for one more socket in a handshake on `listener`, if there is
    /// room now.
    pub(crate) fn try_reserve(&self, listener: &ListenerHandshakes) -> Option<HandshakeSlot> {
        let listener = Arc::clone(&listener.slots).try_acquire_owned().ok()?;
        let host = Arc::clone(&self.handshakes).try_acquire_owned().ok()?;
        let socket = Arc::clone(&self.open).try_acquire_owned().ok()?;
        Some(HandshakeSlot {
            _listener: listener,
            _host: host,
            socket,
        })
    }

    /// Wait for a slot for one more socket in a handshake on `listener`:
    /// the listener's, then the host's, then a place among open sockets.
    pub(crate) async fn reserve(&self, listener: &ListenerHandshakes) -> HandshakeSlot {
        let acquire = |semaphore: &Arc<Semaphore>| Arc::clone(semaphore).acquire_owned();
        let listener = acquire(&listener.slots).await.expect("never closed");
        let host = acquire(&self.handshakes).await.expect("never closed");
        let socket = acquire(&self.open).await.expect("never closed");
        HandshakeSlot {
            _listener: listener,
            _host: host,
            socket,
        }
    }

    /// How full the host is, for the log.
    pub(crate) fn usage(&self, listener: &ListenerHandshakes) -> String {
        let used = |semaphore: &Semaphore, max: usize| max - semaphore.available_permits();
        format!(
            "{} of {} handshakes pending on this listener, {} of {} on the host, {} of {} sockets open",
            used(&listener.slots, listener.max),
            listener.max,
            used(&self.handshakes, self.max_handshakes),
            self.max_handshakes,
            used(&self.open, self.max_open),
            self.max_open,
        )
    }
}

/// The handshake slots of one listener.
#[derive(Debug)]
pub(crate) struct ListenerHandshakes {
    slots: Arc<Semaphore>,
    max: usize,
}

/// A client socket in its handshake: it holds a handshake slot of its
/// listener and of the host, and a place among open sockets.
#[derive(Debug)]
pub(crate) struct HandshakeSlot {
    _listener: OwnedSemaphorePermit,
    _host: OwnedSemaphorePermit,
    socket: OwnedSemaphorePermit,
}

impl HandshakeSlot {
    /// The handshake is over: the handshake slots are free again, the
    /// socket keeps its place until the connection ends.
    pub(crate) fn upgraded(self) -> SocketSlot {
        SocketSlot {
            _socket: self.socket,
        }
    }
}

/// An upgraded client socket's place among open sockets.
#[derive(Debug)]
pub(crate) struct SocketSlot {
    _socket: OwnedSemaphorePermit,
}

/// The soft `RLIMIT_NOFILE` of this process; `None` when unlimited.
#[cfg(unix)]
fn descriptor_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit};
    getrlimit(Resource::Nofile).current
}

#[cfg(not(unix))]
fn descriptor_limit() -> Option<u64> {
    None
}

/// Pauses an accept loop after an error instead of letting it spin: an
/// accept that fails for want of a descriptor (`EMFILE`, `ENFILE`) fails
/// again at once. The pause doubles from 10 ms up to 1 s while errors go
/// on, and starts over after an accept succeeds.
#[derive(Debug, Default)]
pub(crate) struct AcceptBackoff {
    pause: Option<Duration>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    /// An accept succeeded.
    pub(crate) fn succeeded(&mut self) {
        self.pause = None;
    }

    /// An accept failed: how long to pause before the next. The first
    /// error of a run is logged as a warning, the rest at debug level.
    pub(crate) fn failed(&mut self, error: &std::io::Error) -> Duration {
        let pause = match self.pause {
            None => {
                tracing::warn!("accept failed: {error}; pausing before the next");
                Self::FIRST
            }
            Some(pause) => {
                tracing::debug!("accept failed again: {error}");
                (pause * 2).min(Self::MAX)
            }
        };
        self.pause = Some(pause);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_keeps_a_share_of_descriptors_and_handshakes_get_half_the_rest() {
        let sockets = HostSockets::for_descriptor_limit(Some(1024));
        assert_eq!((sockets.max_open, sockets.max_handshakes), (922, 461));
        let sockets = HostSockets::for_descriptor_limit(Some(256));
        assert_eq!((sockets.max_open, sockets.max_handshakes), (192, 96));
        let sockets = HostSockets::for_descriptor_limit(Some(1 << 20));
        assert_eq!(sockets.max_open, (1 << 20) - 4096);
        let sockets = HostSockets::for_descriptor_limit(Some(64));
        assert_eq!((sockets.max_open, sockets.max_handshakes), (32, 16));
        let sockets = HostSockets::for_descriptor_limit(None);
        assert_eq!(sockets.max_open, UNLIMITED_SOCKETS);
    }

    #[test]
    fn a_listener_gets_at_most_half_the_hosts_handshakes() {
        let sockets = HostSockets::for_descriptor_limit(Some(256));
        assert_eq!(sockets.listener_handshakes(256).max, 48);
        assert_eq!(sockets.listener_handshakes(2).max, 2);
    }

    #[test]
    fn slots_run_out_and_come_back() {
        let sockets = HostSockets::for_descriptor_limit(Some(256));
        let listener = sockets.listener_handshakes(2);
        let first = sockets.try_reserve(&listener).unwrap();
        let second = sockets.try_reserve(&listener).unwrap();
        assert!(sockets.try_reserve(&listener).is_none());
        let upgraded = first.upgraded();
        let third = sockets.try_reserve(&listener).unwrap();
        assert_eq!(sockets.open.available_permits(), 192 - 3);
        drop((upgraded, second, third));
        assert_eq!(sockets.open.available_permits(), 192);
    }

    #[test]
    fn accept_errors_pause_longer_and_longer_up_to_a_second() {
        let error = std::io::Error::from_raw_os_error(24);
        let mut backoff = AcceptBackoff::default();
        let pauses: Vec<_> = (0..9).map(|_| backoff.failed(&error)).collect();
        assert_eq!(pauses[0], Duration::from_millis(10));
        assert_eq!(pauses[1], Duration::from_millis(20));
        assert_eq!(pauses[8], Duration::from_secs(1));
        backoff.succeeded();
        assert_eq!(backoff.failed(&error), Duration::from_millis(10));
    }
}
