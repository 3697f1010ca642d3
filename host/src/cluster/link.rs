//! The host's one connection to NATS, shared by all its apps, and its
//! outbox ([`super::outbox`]): whatever a flow sends to other hosts is put
//! in its app's lane without waiting and a single task hands the lanes'
//! messages to the client, each lane in order, so a publisher's messages
//! leave in the order it published them. An app over its share of the
//! outbox, a full outbox, or a link that is down, is an immediate
//! `unavailable`.
//!
//! The client's own queues are bounded too: its command queue
//! ([`CLIENT_CAPACITY`]) and each subscription's ([`SUBSCRIPTION_CAPACITY`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, Event, HeaderMap, Subject, Subscriber};
use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Bytes;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::outbox::{Lane, Next, Outbox, Refused};
use super::wire::{self, Op, Subjects};
use crate::hub::HostId;

/// Commands (publishes, subscriptions) the NATS client queues between the
/// outbox and its socket: beyond the outbox, the client holds at most this
/// many messages of at most the broker's `max_payload` each (32 MiB at the
/// default 1 MiB), where its default (2,048) would hold 2 GiB. Enough to
/// keep the socket busy: the client writes whatever it has queued at once.
pub(super) const CLIENT_CAPACITY: usize = 32;

/// Messages the NATS client holds for one subscription until the task
/// reading it takes them (its default is 65,536); more are dropped by the
/// client (and logged: "came faster than this host took them"). A host
/// subscribes a few subjects per app, so per app this bounds what waits
/// in the client to a few times this many messages of at most the app's
/// `max_message_size` (as the other hosts check it) each.
pub(super) const SUBSCRIPTION_CAPACITY: usize = 256;

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

/// Why the link could not take a message now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unreachable {
    /// The connection to NATS is down (or the host left).
    Down,
    /// The app's lane holds its share of the outbox.
    OverShare,
    /// The outbox is full.
    Full,
}

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
    outbox: Arc<Outbox>,
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
        let outbox = Arc::new(Outbox::default());
        runtime.spawn(forward(client.clone(), Arc::clone(&outbox), stop.clone()));
        runtime.spawn(hold_claim(client.clone(), claim, stop.clone()));
        Arc::new(Self {
            host,
            client,
            servers: events.servers.clone(),
            outbox,
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

    /// Put `message` in `lane` of the outbox, without waiting.
    pub(super) fn send(&self, lane: &Lane, message: Outgoing) -> Result<(), Unreachable> {
        if !self.is_connected() {
            return Err(Unreachable::Down);
        }
        self.outbox
            .push(lane, message)
            .map_err(|refused| match refused {
                Refused::OverShare => Unreachable::OverShare,
                Refused::Full => Unreachable::Full,
            })
    }

    /// Bytes waiting in `app`'s lane of the outbox.
    pub(super) fn queued(&self, app: &str) -> usize {
        self.outbox.queued(app)
    }

    /// Count an operation answered `unavailable`, for the line logged when
    /// the link is back.
    pub(super) fn note_unavailable(&self) {
        self.failed_while_down.fetch_add(1, Ordering::Relaxed);
    }

    /// Serve `app`: it gets a lane of the outbox, and a `bye` on leaving.
    pub(super) fn register(&self, app: &Arc<str>, subjects: &Subjects) {
        self.outbox.open(app);
        self.apps
            .lock()
            .expect("not poisoned")
            .insert(app.to_string(), subjects.clone());
    }

    pub(super) fn unregister(&self, app: &str) {
        self.outbox.close(app);
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
            let _ = self.send(
                &Lane::Control,
                Outgoing {
                    subject: subjects.hosts(),
                    reply: None,
                    headers,
                    payload: Bytes::new(),
                },
            );
        }
        self.left.store(true, Ordering::Relaxed);
        let drained = async {
            let _ = self.outbox.mark().await;
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

/// Hand the outbox's messages to the client, until `stop`.
async fn forward(client: Client, outbox: Arc<Outbox>, stop: CancellationToken) {
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => break,
            next = outbox.next() => next,
        };
        let message = match next {
            Next::Message(message) => message,
            Next::Mark(mark) => {
                let _ = mark.send(());
                continue;
            }
        };
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
