//! The WebSocket trigger: listeners (plain or TLS), the upgrade handshake,
//! and the two ways a handler drives its flow (data and connection mode).

mod data;
mod files;
mod handshake;
mod hooks;
mod http1;
mod inputs;
mod params;
mod progress;
mod pump;
mod session;
mod tls;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use tracing::Instrument as _;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{AppInfo, AppStats};
use crate::close::Close;
use crate::hub::{self, HubError, Membership};
use crate::manifest::spec::{HandlerSpec, MAX_DURATION, Mode, TriggerLimits, TriggerSpec};
use crate::runtime::bindings::{Content, Event};
use crate::runtime::{ConnectionShared, FlowPre, Outcome, Role, bindings, guest_line};
use crate::sockets::{AcceptBackoff, HandshakeSlot, HostSockets};

use handshake::{Refusal, Routed};
use hooks::{Ended, Opening};
use http1::{Head, Replay};
use progress::{Watched, WriteProgress};

/// A path served by a flow.
pub(crate) struct Handler {
    spec: HandlerSpec,
    app: Arc<AppInfo>,
    flow: Arc<FlowSlot>,
    /// The flow whose `on-connect` admits clients.
    on_connect: Option<Arc<FlowSlot>>,
    /// The flow whose `on-close` runs after each connection.
    on_close: Option<Arc<FlowSlot>>,
}

impl Handler {
    /// The current version of the handler's flow: a reload swaps it for
    /// every handler that names it, so the next execution runs the new one.
    fn flow(&self) -> Arc<FlowPre> {
        self.flow.current()
    }
}

/// The current version of one flow of an app, shared by every handler
/// (of every trigger version) that names it.
pub(crate) struct FlowSlot(RwLock<Arc<FlowPre>>);

impl FlowSlot {
    fn current(&self) -> Arc<FlowPre> {
        Arc::clone(&self.0.read().expect("not poisoned"))
    }
}

/// An app's flows by name, each in the slot its handlers read.
#[derive(Default)]
pub(crate) struct AppFlows {
    slots: Mutex<BTreeMap<String, Arc<FlowSlot>>>,
}

impl AppFlows {
    /// The slot of flow `name`, made with `flow` in it if there is none yet.
    fn slot(&self, name: &str, flow: &FlowPre) -> Arc<FlowSlot> {
        let mut slots = self.slots.lock().expect("not poisoned");
        Arc::clone(
            slots
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(FlowSlot(RwLock::new(Arc::new(flow.clone()))))),
        )
    }

    /// Put these versions of the flows in their slots: executions that
    /// start from now on run them.
    pub(crate) fn install(&self, flows: &BTreeMap<String, FlowPre>) {
        for (name, flow) in flows {
            let slot = self.slot(name, flow);
            *slot.0.write().expect("not poisoned") = Arc::new(flow.clone());
        }
    }

    /// The version of flow `name` in use, if the app has one.
    pub(crate) fn current(&self, name: &str) -> Option<Arc<FlowPre>> {
        let slots = self.slots.lock().expect("not poisoned");
        slots.get(name).map(|slot| slot.current())
    }
}

/// Log how an execution ended and decide whether the connection must close.
/// Details of a failure go to the log only, never to the client; what the
/// guest wrote there (its error, the names in a backtrace) goes through
/// [`guest_line`], within the app's log budget.
fn report(handler: &Handler, connection: &ConnectionShared, outcome: Outcome) -> Option<Close> {
    let app = &handler.app;
    match outcome {
        Outcome::Completed => None,
        // A flow that fails because its client has gone is no news.
        Outcome::Failed(message) if connection.is_closed() => {
            if let Some(message) = guest_line(app, &message) {
                tracing::debug!("flow returned an error after the close: {message}");
            }
            None
        }
        Outcome::Failed(message) => {
            if let Some(message) = guest_line(app, &message) {
                tracing::warn!("flow returned an error: {message}");
            }
            match handler.spec.mode {
                Mode::Data => None,
                Mode::Connection => Some(Close::FLOW_FAILED),
            }
        }
        Outcome::Trapped(trap) => {
            // The cause on one line; the wasm backtrace, which names the
            // guest's functions, at debug level.
            let cause = trap.root_cause().to_string().replace('\n', " ");
            tracing::error!("flow trapped: {cause}");
            if let Some(details) = guest_line(app, &format!("{trap:?}")) {
                tracing::debug!("trap details: {details}");
            }
            Some(Close::INTERNAL_ERROR)
        }
        Outcome::LimitExceeded(exceeded) => {
            tracing::error!("execution stopped: {exceeded}");
            Some(if exceeded.is_client_fault() {
                Close::SLOW_CLIENT
            } else {
                Close::INTERNAL_ERROR
            })
        }
    }
}

