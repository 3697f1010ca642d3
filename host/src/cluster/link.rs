//! The host's one connection to NATS, shared by all its apps, and its
//! outbox: whatever a flow sends to other hosts is put in the outbox
//! without waiting and a single task hands it to the client in order, so a
//! publisher's messages leave in the order it published them. A full
//! outbox, or a link that is down, is an immediate `unavailable`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::connection::State;
use async_nats::{Client, Event, HeaderMap, Subject, Subscriber};
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Bytes;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::wire::{self, Op, Subjects};
use crate::hub::HostId;

/// Messages the outbox holds at most: room for bursts while the broker is
/// briefly slower than the flows.
const OUTBOX_MESSAGES: usize = 8192;

/// Payload bytes the outbox holds at most, so a stalled broker cannot
/// grow the host.
const OUTBOX_BYTES: usize = 64 << 20;

/// How long leaving waits for the outbox and the broker to take what is
/// queued.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A message for other hosts.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) subject: Subject,
    pub(super) reply: Option<Subject>,
    pub(super) headers: HeaderMap,
    pub(super) payload: Bytes,
}

/// What the outbox holds: messages, and marks that say when everything
/// before them has been handed to the client.
enum Queued {
    Message(Outgoing),
    Mark(oneshot::Sender<()>),
}

/// The link could not take a message now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unreachable;

/// Whether the link is up, and how many times it came up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct LinkState {
    pub(super) connected: bool,
    pub(super) connects: u64,
}

/// The connection to NATS.
pub(crate) struct Link {
    host: HostId,
    client: Client,
    /// The servers, as the log names them.
    servers: String,
    outbox: mpsc::Sender<Queued>,
    outbox_bytes: Arc<AtomicUsize>,
    state: watch::Receiver<LinkState>,
    /// Operations answered `unavailable` since the link went down.
    failed_while_down: Arc<AtomicU64>,
    /// The apps served through the link, for the `bye` on leaving.
    apps: Mutex<BTreeMap<String, Subjects>>,
    left: AtomicBool,
    runtime: tokio::runtime::Handle,
    /// Stops the link's own tasks when the link is dropped.
    _stop: DropGuard,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("host", &self.host)
            .field("servers", &self.servers)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

/// Turns the client's events into [`LinkState`] changes and log lines.
#[derive(Clone)]
pub(super) struct Events {
    host: HostId,
    servers: String,
    state: Arc<watch::Sender<LinkState>>,
    failed_while_down: Arc<AtomicU64>,
}

impl Events {
    pub(super) fn new(host: HostId, servers: &str) -> (Self, watch::Receiver<LinkState>) {
        let (state, watching) = watch::channel(LinkState::default());
        let events = Self {
            host,
            servers: servers.to_owned(),
            state: Arc::new(state),
            failed_while_down: Arc::default(),
        };
        (events, watching)
    }

    pub(super) async fn on(self, event: Event) {
        let cluster_host = self.host.get();
        match event {
            Event::Connected => {
                let mut connects = 0;
                self.state.send_modify(|state| {
                    state.connected = true;
                    state.connects += 1;
                    connects = state.connects;
                });
                let failed = self.failed_while_down.swap(0, Ordering::Relaxed);
                if connects == 1 {
                    tracing::info!(
                        cluster_host,
                        "cluster: connected to NATS at {}; group operations reach the other hosts",
                        self.servers
                    );
                } else {
                    tracing::info!(
                        cluster_host,
                        "cluster: reconnected to NATS at {}; group operations reach the other \
                         hosts again ({failed} answered `unavailable` meanwhile)",
                        self.servers
                    );
                }
            }
            Event::Disconnected => {
                self.state.send_modify(|state| state.connected = false);
                tracing::warn!(
                    cluster_host,
                    "cluster: lost the connection to NATS at {}; local delivery goes on, \
                     operations that need other hosts answer `unavailable` until it is back; \
                     reconnecting",
                    self.servers
                );
            }
            Event::SlowConsumer(_) => tracing::warn!(
                cluster_host,
                "cluster: messages from other hosts came faster than this host took them; some \
                 were dropped"
            ),
            Event::ServerError(error) => {
                tracing::warn!(cluster_host, "cluster: NATS reported an error: {error}");
            }
            Event::LameDuckMode => tracing::info!(
                cluster_host,
                "cluster: the NATS server is shutting down; the link will move to another server"
            ),
            other => tracing::debug!(cluster_host, "cluster: {other}"),
        }
    }
}

impl Link {
    /// The link over `client`, whose events feed `events`, holding the
    /// claim on `host` (`claim` subscribes to it). Its tasks, the outbox's
    /// and the claim's, run until the link is dropped.
    pub(super) fn new(
        host: HostId,
        client: Client,
        claim: Subscriber,
        events: &Events,
        state: watch::Receiver<LinkState>,
    ) -> Arc<Self> {
        let runtime = tokio::runtime::Handle::current();
        let stop = CancellationToken::new();
        let (outbox, queued) = mpsc::channel(OUTBOX_MESSAGES);
        let outbox_bytes = Arc::new(AtomicUsize::new(0));
        runtime.spawn(forward(client.clone(), queued, Arc::clone(&outbox_bytes)));
        runtime.spawn(hold_claim(client.clone(), claim, stop.clone()));
        Arc::new(Self {
            host,
            client,
            servers: events.servers.clone(),
            outbox,
            outbox_bytes,
            state,
            failed_while_down: Arc::clone(&events.failed_while_down),
            apps: Mutex::default(),
            left: AtomicBool::new(false),
            runtime,
            _stop: stop.drop_guard(),
        })
    }

