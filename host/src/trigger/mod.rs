//! The WebSocket trigger: listeners, the upgrade handshake, and the two
//! ways a handler drives its flow (data and connection mode).

mod data;
mod handshake;
mod pump;
mod session;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::loader::AppInfo;
use crate::manifest::{Format, Mode, PathPattern};
use crate::runtime::bindings::{Content, Event};
use crate::runtime::{FlowPre, Outcome, bindings};

use pump::Pump;

/// Largest message (and frame) a client may send, unless configured.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;

/// A client that has not finished the upgrade by then is dropped, so idle
/// sockets cannot pile up before the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A path served by a flow.
pub struct Handler {
    pub path: PathPattern,
    pub mode: Mode,
    pub format: Format,
    pub flow: FlowPre,
}

/// One listener and the handlers it routes to.
pub struct TriggerConfig {
    pub addr: SocketAddr,
    pub handlers: Vec<Arc<Handler>>,
}

/// A close frame the host sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: Cow<'static, str>,
}

impl Close {
    pub const NORMAL: Close = Close::fixed(1000, "");
    pub const GOING_AWAY: Close = Close::fixed(1001, "server shutting down");
    pub const INTERNAL_ERROR: Close = Close::fixed(1011, "internal error");
    pub const FLOW_FAILED: Close = Close::fixed(1011, "flow failed");

    const fn fixed(code: u16, reason: &'static str) -> Self {
        Self {
            code,
            reason: Cow::Borrowed(reason),
        }
    }

    /// 1007: the message content was not what the handler accepts.
    pub fn invalid_data(reason: String) -> Self {
        Self {
            code: 1007,
            reason: Cow::Owned(truncate_reason(reason)),
        }
    }
}

/// Close reasons must fit a control frame: at most 123 bytes of UTF-8.
fn truncate_reason(mut reason: String) -> String {
    const MAX: usize = crate::runtime::connection::MAX_CLOSE_REASON;
    if reason.len() > MAX {
        let mut end = MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// Log how an execution ended; a trap means the connection must close.
/// Details of a failure go to the log only, never to the client.
fn report(handler: &Handler, connection: u64, outcome: Outcome) -> Option<Close> {
    let app = &*handler.flow.app().name;
    let flow = handler.flow.name();
    match outcome {
        Outcome::Completed => None,
        Outcome::Failed(message) => {
            tracing::warn!(
                app,
                flow,
                conn = connection,
                "flow returned an error: {message}"
            );
            match handler.mode {
                Mode::Data => None,
                Mode::Connection => Some(Close::FLOW_FAILED),
            }
        }
        Outcome::Trapped(trap) => {
            tracing::error!(app, flow, conn = connection, "flow trapped: {trap:?}");
            Some(Close::INTERNAL_ERROR)
        }
    }
}

/// A running WebSocket listener for one `[[triggers]]` entry.
pub struct WsTrigger {
    app: Arc<AppInfo>,
    handlers: Vec<Arc<Handler>>,
    ws_config: WebSocketConfig,
    max_message_size: usize,
}

/// Connection ids are unique across the whole host.
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

impl WsTrigger {
    pub fn new(app: Arc<AppInfo>, config: &TriggerConfig) -> Self {
        let max_message_size = DEFAULT_MAX_MESSAGE_SIZE;
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(max_message_size))
            .max_frame_size(Some(max_message_size));
        Self {
            app,
            handlers: config.handlers.clone(),
            ws_config,
            max_message_size,
        }
    }

    pub fn handlers(&self) -> &[Arc<Handler>] {
        &self.handlers
    }

    /// Accept connections on an already-bound listener until `shutdown`.
    /// Each connection runs on `tracker`, so the caller can wait for them.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.cancelled() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let trigger = Arc::clone(&self);
                    let shutdown = shutdown.clone();
                    tracker.spawn(async move { trigger.connection(stream, peer, shutdown).await });
                }
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(app = &*self.app.name, "accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn connection(&self, stream: TcpStream, peer: SocketAddr, shutdown: CancellationToken) {
        let _ = stream.set_nodelay(true);
        self.serve_stream(stream, peer, shutdown).await;
    }

    /// Upgrade and serve one client over any byte stream (TCP or TLS).
    #[expect(
        clippy::result_large_err,
        reason = "tungstenite's handshake callback returns its ErrorResponse by value"
    )]
    async fn serve_stream<S>(&self, stream: S, peer: SocketAddr, shutdown: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut routed = None;
        let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
            let accepted = handshake::route(&self.handlers, request).map_err(|refusal| {
                tracing::debug!(%peer, path = request.uri().path(), status = %refusal.status, "upgrade refused");
                refusal.into_response()
            })?;
            routed = Some(accepted);
            Ok(response)
        };
        let upgrade =
            tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(self.ws_config));
        let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(error)) => {
                tracing::debug!(%peer, "handshake refused or failed: {error}");
                return;
            }
            Err(_elapsed) => {
                tracing::debug!(%peer, "handshake timed out");
                return;
            }
        };
        let Some(routed) = routed else { return };
        let handler = routed.handler;
        let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(app = &*self.app.name, conn = id, %peer, path = %handler.path, "connected");

        let (pump, inbound) = Pump::start(ws, id, peer, self.max_message_size);
        let event = Event {
            mode: match handler.mode {
                Mode::Data => bindings::Mode::Data,
                Mode::Connection => bindings::Mode::Connection,
            },
            content: Content::None,
            path_params: routed.path_params,
            query_params: routed.query_params,
            headers: routed.headers,
            inputs: Vec::new(),
        };
        let close = match handler.mode {
            Mode::Data => data::run(&handler, &pump.shared, inbound, event, &shutdown).await,
            Mode::Connection => {
                session::run(&handler, &pump.shared, inbound, event, &shutdown).await
            }
        };
        pump.finish(close.as_ref().map(|close| (close.code, &*close.reason)))
            .await;
        tracing::debug!(app = &*self.app.name, conn = id, "disconnected");
    }
}