/// A running WebSocket listener for one `[[triggers]]` entry.
pub(crate) struct WsTrigger {
    app: Arc<AppInfo>,
    handlers: Vec<Arc<Handler>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: TriggerLimits,
    allowed_origins: Option<Vec<String>>,
    /// Files for plain HTTP requests (`static_dir`).
    static_files: Option<files::StaticFiles>,
    /// Whether the trigger reads request heads itself (for `static_dir` or
    /// an `on_connect` hook) instead of leaving them to the handshake.
    reads_requests: bool,
    ws_config: WebSocketConfig,
    /// Upgraded connections currently open.
    open: Arc<AtomicUsize>,
}

/// Buffers sized for messages, not bulk transfer: tungstenite's defaults
/// (128 KiB each way) would cost every idle connection a quarter MiB.
const READ_BUFFER: usize = 4 * 1024;
const WRITE_BUFFER: usize = 4 * 1024;

/// Room in the write buffer beyond one message: its frame header and a
/// control frame (pong, close) queued beside it.
const WRITE_BUFFER_SLACK: usize = 1024;

/// When a handshake that starts now must be done. The manifest caps
/// durations at `MAX_DURATION`; a longer timeout, set some other way, is
/// cut to that instead of overflowing the clock.
fn handshake_deadline(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + MAX_DURATION)
}

/// How often at most an accept loop logs that it is paused.
const PAUSE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A client socket on its way through TLS, the HTTP request and the
/// upgrade.
struct Client {
    peer: SocketAddr,
    /// When TLS and the upgrade must be done.
    deadline: Instant,
    /// Its handshake slot, then its place among the host's open sockets.
    slot: HandshakeSlot,
    /// Fed by the socket, read by the connection's writer.
    progress: Arc<WriteProgress>,
    shutdown: CancellationToken,
}