    pub(super) fn host(&self) -> HostId {
        self.host
    }

    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    pub(super) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    pub(super) fn servers(&self) -> &str {
        &self.servers
    }

    pub(super) fn is_connected(&self) -> bool {
        !self.left.load(Ordering::Relaxed) && self.client.connection_state() == State::Connected
    }

    pub(super) fn watch_state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// The largest message the broker takes, headers and payload.
    pub(super) fn max_payload(&self) -> usize {
        self.client.max_payload()
    }

    /// Put `message` in the outbox, without waiting.
    pub(super) fn send(&self, message: Outgoing) -> Result<(), Unreachable> {
        if !self.is_connected() {
            return Err(Unreachable);
        }
        let len = message.payload.len();
        if self.outbox_bytes.fetch_add(len, Ordering::Relaxed) + len > OUTBOX_BYTES {
            self.outbox_bytes.fetch_sub(len, Ordering::Relaxed);
            return Err(Unreachable);
        }
        self.outbox.try_send(Queued::Message(message)).map_err(|_| {
            self.outbox_bytes.fetch_sub(len, Ordering::Relaxed);
            Unreachable
        })
    }

    /// Wait (at most `timeout`) until the broker has handled everything
    /// sent through the client before: a request to a subject nobody
    /// subscribes to comes back as "no responders" only once the broker
    /// has got that far on this connection. Returns whether it did.
    pub(super) async fn sync(&self, timeout: Duration) -> bool {
        let asked = self.client.request(wire::sync(self.host), Bytes::new());
        matches!(
            tokio::time::timeout(timeout, asked).await,
            Ok(Err(error)) if error.kind() == RequestErrorKind::NoResponders
        )
    }

    /// Count an operation answered `unavailable`, for the line logged when
    /// the link is back.
    pub(super) fn note_unavailable(&self) {
        self.failed_while_down.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn register(&self, app: &str, subjects: &Subjects) {
        self.apps
            .lock()
            .expect("not poisoned")
            .insert(app.to_owned(), subjects.clone());
    }

    pub(super) fn unregister(&self, app: &str) {
        self.apps.lock().expect("not poisoned").remove(app);
    }

    /// Say `bye` for every app, so the other hosts drop this one's members
    /// at once, and wait (bounded) until the broker has it. Nothing more is
    /// sent afterwards.
    pub(super) async fn leave(&self) {
        let apps: Vec<Subjects> = self
            .apps
            .lock()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect();
        for subjects in apps {
            let mut headers = wire::headers(Op::Bye);
            headers.insert(wire::header::HOST, self.host.to_string());
            let _ = self.send(Outgoing {
                subject: subjects.hosts(),
                reply: None,
                headers,
                payload: Bytes::new(),
            });
        }
        self.left.store(true, Ordering::Relaxed);
        let drained = async {
            let (mark, handed_over) = oneshot::channel();
            if self.outbox.send(Queued::Mark(mark)).await.is_ok() {
                let _ = handed_over.await;
            }
            let _ = self.client.flush().await;
        };
        if tokio::time::timeout(LEAVE_TIMEOUT, drained).await.is_err() {
            tracing::debug!(
                cluster_host = self.host.get(),
                "cluster: NATS did not take the goodbye in time"
            );
        }
    }
}

/// Hand the outbox's messages to the client, in order, until the link is
/// dropped.
async fn forward(client: Client, mut queued: mpsc::Receiver<Queued>, bytes: Arc<AtomicUsize>) {
    while let Some(item) = queued.recv().await {
        let message = match item {
            Queued::Message(message) => message,
            Queued::Mark(mark) => {
                let _ = mark.send(());
                continue;
            }
        };
        bytes.fetch_sub(message.payload.len(), Ordering::Relaxed);
        let Outgoing {
            subject,
            reply,
            headers,
            payload,
        } = message;
        let sent = match reply {
            Some(reply) => {
                client
                    .publish_with_reply_and_headers(subject, reply, headers, payload)
                    .await
            }
            None => client.publish_with_headers(subject, headers, payload).await,
        };
        if let Err(error) = sent {
            tracing::debug!("cluster: a message for other hosts was not sent: {error}");
        }
    }
}

/// Answer every request on this host's claim (the id is taken) until
/// `stop`.
async fn hold_claim(client: Client, mut claim: Subscriber, stop: CancellationToken) {
    loop {
        let request = tokio::select! {
            () = stop.cancelled() => break,
            request = claim.next() => match request {
                Some(request) => request,
                None => break,
            },
        };
        if let Some(reply) = request.reply {
            let _ = client.publish(reply, Bytes::new()).await;
        }
    }
}
