//! Whether an upgrade request becomes a connection. Every request goes the
//! same way, in this order, and each step can refuse it with an HTTP status
//! before anything of the next runs:
//!
//! 1. [`check_upgrade`]: a complete WebSocket request (`GET`, HTTP/1.1,
//!    `Connection: Upgrade`, `Upgrade: websocket`, version 13, a valid
//!    key), so nothing below runs for a request no connection can come of;
//! 2. routing, parameters and `allowed_origins`;
//! 3. the trigger's and the app's connection caps and reused-instance slots
//!    (counted as open from here, [`OpenGuard`]);
//! 4. the handler's `on_connect` hook, if it has one, within the handshake
//!    deadline; with `unique_attachment`, the attachment it chose is
//!    claimed in the groups it chose (409 if another connection holds it).
//!
//! The result is an [`Admission`]: admitted (with its id, its place among
//! the open connections and how `on_connect` started it), refused with a
//! status the client is told, or abandoned (nobody left to answer).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use http::StatusCode;
use tokio_tungstenite::tungstenite::handshake::server::Request;

use super::WsTrigger;
use super::handshake::{self, Refusal, Routed};
use super::hooks::{self, Opening};
use super::listener::Client;
use crate::app::{AppInfo, AppStats, Claim};
use crate::manifest::spec::Mode;

/// How an upgrade request was decided.
pub(super) enum Admission {
    /// Upgrade it and serve it.
    Admitted(Box<Admitted>),
    /// Refused: answered with this status and body.
    Refused(Refusal),
    /// Nobody to answer: the host is shutting down, or `on_connect` did not
    /// decide before the handshake deadline.
    Abandoned,
}

/// A client admitted to upgrade: routed, counted as open, given its id,
/// and started the way its `on_connect` chose (if its handler has one).
pub(super) struct Admitted {
    pub(super) routed: Routed,
    pub(super) open: OpenGuard,
    pub(super) id: u64,
    pub(super) opening: Opening,
}

/// Counts an open connection, for its trigger and its app, until dropped;
/// holds the app's reused-instance slot when its handler keeps an instance
/// for the connection's life (`HandlerSpec::keeps_an_instance`).
pub(super) struct OpenGuard {
    trigger: Arc<AtomicUsize>,
    app: Arc<AppInfo>,
    _reused_instance: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Its attachment in its first groups, with `unique_attachment`.
    _claim: Option<Claim>,
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

/// The WebSocket version this server speaks (RFC 6455).
const VERSION: &str = "13";

/// Refuse a request that cannot become a WebSocket connection, with what
/// is wrong in it: the checks tungstenite's handshake makes, made first so
/// that no hook runs, no id is used and nothing is counted for it.
pub(super) fn check_upgrade(request: &Request) -> Result<(), Refusal> {
    let header = |name: http::header::HeaderName| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    let bad = |body: &str| {
        Err(Refusal {
            status: StatusCode::BAD_REQUEST,
            body: body.to_owned(),
        })
    };
    if request.method() != http::Method::GET {
        return Err(Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            body: format!(
                "a WebSocket upgrade is a GET request, not {}",
                request.method()
            ),
        });
    }
    if request.version() < http::Version::HTTP_11 {
        return bad("a WebSocket upgrade needs HTTP/1.1");
    }
    let connection_upgrade = header(http::header::CONNECTION).is_some_and(|value| {
        value
            .split([' ', ','])
            .any(|token| token.eq_ignore_ascii_case("upgrade"))
    });
    if !connection_upgrade {
        return bad("a WebSocket upgrade needs the header `Connection: Upgrade`");
    }
    if !header(http::header::UPGRADE).is_some_and(|value| value.eq_ignore_ascii_case("websocket")) {
        return bad("a WebSocket upgrade needs the header `Upgrade: websocket`");
    }
    if header(http::header::SEC_WEBSOCKET_VERSION) != Some(VERSION) {
        return Err(Refusal {
            status: StatusCode::UPGRADE_REQUIRED,
            body: format!(
                "this server speaks WebSocket version {VERSION} only (Sec-WebSocket-Version: {VERSION})"
            ),
        });
    }
    let key_is_valid = header(http::header::SEC_WEBSOCKET_KEY).is_some_and(|key| {
        base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|nonce| nonce.len() == 16)
    });
    if !key_is_valid {
        return bad("a WebSocket upgrade needs `Sec-WebSocket-Key`: 16 bytes in base64");
    }
    Ok(())
}

