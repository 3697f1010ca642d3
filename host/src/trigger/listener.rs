//! A trigger's listener: the accept loop (within the host's socket and
//! handshake budgets), TLS, and the HTTP request each client sends, which
//! is either admitted and upgraded or answered.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::WsTrigger;
use super::admission::Admission;
use super::connection::Serving;
use super::http1::{self, Head, Replay};
use super::progress::{self, Watched, WriteProgress};
use crate::manifest::spec::MAX_DURATION;
use crate::sockets::{AcceptBackoff, HandshakeSlot, HostSockets};

/// When a handshake that starts now must be done. The manifest caps
/// durations at `MAX_DURATION`; a longer timeout, set some other way, is
/// cut to that instead of overflowing the clock.
pub(super) fn handshake_deadline(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + MAX_DURATION)
}

/// How often at most an accept loop logs that it is paused.
const PAUSE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A client socket on its way through TLS, the HTTP request and the
/// upgrade.
pub(super) struct Client {
    pub(super) peer: SocketAddr,
    /// When TLS and the upgrade must be done.
    pub(super) deadline: Instant,
    /// Its handshake slot, then its place among the host's open sockets.
    pub(super) slot: HandshakeSlot,
    /// Fed by the socket, read by the connection's writer.
    pub(super) progress: Arc<WriteProgress>,
    pub(super) shutdown: CancellationToken,
}

/// The trigger a listener serves with. A reload puts a new version in:
/// connections accepted from then on are served by it, open ones keep the
/// version they were accepted by.
pub(crate) struct Listening {
    current: RwLock<Arc<WsTrigger>>,
}

impl Listening {
    pub(crate) fn new(trigger: WsTrigger) -> Self {
        Self {
            current: RwLock::new(Arc::new(trigger)),
        }
    }

    /// The version new connections get.
    pub(crate) fn current(&self) -> Arc<WsTrigger> {
        Arc::clone(&self.current.read().expect("not poisoned"))
    }

    /// Serve new connections with `trigger` from now on.
    pub(crate) fn replace(&self, trigger: WsTrigger) {
        *self.current.write().expect("not poisoned") = Arc::new(trigger);
    }

    /// Accept connections on an already-bound listener until `shutdown`.
    /// Each connection runs on `tracker`, so the caller can wait for them.
    ///
    /// A socket is accepted only when it has a handshake slot (of this
    /// listener and of the host) and a place among the host's open sockets;
    /// until then new clients wait in the listen backlog.
    /// Each connection is served by the version of the trigger current
    /// when it was accepted.
    pub(crate) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        sockets: Arc<HostSockets>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        let first = self.current();
        let app = Arc::clone(&first.app);
        let handshakes = sockets.listener_handshakes(first.limits.max_pending_handshakes);
        drop(first);
        let mut backoff = AcceptBackoff::default();
        let mut last_pause: Option<Instant> = None;
        loop {
            let slot = match sockets.try_reserve(&handshakes) {
                Some(slot) => slot,
                None => {
                    // Once a minute at most: under a crowd it would be
                    // every accept.
                    if last_pause.is_none_or(|at| at.elapsed() >= PAUSE_LOG_INTERVAL) {
                        tracing::warn!(
                            app = &*app.name,
                            "accepting paused: {}",
                            sockets.usage(&handshakes)
                        );
                        last_pause = Some(Instant::now());
                    }
                    tokio::select! {
                        slot = sockets.reserve(&handshakes) => slot,
                        () = shutdown.cancelled() => return,
                    }
                }
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.cancelled() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff.succeeded();
                    let trigger = self.current();
                    let client = Client {
                        peer,
                        deadline: handshake_deadline(trigger.limits.handshake_timeout),
                        slot,
                        progress: Arc::new(WriteProgress::new()),
                        shutdown: shutdown.clone(),
                    };
                    let span = tracing::info_span!(
                        "conn",
                        app = &*app.name,
                        %peer,
                        conn = tracing::field::Empty,
                        path = tracing::field::Empty,
                        flow = tracing::field::Empty,
                        instance = tracing::field::Empty,
                    );
                    tracker.spawn(
                        async move { trigger.connection(stream, client).await }.instrument(span),
                    );
                }
                Err(error) => {
                    drop(slot);
                    let pause = {
                        let _app = tracing::info_span!("accept", app = &*app.name).entered();
                        backoff.failed(&error)
                    };
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }
}

impl WsTrigger {
    async fn connection(&self, stream: TcpStream, client: Client) {
        // The handshake's futures (TLS, the request head, the upgrade) are
        // large and live only until the upgrade. Boxed, they are freed then,
        // and the connection's task keeps only what serves the connection.
        let handshake = Box::pin(self.handshake(stream, client));
        if let Some(serving) = handshake.await {
            serving.await;
        }
    }

