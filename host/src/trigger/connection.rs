//! An admitted client's upgrade, and its connection from then on: the
//! frame pump with the flow side its handler's mode runs, then its
//! `on_close` hook.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_util::sync::CancellationToken;

use super::admission::Admitted;
use super::handshake::Routed;
use super::hooks::{self, Ended, Opening};
use super::listener::Client;
use super::progress::WriteProgress;
use super::{Handler, WsTrigger, data, inputs, pump, session};
use crate::close::Close;
use crate::hub::{self, HistoryError, HubError, Membership};
use crate::manifest::spec::Mode;
use crate::runtime::ConnectionShared;
use crate::runtime::bindings::{self, Content, Event};

impl WsTrigger {
    /// Upgrade an admitted client over any byte stream (TCP or TLS, with
    /// the request head it sent replayed). Returns what serves it from then
    /// on, if it was upgraded.
    #[expect(
        clippy::result_large_err,
        reason = "tungstenite's handshake callback returns its ErrorResponse by value"
    )]
    pub(super) async fn upgrade<S>(
        &self,
        stream: S,
        client: Client,
        admitted: Admitted,
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
        let subprotocol = admitted.opening.subprotocol.clone();
        // Everything was checked and decided before: the callback only
        // names the subprotocol `on_connect` chose.
        let callback = |_: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
            if let Some(protocol) = subprotocol {
                // Offered by the client, so a valid header value.
                if let Ok(value) = http::HeaderValue::from_str(&protocol) {
                    response
                        .headers_mut()
                        .insert(http::header::SEC_WEBSOCKET_PROTOCOL, value);
                }
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
        } = admitted;
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
        span.record("path", tracing::field::display(&handler.spec.path));
        tracing::debug!("connected");
        // Split here, in the handshake's future: the futures below would
        // each keep room for a whole `WebSocketStream` for the connection's
        // life; its two halves are two pointers.
        let socket = ws.split();
        let farewell = Arc::new(OnceLock::new());
        // What only starts the pump, boxed until it does: captured by the
        // future below, it would keep its room there for the connection's
        // life after it has been moved on.
        let start = Box::new((
            socket,
            Upgraded {
                routed,
                id,
                opening,
                farewell: ended.as_ref().map(|_| Arc::clone(&farewell)),
            },
            progress,
            shutdown,
        ));
        Some(Box::pin(async move {
            // Open, and counted so, until served.
            let _socket = _socket;
            let _open = _open;
            let (socket, upgraded, progress, shutdown) = *start;
            // Inline: this future is the connection's for its whole life.
            let serve = self.serve_upgraded(socket, upgraded, peer, progress, shutdown);
            let how = serve.await;
            tracing::debug!("disconnected");
            let farewell = farewell.get().cloned().unwrap_or_default();
            let on_close = Box::pin(Self::on_close(&handler, ended, how, farewell));
            on_close.await;
        }))
    }

    /// Run the handler's `on_close` hook, if it has one, for a connection
    /// that ended `how`.
    pub(super) async fn on_close(
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
        socket: pump::Halves<S>,
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
            let open = Box::pin(membership.open_with(hub::Opened {
                attachment: opening.attachment,
                first: opening.start.first,
                groups: opening.groups,
                from: opening.start.from,
            }));
            if let Err(error) = open.await {
                tracing::warn!("the connection cannot start as on_connect chose: {error}");
                return Some(match error {
                    HistoryError::Hub(HubError::GroupFull) | HistoryError::QueueFull => {
                        Close::TRY_AGAIN_LATER
                    }
                    _ => Close::INTERNAL_ERROR,
                });
            }
            match handler.spec.mode {
                Mode::Data => data::run(&handler, &shared, inbound, &mut event, &shutdown).await,
                Mode::Connection => {
                    event.inputs = inputs::evaluate(&handler.spec.inputs, &event, None);
                    Box::pin(session::run(&handler, &shared, inbound, event, &shutdown)).await
                }
            }
        };
        pump::run(
            socket,
            id,
            Arc::clone(&self.app),
            peer,
            &self.limits,
            progress,
            Box::new(flow_side),
        )
    }
}

/// What serves an upgraded connection until it ends (its handshake done
/// and freed).
pub(super) type Serving<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// What an upgraded connection is served with.
struct Upgraded {
    routed: Routed,
    id: u64,
    opening: Opening,
    /// Where its groups and attachment are kept as it ends, for `on_close`.
    farewell: Option<Arc<OnceLock<hub::Farewell>>>,
}