impl WsTrigger {
    /// Decide an upgrade request, every step in order (see the module's
    /// documentation), the last within `client`'s handshake deadline.
    pub(super) async fn admit(&self, request: &Request, client: &Client) -> Admission {
        let (routed, open) = match check_upgrade(request).and_then(|()| self.place(request)) {
            Ok(placed) => placed,
            Err(refusal) => {
                tracing::debug!(
                    path = request.uri().path(),
                    status = %refusal.status,
                    "upgrade refused: {}",
                    refusal.body
                );
                return Admission::Refused(refusal);
            }
        };
        let id = self.app.next_connection_id();
        tracing::Span::current().record("conn", id);
        let Some(hook) = routed
            .handler
            .on_connect
            .as_ref()
            .map(|slot| slot.current())
        else {
            return Admission::Admitted(Box::new(Admitted {
                routed,
                open,
                id,
                opening: Opening::default(),
            }));
        };
        let decide = hooks::on_connect(&hook, id, client.peer, request, &routed);
        let decided = tokio::select! {
            decided = tokio::time::timeout_at(client.deadline, decide) => decided,
            () = client.shutdown.cancelled() => return Admission::Abandoned,
        };
        match decided {
            Ok(Ok(opening)) => {
                let mut open = open;
                if routed.handler.spec.unique_attachment && !opening.attachment.is_empty() {
                    // Its groups, those joined from a position too.
                    let groups: Vec<_> = (opening.groups.iter().cloned())
                        .chain(opening.start.from.iter().map(|(group, _)| group.clone()))
                        .collect();
                    match self.app.claims.claim(&opening.attachment, &groups) {
                        Ok(claim) => open._claim = Some(claim),
                        Err(group) => {
                            return Admission::Refused(Refusal {
                                status: StatusCode::CONFLICT,
                                body: format!(
                                    "another connection in `{}` has the same attachment; choose another",
                                    group.as_str()
                                ),
                            });
                        }
                    }
                }
                Admission::Admitted(Box::new(Admitted {
                    routed,
                    open,
                    id,
                    opening,
                }))
            }
            Ok(Err(refusal)) => Admission::Refused(refusal),
            Err(_elapsed) => {
                tracing::warn!("on_connect did not decide within the handshake timeout");
                Admission::Abandoned
            }
        }
    }

    /// Route the request, check its origin, and give it a place among the
    /// open connections if the caps allow.
    fn place(&self, request: &Request) -> Result<(Routed, OpenGuard), Refusal> {
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
            _claim: None,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(edit: impl FnOnce(http::request::Builder) -> http::request::Builder) -> Request {
        let builder = http::Request::builder()
            .method("GET")
            .uri("/chat")
            .header("Host", "x")
            .header("Connection", "keep-alive, Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
        edit(builder).body(()).unwrap()
    }

    #[test]
    fn a_complete_upgrade_request_passes() {
        assert_eq!(check_upgrade(&request(|b| b)), Ok(()));
    }

    /// A change to a complete upgrade request.
    type Edit = fn(http::request::Builder) -> http::request::Builder;

    #[test]
    fn requests_no_connection_can_come_of_are_refused_with_what_is_wrong() {
        let cases: [(Edit, u16, &str); 6] = [
            (|b| b.method("POST"), 405, "GET"),
            (|b| b.version(http::Version::HTTP_10), 400, "HTTP/1.1"),
            (
                |b| b.header("Sec-WebSocket-Version", "12"),
                426,
                "version 13",
            ),
            (
                |b| b.header("Sec-WebSocket-Key", "short"),
                400,
                "Sec-WebSocket-Key",
            ),
            (|b| b.header("Upgrade", "h2c"), 400, "Upgrade: websocket"),
            (
                |b| b.header("Connection", "close"),
                400,
                "Connection: Upgrade",
            ),
        ];
        for (edit, status, named) in cases {
            // A second header of the same name does not replace the first:
            // start from a request without it where the case sets one.
            let request = request(|b| {
                let mut fresh = http::Request::builder().method("GET").uri("/chat");
                let probe = edit(http::Request::builder()).body(()).unwrap();
                for (name, value) in b.headers_ref().unwrap() {
                    if !probe.headers().contains_key(name) {
                        fresh = fresh.header(name, value);
                    }
                }
                edit(fresh)
            });
            let refusal = check_upgrade(&request).unwrap_err();
            assert_eq!(refusal.status.as_u16(), status, "{}", refusal.body);
            assert!(refusal.body.contains(named), "{}", refusal.body);
        }
    }
}
