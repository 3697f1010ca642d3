//! Lifecycle hooks: a handler's `on_connect` flow decides, before the
//! upgrade, whether a client may connect (and how its connection starts);
//! its `on_close` flow runs once after the connection has ended.
//!
//! A hook's decision is checked before anything is done with it: a
//! subprotocol the client did not offer, a status outside 400-599, a bad
//! group name, too many groups or too large an attachment is the app's
//! mistake, logged with what was wrong, and the client gets a 500.

use std::net::SocketAddr;

use http::StatusCode;
use tokio_tungstenite::tungstenite::Bytes;
use tokio_tungstenite::tungstenite::handshake::server::Request;

use super::handshake::{Refusal, Routed};
use crate::app::{AppInfo, AppStats};
use crate::hub::{Farewell, GroupName};
use crate::runtime::bindings::Param;
use crate::runtime::bindings::hooks::{ClosedConnection, ConnectRequest, Decision};
use crate::runtime::{FlowPre, Outcome, Start, guest_line};

/// The longest reason a rejection sends as its body; longer ones are cut.
const MAX_REJECTION_REASON: usize = 1024;

/// How an accepted connection starts, as its `on_connect` chose.
#[derive(Debug, Default)]
pub(super) struct Opening {
    /// Answered in `Sec-WebSocket-Protocol`.
    pub(super) subprotocol: Option<String>,
    pub(super) attachment: Bytes,
    pub(super) groups: Vec<GroupName>,
    /// What it is sent first, and the groups it joins from a position.
    pub(super) start: Start,
}

/// What `on_close` is told about the connection besides how it ended.
pub(super) struct Ended {
    pub(super) id: u64,
    pub(super) peer: SocketAddr,
    pub(super) path_params: Vec<Param>,
    pub(super) query_params: Vec<Param>,
}

/// The subprotocols a request offers, in its order.
pub(super) fn offered_subprotocols(request: &Request) -> Vec<String> {
    request
        .headers()
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(|value| {
            String::from_utf8_lossy(value.as_bytes())
                .split(',')
                .map(|protocol| protocol.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|protocol| !protocol.is_empty())
        .collect()
}

/// Ask `hook` whether the client may connect.
pub(super) async fn on_connect(
    hook: &FlowPre,
    id: u64,
    peer: SocketAddr,
    request: &Request,
    routed: &Routed,
) -> Result<Opening, Refusal> {
    let offered = offered_subprotocols(request);
    let connect = ConnectRequest {
        id,
        peer_addr: peer.to_string(),
        path: request.uri().path().to_owned(),
        path_params: routed.path_params.clone(),
        query_params: routed.query_params.clone(),
        headers: routed.headers.clone(),
        subprotocols: offered.clone(),
    };
    let app = hook.app();
    match hook.on_connect(&connect).await {
        Ok((Decision::Accept(accepted), start)) => opening(
            app,
            &offered,
            accepted.subprotocol,
            accepted.attachment,
            accepted.groups,
        )
        .map(|opening| Opening { start, ..opening })
        .map_err(|problem| {
            tracing::error!("on_connect: {problem}; refusing the client with 500");
            app_failed()
        }),
        Ok((Decision::Reject(rejected), _)) => {
            let Some(status) = StatusCode::from_u16(rejected.status)
                .ok()
                .filter(|status| status.is_client_error() || status.is_server_error())
            else {
                tracing::error!(
                    "on_connect: rejected with status {}, which is not 400-599; refusing the client with 500",
                    rejected.status
                );
                return Err(app_failed());
            };
            tracing::debug!(%status, "on_connect rejected the client");
            AppStats::add(&app.stats.connections_refused, 1);
            Err(Refusal {
                status,
                body: cut(rejected.reason, MAX_REJECTION_REASON),
            })
        }
        Err(outcome) => {
            log_failure("on_connect", app, &outcome);
            Err(app_failed())
        }
    }
}

/// Check what an accepting `on_connect` chose against what the client
/// offered and the app's limits.
fn opening(
    app: &AppInfo,
    offered: &[String],
    subprotocol: Option<String>,
    attachment: Vec<u8>,
    groups: Vec<String>,
) -> Result<Opening, String> {
    if let Some(chosen) = &subprotocol
        && !offered.contains(chosen)
    {
        let chosen = guest_line(app, chosen).unwrap_or_default();
        return Err(format!(
            "it chose the subprotocol `{chosen}`, which the client did not offer (offered: {})",
            if offered.is_empty() {
                "none".to_owned()
            } else {
                offered.join(", ")
            }
        ));
    }
    let limits = &app.limits;
    if attachment.len() > limits.max_attachment_size {
        return Err(format!(
            "its attachment has {} bytes, more than the app's max_attachment_size of {}",
            attachment.len(),
            limits.max_attachment_size
        ));
    }
    if groups.len() > limits.max_groups_per_connection {
        return Err(format!(
            "it chose {} groups, more than the app's max_groups_per_connection of {}",
            groups.len(),
            limits.max_groups_per_connection
        ));
    }
    let mut names = Vec::with_capacity(groups.len());
    for group in groups {
        match GroupName::parse(&group) {
            Ok(name) => names.push(name),
            Err(error) => {
                let group = guest_line(app, &group).unwrap_or_default();
                return Err(format!("it chose the group `{group}`: {error}"));
            }
        }
    }
    Ok(Opening {
        subprotocol,
        attachment: Bytes::from(attachment),
        groups: names,
        start: Start::default(),
    })
}

/// Run `hook`'s `on_close` for a connection that has ended.
pub(super) async fn on_close(
    hook: &FlowPre,
    ended: Ended,
    (code, reason): (u16, String),
    farewell: Farewell,
) {
    let closed = ClosedConnection {
        id: ended.id,
        peer_addr: ended.peer.to_string(),
        code,
        reason,
        groups: farewell
            .groups
            .iter()
            .map(|group| group.as_str().to_owned())
            .collect(),
        attachment: farewell.attachment.to_vec(),
        path_params: ended.path_params,
        query_params: ended.query_params,
    };
    let outcome = hook.on_close(&closed).await;
    log_failure("on_close", hook.app(), &outcome);
}

/// Log a hook that did not complete.
fn log_failure(hook: &str, app: &AppInfo, outcome: &Outcome) {
    match outcome {
        Outcome::Completed => {}
        Outcome::Failed(message) => {
            if let Some(message) = guest_line(app, message) {
                tracing::warn!("{hook} returned an error: {message}");
            }
        }
        Outcome::Trapped(trap) => {
            let cause = trap.root_cause().to_string().replace('\n', " ");
            tracing::error!("{hook} trapped: {cause}");
        }
        Outcome::LimitExceeded(exceeded) => tracing::error!("{hook} stopped: {exceeded}"),
    }
}

/// The client's answer when the app's hook failed: no details, which are
/// in the log.
fn app_failed() -> Refusal {
    Refusal {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        body: "the app could not decide on this connection".to_owned(),
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offered_subprotocols_are_split_and_trimmed_in_order() {
        let request = http::Request::builder()
            .uri("/x")
            .header("Sec-WebSocket-Protocol", "chat.v2, token.abc")
            .header("Sec-WebSocket-Protocol", " json ,")
            .body(())
            .unwrap();
        assert_eq!(
            offered_subprotocols(&request),
            ["chat.v2", "token.abc", "json"]
        );
    }

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        assert_eq!(cut("é".repeat(600), 1024).len(), 1024);
        assert_eq!(cut("aé".to_owned(), 2), "a");
        assert_eq!(cut("short".to_owned(), 1024), "short");
    }
}