/// Counts an open connection, for its trigger and its app, until dropped;
/// holds the app's reused-instance slot when its handler keeps an instance
/// for the connection's life (`HandlerSpec::keeps_an_instance`).
struct OpenGuard {
    trigger: Arc<AtomicUsize>,
    app: Arc<AppInfo>,
    _reused_instance: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.trigger.fetch_sub(1, Ordering::AcqRel);
        self.app
            .stats
            .connections_open
            .fetch_sub(1, Ordering::AcqRel);
    }
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
    /// The trigger `spec` describes, for `app`, whose flows are `flows`;
    /// its handlers read them from the slots in `slots`. A new version of a
    /// running trigger shares its count of open connections (`open`).
    /// Sets up TLS; fails if the certificate or key cannot be used, or a
    /// handler names a flow for something its component does not export.
    /// Errors name the trigger as `key` (e.g. `triggers[0]`).
    pub(crate) fn new(
        app: Arc<AppInfo>,
        key: &str,
        spec: &TriggerSpec,
        flows: &BTreeMap<String, FlowPre>,
        slots: &AppFlows,
        open: Option<Arc<AtomicUsize>>,
    ) -> anyhow::Result<Self> {
        let tls = match &spec.tls {
            Some(tls) => Some(tokio_rustls::TlsAcceptor::from(
                tls::server_config(tls).with_context(|| format!("{key}.tls"))?,
            )),
            None => None,
        };
        let handlers: Vec<Arc<Handler>> = spec
            .handlers
            .iter()
            .enumerate()
            .map(|(h, handler)| {
                let pick = |name: &str, role: Role| {
                    let flow = flows
                        .get(name)
                        .expect("validation checked that every handler names flows of its app");
                    flow.role(role).with_context(|| {
                        format!("{key}.handlers[{h}] (path `{}`)", handler.path)
                    })?;
                    anyhow::Ok(slots.slot(name, flow))
                };
                Ok(Arc::new(Handler {
                    spec: handler.clone(),
                    app: Arc::clone(&app),
                    flow: pick(&handler.flow, Role::Handle)?,
                    on_connect: handler
                        .on_connect
                        .as_deref()
                        .map(|name| pick(name, Role::Hooks))
                        .transpose()?,
                    on_close: handler
                        .on_close
                        .as_deref()
                        .map(|name| pick(name, Role::Hooks))
                        .transpose()?,
                }))
            })
            .collect::<anyhow::Result<_>>()?;
        let reads_requests = spec.static_dir.is_some()
            || handlers.iter().any(|handler| handler.on_connect.is_some());
        let limits = spec.limits.clone();
        // tungstenite's write buffer is unbounded by default. The writer
        // flushes it before it queues the next message, so it holds at most
        // the buffer, one message (flows send at most max_message_size) and
        // a control frame; bounded there, a stream that keeps failing cannot
        // make it grow.
        let max_write_buffer = WRITE_BUFFER
            .saturating_add(limits.max_message_size)
            .saturating_add(WRITE_BUFFER_SLACK);
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(WRITE_BUFFER)
            .max_write_buffer_size(max_write_buffer)
            .max_message_size(Some(limits.max_message_size))
            .max_frame_size(Some(limits.max_message_size));
        Ok(Self {
            app,
            handlers,
            tls,
            limits,
            allowed_origins: spec.allowed_origins.clone(),
            static_files: spec.static_dir.clone().map(files::StaticFiles::new),
            reads_requests,
            ws_config,
            open: open.unwrap_or_default(),
        })
    }

    /// The request paths the trigger serves.
    pub(crate) fn paths(&self) -> impl Iterator<Item = String> + '_ {
        self.handlers
            .iter()
            .map(|handler| handler.spec.path.to_string())
    }

    /// The count of its open connections, for a new version to share.
    pub(crate) fn open_connections(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.open)
    }

    /// `ws` or `wss`.
    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "wss" } else { "ws" }
    }

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

    /// Serve one client. A trigger that reads request heads itself answers
    /// plain requests (with its `static_dir`, or 426), and admits upgrade
    /// requests before the handshake, asking the handler's `on_connect`
    /// when it has one; otherwise the handshake admits them. Returns what
    /// serves the connection, if it was upgraded.
    async fn serve_http<S>(&self, mut stream: S, client: Client) -> Option<Serving<'_>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if !self.reads_requests {
            return self.serve_stream(stream, client, None).await;
        }
        let read = tokio::select! {
            read = http1::read_head(&mut stream, client.deadline) => read,
            () = client.shutdown.cancelled() => return None,
        };
        let (head, read) = read?;
        let response = match head {
            Head::Upgrade(request) => match self.admit_early(&request, &client).await {
                Ok(admitted) => {
                    let stream = Replay::new(read, stream);
                    return self.serve_stream(stream, client, Some(admitted)).await;
                }
                Err(Some(refusal)) => http1::Response::text(refusal.status.as_u16(), refusal.body),
                Err(None) => return None,
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
        response.send(&mut stream).await;
        None
    }

    /// Admit an upgrade request read before the handshake, and ask its
    /// handler's `on_connect`, within the handshake's deadline. `Err(None)`:
    /// nobody to answer (shutdown, or the deadline passed).
    async fn admit_early(
        &self,
        request: &Request,
        client: &Client,
    ) -> Result<Admitted, Option<Refusal>> {
        let (routed, open) = self.admit(request).map_err(|refusal| {
            refusal.log(request);
            Some(refusal)
        })?;
        let id = self.app.next_connection_id();
        tracing::Span::current().record("conn", id);
        let Some(hook) = routed
            .handler
            .on_connect
            .as_ref()
            .map(|slot| slot.current())
        else {
            return Ok(Admitted {
                routed,
                open,
                id,
                opening: Opening::default(),
            });
        };
        let decide = hooks::on_connect(&hook, id, client.peer, request, &routed);
        let decided = tokio::select! {
            decided = tokio::time::timeout_at(client.deadline, decide) => decided,
            () = client.shutdown.cancelled() => return Err(None),
        };
        match decided {
            Ok(Ok(opening)) => Ok(Admitted {
                routed,
                open,
                id,
                opening,
            }),
            Ok(Err(refusal)) => Err(Some(refusal)),
            Err(_elapsed) => {
                tracing::warn!("on_connect did not decide within the handshake timeout");
                Err(None)
            }
        }
    }

    /// Decide whether to upgrade: route, origin, parameters, capacity.
    fn admit(&self, request: &Request) -> Result<(Routed, OpenGuard), Refusal> {
        let routed = handshake::route(&self.handlers, request)?;
        if let Some(allowed) = &self.allowed_origins {
            let origin = request
                .headers()
                .get(http::header::ORIGIN)
                .map(|origin| String::from_utf8_lossy(origin.as_bytes()).into_owned());
            let permitted = origin
                .as_deref()
                .is_some_and(|origin| allowed.iter().any(|allowed| allowed == origin));
            if !permitted {
                let body = match origin {
                    Some(origin) => format!("origin `{origin}` is not allowed"),
                    None => "an Origin header is required".to_owned(),
                };
                return Err(Refusal {
                    status: StatusCode::FORBIDDEN,
                    body,
                });
            }
        }
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        let app_open = self
            .app
            .stats
            .connections_open
            .fetch_add(1, Ordering::AcqRel);
        let mut guard = OpenGuard {
            trigger: Arc::clone(&self.open),
            app: Arc::clone(&self.app),
            _reused_instance: None,
        };
        let trigger_full = self.limits.max_connections.filter(|max| open >= *max);
        let app_max = self.app.limits.max_connections;
        let full = match trigger_full {
            Some(max) => Some(format!("the server is at its limit of {max} connections")),
            None if app_open >= app_max as u64 => {
                Some(format!("the app is at its limit of {app_max} connections"))
            }
            None if routed.handler.spec.keeps_an_instance() => {
                match Arc::clone(&self.app.reused_instances).try_acquire_owned() {
                    Ok(permit) => {
                        guard._reused_instance = Some(permit);
                        None
                    }
                    Err(_) => Some(format!(
                        "the app is at its limit of {} connections {}",
                        self.app.limits.max_reused_instances,
                        match routed.handler.spec.mode {
                            Mode::Connection => "in connection mode",
                            Mode::Data => "with a reused instance",
                        }
                    )),
                }
            }
            None => None,
        };
        if let Some(full) = full {
            AppStats::add(&self.app.stats.connections_refused, 1);
            return Err(Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: format!("{full}; try again later"),
            });
        }
        AppStats::add(&self.app.stats.connections_total, 1);
        Ok((routed, guard))
    }

    /// Upgrade and serve one client over any byte stream (TCP or TLS):
    /// admitted already (`early`), or admitted by the handshake. Returns
    /// what serves it from then on, if it was upgraded.
    #[expect(
        clippy::result_large_err,
        reason = "tungstenite's handshake callback returns its ErrorResponse by value"
    )]
    async fn serve_stream<S>(
        &self,
        stream: S,
        client: Client,
        early: Option<Admitted>,
    ) -> Option<Serving<'_>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Client {
            peer,
            deadline,
            slot,
            progress,
            shutdown,
        } = client;
        let subprotocol = early
            .as_ref()
            .and_then(|admitted| admitted.opening.subprotocol.clone());
        let admit_here = early.is_none();
        let mut admitted = early;
        let callback =
            |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
                if let Some(protocol) = subprotocol {
                    // Offered by the client, so a valid header value.
                    if let Ok(value) = http::HeaderValue::from_str(&protocol) {
                        response
                            .headers_mut()
                            .insert(http::header::SEC_WEBSOCKET_PROTOCOL, value);
                    }
                }
                if admit_here {
                    let (routed, open) = self.admit(request).map_err(|refusal| {
                        refusal.log(request);
                        refusal.into_response()
                    })?;
                    admitted = Some(Admitted {
                        routed,
                        open,
                        id: self.app.next_connection_id(),
                        opening: Opening::default(),
                    });
                }
                Ok(response)
            };
        // Boxed, like every future that lives only for a while: the
        // connection's task then keeps only what an idle connection needs.
        let upgrade = Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
            stream,
            callback,
            Some(self.ws_config),
        ));
        let upgraded = tokio::select! {
            upgraded = tokio::time::timeout_at(deadline, upgrade) => Some(upgraded),
            () = shutdown.cancelled() => None,
        };
        // The handshake is over, whichever way: its slots are free again.
        let _socket = slot.upgraded();
        let ws = match upgraded {
            Some(Ok(Ok(ws))) => Some(ws),
            Some(Ok(Err(error))) => {
                tracing::debug!("handshake refused or failed: {error}");
                None
            }
            Some(Err(_elapsed)) => {
                tracing::debug!("handshake timed out");
                None
            }
            None => None,
        };
        let Admitted {
            routed,
            open: _open,
            id,
            opening,
        } = admitted?;
        let handler = Arc::clone(&routed.handler);
        let ended = handler.on_close.as_ref().map(|_| Ended {
            id,
            peer,
            path_params: routed.path_params.clone(),
            query_params: routed.query_params.clone(),
        });
        let Some(ws) = ws else {
            // Accepted by `on_connect`, but never upgraded: it still gets
            // its `on_close`.
            let farewell = hub::Farewell {
                groups: Vec::new(),
                attachment: opening.attachment,
            };
            let on_close = Box::pin(Self::on_close(
                &handler,
                ended,
                (1006, String::new()),
                farewell,
            ));
            on_close.await;
            return None;
        };
        let span = tracing::Span::current();
        if admit_here {
            span.record("conn", id);
        }
        span.record("path", tracing::field::display(&handler.spec.path));
        tracing::debug!("connected");
        Some(Box::pin(async move {
            // Open, and counted so, until served.
            let _socket = _socket;
            let _open = _open;
            let farewell = Arc::new(OnceLock::new());
            // Inline: this future is the connection's for its whole life.
            let serve = self.serve_upgraded(
                ws,
                Upgraded {
                    routed,
                    id,
                    opening,
                    farewell: ended.as_ref().map(|_| Arc::clone(&farewell)),
                },
                peer,
                progress,
                shutdown,
            );
            let how = serve.await;
            tracing::debug!("disconnected");
            let farewell = farewell.get().cloned().unwrap_or_default();
            let on_close = Box::pin(Self::on_close(&handler, ended, how, farewell));
            on_close.await;
        }))
    }

    /// Run the handler's `on_close` hook, if it has one, for a connection
    /// that ended `how`.
    async fn on_close(
        handler: &Handler,
        ended: Option<Ended>,
        how: (u16, String),
        farewell: hub::Farewell,
    ) {
        if let (Some(hook), Some(ended)) = (&handler.on_close, ended) {
            hooks::on_close(&hook.current(), ended, how, farewell).await;
        }
    }

    /// Serve an upgraded connection until it ends; returns the close code
    /// and reason it ended with.
    ///
    /// Not an `async fn`: the future returned is the frame pump's itself,
    /// with no level of its own around it in the connection's task.
    fn serve_upgraded<S>(
        &self,
        ws: tokio_tungstenite::WebSocketStream<S>,
        upgraded: Upgraded,
        peer: SocketAddr,
        progress: Arc<WriteProgress>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = (u16, String)> + Send + '_
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Upgraded {
            routed,
            id,
            opening,
            farewell,
        } = upgraded;
        let handler = routed.handler;
        let mut event = Event {
            mode: match handler.spec.mode {
                Mode::Data => bindings::Mode::Data,
                Mode::Connection => bindings::Mode::Connection,
            },
            content: Content::None,
            path_params: routed.path_params,
            query_params: routed.query_params,
            headers: routed.headers,
            inputs: Vec::new(),
        };
        let flow_side = |shared: Arc<ConnectionShared>, inbound| async move {
            // Addressable and able to join groups until the flow side ends,
            // however it ends.
            let attached = Membership::attach(
                &shared.app.hub,
                Box::new(Arc::clone(&shared)),
                handler.spec.slow_member,
            );
            let mut membership = match attached {
                Ok(membership) => membership,
                Err(error) => {
                    tracing::warn!("{error}: closing this one (1013)");
                    return Some(Close::ID_IN_USE);
                }
            };
            if let Some(farewell) = farewell {
                membership.keep_farewell(farewell);
            }
            // Boxed: joining groups is large, and over once the flow starts.
            let open = Box::pin(membership.open_with(opening.attachment, &opening.groups));
            if let Err(error) = open.await {
                tracing::warn!("the groups on_connect chose cannot be joined: {error}");
                return Some(match error {
                    HubError::GroupFull => Close::TRY_AGAIN_LATER,
                    _ => Close::INTERNAL_ERROR,
                });
            }
            match handler.spec.mode {
                Mode::Data => data::run(&handler, &shared, inbound, event, &shutdown).await,
                Mode::Connection => {
                    event.inputs = inputs::evaluate(&handler.spec.inputs, &event, None);
                    Box::pin(session::run(&handler, &shared, inbound, event, &shutdown)).await
                }
            }
        };
        pump::run(
            ws,
            id,
            Arc::clone(&self.app),
            peer,
            &self.limits,
            progress,
            flow_side,
        )
    }
}

