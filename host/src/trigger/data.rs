//! Data mode: every message read from the connection is one flow execution.
//! Executions of a connection run one at a time, in message order.

use std::sync::Arc;

use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{Handler, inputs, report};
use crate::close::Close;
use crate::manifest::spec::{Format, Instance, OnInvalid};
use crate::runtime::bindings::{Content, Event};
use crate::runtime::connection::{Inbound, SendFailure};
use crate::runtime::{ConnectionShared, HostConnection, Lifetime};

/// Serve messages until the client closes, a flow traps, or the server shuts
/// down. Returns the close the host should send, if any.
pub(super) async fn run(
    handler: &Handler,
    shared: &Arc<ConnectionShared>,
    mut inbound: Inbound,
    // Lent, not moved: an `async fn` keeps room for its arguments beside
    // the locals they are moved into, for the connection's whole life.
    event: &mut Event,
    shutdown: &CancellationToken,
) -> Option<Close> {
    let wall_time = handler.app.limits.wall_time;
    // Every execution of the connection logs in its span.
    let instance = match handler.spec.instance {
        Instance::Fresh => "fresh",
        Instance::Reuse => "reuse",
    };
    tracing::Span::current()
        .record("flow", handler.spec.flow.as_str())
        .record("instance", instance);
    let mut reused = match handler.spec.instance {
        Instance::Fresh => None,
        Instance::Reuse => {
            let connection = HostConnection::new(Arc::clone(shared), None);
            match Box::pin(handler.flow().instantiate(connection)).await {
                Ok(instance) => Some(instance),
                Err(outcome) => return report(handler, shared, outcome),
            }
        }
    };
    // Kept across the loop: registered once.
    let mut shutting_down = std::pin::pin!(shutdown.cancelled());
    loop {
        let message = tokio::select! {
            biased;
            () = shutting_down.as_mut() => return Some(Close::GOING_AWAY),
            message = inbound.recv() => message?,
        };
        let json = match decode(handler, message, event) {
            Ok(json) => json,
            Err(rejection) => match handler.spec.on_invalid {
                OnInvalid::Close => return Some(Close::invalid_data(rejection.reason())),
                OnInvalid::Reply => {
                    // The error reply takes the place of the flow's answer,
                    // and waits for a client that does not read no longer
                    // than a flow's `send` would.
                    let reply = Message::text(rejection.reply());
                    // Boxed: a waiting send is large, and rare here; inline
                    // it would size the connection's task for good.
                    let send = Box::pin(shared.send(reply));
                    if let Err(SendFailure::SlowClient(_)) = send.await {
                        return None;
                    }
                    continue;
                }
            },
        };
        if !handler.spec.inputs.is_empty() {
            event.inputs = inputs::evaluate(&handler.spec.inputs, event, json.as_ref());
        }
        // Boxed: an execution's future is large and lives only while a
        // message is handled, not while the connection idles.
        let outcome = match reused.take() {
            None => {
                let connection = HostConnection::new(Arc::clone(shared), None);
                let lifetime = Lifetime::Message { wall_time };
                Box::pin(handler.flow().execute(event, connection, lifetime)).await
            }
            Some(instance) => {
                let (outcome, instance) = Box::pin(instance.call(event, wall_time)).await;
                reused = instance;
                outcome
            }
        };
        if let Some(close) = report(handler, shared, outcome) {
            return Some(close);
        }
    }
}

/// Why a message was not passed to the flow.
enum Rejection {
    InvalidJson(String),
    Schema { pointer: String, problem: String },
}

impl Rejection {
    /// The close reason (truncated to fit a close frame by the caller).
    fn reason(&self) -> String {
        match self {
            Rejection::InvalidJson(problem) => format!("invalid JSON: {problem}"),
            Rejection::Schema { pointer, problem } => {
                let at = if pointer.is_empty() { "/" } else { pointer };
                format!("schema violation at {at}: {problem}")
            }
        }
    }

    /// The error message sent instead of closing.
    fn reply(&self) -> String {
        let reply = match self {
            Rejection::InvalidJson(problem) => serde_json::json!({
                "error": "invalid JSON",
                "detail": problem,
            }),
            Rejection::Schema { pointer, problem } => serde_json::json!({
                "error": "schema violation",
                "pointer": pointer,
                "detail": problem,
            }),
        };
        reply.to_string()
    }
}

/// Put the message into `event.content` as the handler's format calls for,
/// checking JSON and the schema. Returns the parsed JSON (JSON format).
fn decode(
    handler: &Handler,
    message: Message,
    event: &mut Event,
) -> Result<Option<Value>, Rejection> {
    let text = match (handler.spec.format, message) {
        (Format::String, Message::Text(text)) => {
            event.content = Content::Text(text.as_str().to_owned());
            return Ok(None);
        }
        (Format::String, Message::Binary(bytes)) => {
            event.content = Content::Binary(bytes.to_vec());
            return Ok(None);
        }
        (Format::Json, Message::Text(text)) => text.as_str().to_owned(),
        (Format::Json, Message::Binary(bytes)) => String::from_utf8(bytes.to_vec())
            .map_err(|_| Rejection::InvalidJson("the message is not UTF-8".into()))?,
        (_, other) => unreachable!("the reader passes on data messages only, got {other:?}"),
    };
    let value: Value =
        serde_json::from_str(&text).map_err(|error| Rejection::InvalidJson(error.to_string()))?;
    if let Some(schema) = &handler.spec.schema
        && let Err(error) = schema.validator.validate(&value)
    {
        return Err(Rejection::Schema {
            pointer: error.instance_path().to_string(),
            problem: error.to_string(),
        });
    }
    event.content = Content::Json(text);
    Ok(Some(value))
}
