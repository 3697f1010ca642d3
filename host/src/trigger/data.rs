//! Data mode: every message read from the connection is one flow execution.
//! Executions of a connection run one at a time, in message order.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{Close, Handler, report};
use crate::manifest::Format;
use crate::runtime::bindings::{Content, Event};
use crate::runtime::{ConnectionShared, HostConnection};

/// Serve messages until the client closes, a flow traps, or the server shuts
/// down. Returns the close the host should send, if any.
pub async fn run(
    handler: &Handler,
    shared: &Arc<ConnectionShared>,
    mut inbound: mpsc::Receiver<Message>,
    mut event: Event,
    shutdown: &CancellationToken,
) -> Option<Close> {
    loop {
        let message = tokio::select! {
            message = inbound.recv() => message?,
            () = shutdown.cancelled() => return Some(Close::GOING_AWAY),
        };
        event.content = match decode(handler.format, message) {
            Ok(content) => content,
            Err(close) => return Some(close),
        };
        let connection = HostConnection::new(Arc::clone(shared), None);
        let (outcome, _stats) = handler.flow.execute(&event, connection, shared.id).await;
        if let Some(close) = report(handler, shared.id, outcome) {
            return Some(close);
        }
    }
}

/// Turn a message into the content the handler's format calls for.
fn decode(format: Format, message: Message) -> Result<Content, Close> {
    match (format, message) {
        (Format::String, Message::Text(text)) => Ok(Content::Text(text.as_str().to_owned())),
        (Format::String, Message::Binary(bytes)) => Ok(Content::Binary(bytes.to_vec())),
        (Format::Json, Message::Text(text)) => {
            check_json(text.as_str())?;
            Ok(Content::Json(text.as_str().to_owned()))
        }
        (Format::Json, Message::Binary(bytes)) => {
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                Close::invalid_data("invalid JSON: the message is not UTF-8".into())
            })?;
            check_json(text)?;
            Ok(Content::Json(text.to_owned()))
        }
        (_, other) => unreachable!("the reader passes on data messages only, got {other:?}"),
    }
}

fn check_json(text: &str) -> Result<serde_json::Value, Close> {
    serde_json::from_str(text)
        .map_err(|error| Close::invalid_data(format!("invalid JSON: {error}")))
}