    /// Take a client from its TCP stream to an upgraded WebSocket: TLS if
    /// the trigger has it, then the request. Returns what serves the
    /// connection from then on, if it was upgraded.
    async fn handshake(&self, stream: TcpStream, client: Client) -> Option<Serving<'_>> {
        let _ = stream.set_nodelay(true);
        progress::give_up_after(&stream, self.app.limits.slow_client_timeout);
        // Under TLS, so the writer sees bytes reach the socket.
        let stream = Watched::new(stream, Arc::clone(&client.progress));
        match &self.tls {
            None => self.serve_http(stream, client).await,
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout_at(client.deadline, Box::pin(acceptor.accept(stream)));
                let handshake = tokio::select! {
                    handshake = handshake => handshake,
                    () = client.shutdown.cancelled() => return None,
                };
                match handshake {
                    Ok(Ok(tls)) => self.serve_http(tls, client).await,
                    Ok(Err(error)) => {
                        tracing::debug!("TLS handshake failed: {error}");
                        None
                    }
                    Err(_elapsed) => {
                        tracing::debug!("TLS handshake timed out");
                        None
                    }
                }
            }
        }
    }

    /// Serve one client's HTTP request: an upgrade request is admitted
    /// (or refused) and upgraded; a plain request is answered from the
    /// trigger's `static_dir`, or with 426. Returns what serves the
    /// connection, if it was upgraded.
    ///
    /// Only the request head holds the client's handshake slot: an answer
    /// is written on the socket's place alone, within its own deadline
    /// ([`http1::Response::send`]).
    async fn serve_http<S>(&self, mut stream: S, client: Client) -> Option<Serving<'_>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let read = tokio::select! {
            read = http1::read_head(&mut stream, client.deadline) => read,
            () = client.shutdown.cancelled() => return None,
        };
        let (head, read) = read?;
        let response = match head {
            Head::Upgrade(request) => match self.admit(&request, &client).await {
                Admission::Admitted(admitted) => {
                    let stream = Replay::new(read, stream);
                    return self.upgrade(stream, client, *admitted).await;
                }
                Admission::Refused(refusal) => {
                    http1::Response::text(refusal.status.as_u16(), refusal.body)
                }
                Admission::Abandoned => return None,
            },
            Head::Plain(request) => match &self.static_files {
                Some(files) => files.respond(&request).await,
                None => http1::Response::text(
                    426,
                    "this address serves WebSocket connections only; send an upgrade request\n"
                        .to_owned(),
                ),
            },
            Head::Bad(status) => http1::Response::status(status),
        };
        let Client { slot, shutdown, .. } = client;
        let _socket = slot.upgraded();
        response
            .send(&mut stream, self.limits.handshake_timeout, &shutdown)
            .await;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_handshake_timeout_does_not_overflow_the_deadline() {
        let before = Instant::now();
        let far = handshake_deadline(Duration::MAX);
        assert!(far >= before + MAX_DURATION);
        let near = handshake_deadline(Duration::from_secs(10));
        assert!(near <= Instant::now() + Duration::from_secs(10));
    }
}
