//! `native-orders`: the native baseline for a flow that does real work. The
//! logic of `examples/orders` in a plain tokio + tokio-tungstenite server:
//! the handshake's path and query give the region, the user, a priority
//! and tags; each text message is parsed as JSON, checked against
//! `examples/orders/order.schema.json` (compiled once, with the same
//! `jsonschema` crate wsflow uses), and answered with the accepted order
//! as JSON. A message that breaks the schema closes the connection with
//! 1007, as wsflow does.
//!
//! Prints `listening on ws://ADDR/orders/eu` once bound, like `wsflow up`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wsflow_bench::{serve_native, ws_config};

/// The orders example's logic as a native WebSocket server.
#[derive(Debug, Parser)]
#[command(name = "native-orders")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// The orders' JSON schema.
    #[arg(long, default_value = "examples/orders/order.schema.json")]
    schema: PathBuf,
}

/// A message, once the schema has accepted it.
#[derive(Deserialize)]
struct Order {
    item: String,
    qty: u32,
}

/// What the handshake said about the client.
#[derive(Clone, Default)]
struct Client {
    region: String,
    user: String,
    priority: Option<f64>,
    tags: Vec<String>,
}

/// The reply: the order and who placed it, in the flow's field order.
#[derive(Serialize)]
struct Accepted<'a> {
    region: &'a str,
    user: &'a str,
    priority: Option<f64>,
    tags: &'a [String],
    item: String,
    qty: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let schema = std::fs::read_to_string(&args.schema)
        .with_context(|| format!("reading {}", args.schema.display()))?;
    let schema: serde_json::Value = serde_json::from_str(&schema)
        .with_context(|| format!("{} is not JSON", args.schema.display()))?;
    let validator = jsonschema::validator_for(&schema)
        .map_err(|error| anyhow::anyhow!("{}: {error}", args.schema.display()))?;
    let validator = Arc::new(validator);
    serve_native(args.addr, "/orders/eu", move |stream| {
        orders(stream, Arc::clone(&validator))
    })
}

/// The region from `/orders/{region}` and the typed query parameters; a
/// request without them is refused with 400, as wsflow refuses it.
fn client(request: &Request) -> Result<Client, &'static str> {
    let region = request
        .uri()
        .path()
        .strip_prefix("/orders/")
        .filter(|region| !region.is_empty() && !region.contains('/'))
        .ok_or("the path is not /orders/{region}")?;
    let mut client = Client {
        region: region.to_owned(),
        ..Client::default()
    };
    let mut user = None;
    for pair in request.uri().query().unwrap_or_default().split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "user" => user = Some(value.to_owned()),
            "priority" => {
                client.priority = Some(value.parse().map_err(|_| "priority is not a number")?);
            }
            "tag" => client.tags.push(value.to_owned()),
            _ => {}
        }
    }
    client.user = user.ok_or("the query parameter user is required")?;
    Ok(client)
}

async fn orders(stream: TcpStream, validator: Arc<jsonschema::Validator>) {
    let mut found = Client::default();
    // tungstenite's handshake callback returns its `ErrorResponse` by value.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| match client(request) {
        Ok(client) => {
            found = client;
            Ok(response)
        }
        Err(why) => {
            let mut refusal = ErrorResponse::new(Some(why.to_owned()));
            *refusal.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::BAD_REQUEST;
            Err(refusal)
        }
    };
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config())).await
    else {
        return;
    };
    let client = found;
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Some(reply) = accept(&client, &validator, text.as_str()) else {
            let frame = CloseFrame {
                code: CloseCode::Invalid,
                reason: "the message does not match the order schema".into(),
            };
            let _ = ws.close(Some(frame)).await;
            break;
        };
        if ws.send(Message::text(reply)).await.is_err() {
            break;
        }
    }
}

/// The reply to one message, or `None` if it is not a valid order.
fn accept(client: &Client, validator: &jsonschema::Validator, text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    if !validator.is_valid(&value) {
        return None;
    }
    let order: Order = serde_json::from_value(value).ok()?;
    let accepted = Accepted {
        region: &client.region,
        user: &client.user,
        priority: client.priority,
        tags: &client.tags,
        item: order.item,
        qty: order.qty,
    };
    serde_json::to_string(&accepted).ok()
}