/// What serves an upgraded connection until it ends (its handshake done
/// and freed).
type Serving<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A client admitted to upgrade: routed, counted as open, given its id,
/// and started the way its `on_connect` chose (if its handler has one).
struct Admitted {
    routed: Routed,
    open: OpenGuard,
    id: u64,
    opening: Opening,
}

/// What an upgraded connection is served with.
struct Upgraded {
    routed: Routed,
    id: u64,
    opening: Opening,
    /// Where its groups and attachment are kept as it ends, for `on_close`.
    farewell: Option<Arc<OnceLock<hub::Farewell>>>,
}

impl Refusal {
    fn log(&self, request: &Request) {
        tracing::debug!(
            path = request.uri().path(),
            status = %self.status,
            "upgrade refused: {}",
            self.body
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::spec::AppSpec;

    fn limits(max_message_size: usize) -> TriggerLimits {
        TriggerLimits {
            max_connections: None,
            max_pending_handshakes: 256,
            max_message_size,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: None,
            ping_interval: None,
        }
    }

    fn trigger(limits: TriggerLimits) -> WsTrigger {
        let app = AppInfo::new(&AppSpec {
            name: "t".into(),
            manifest: Default::default(),
            properties: Default::default(),
            limits: Default::default(),
            flows: Vec::new(),
            triggers: Vec::new(),
        });
        let spec = TriggerSpec {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls: None,
            limits,
            allowed_origins: None,
            static_dir: None,
            handlers: Vec::new(),
        };
        WsTrigger::new(
            Arc::new(app),
            "triggers[0]",
            &spec,
            &BTreeMap::new(),
            &AppFlows::default(),
            None,
        )
        .unwrap()
    }

    #[test]
    fn the_write_buffer_is_bounded_yet_holds_a_largest_message() {
        for max_message_size in [1024, 1 << 20, 64 << 20] {
            let config = trigger(limits(max_message_size)).ws_config;
            assert!(config.max_write_buffer_size > WRITE_BUFFER + max_message_size + 14);
            assert!(config.max_write_buffer_size <= WRITE_BUFFER + max_message_size + (64 << 10));
        }
    }

    #[test]
    fn a_huge_handshake_timeout_does_not_overflow_the_deadline() {
        let before = Instant::now();
        let far = handshake_deadline(Duration::MAX);
        assert!(far >= before + MAX_DURATION);
        let near = handshake_deadline(Duration::from_secs(10));
        assert!(near <= Instant::now() + Duration::from_secs(10));
    }
}
