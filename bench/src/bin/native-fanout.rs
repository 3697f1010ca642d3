//! `native-fanout`: the native baseline of the fan-out benchmark. A plain
//! tokio + tokio-tungstenite broadcast server with wsflow's WebSocket
//! settings and no WebAssembly:
//!
//! - `/sub`: a subscriber. Its first message subscribes it (answered with
//!   `ok joined`); from then on it receives every published message.
//! - `/pub`: a publisher. Every text or binary message it sends goes to
//!   every subscriber, through one `tokio::sync::broadcast` channel: the
//!   message is stored once and each subscriber's task takes a clone (its
//!   payload shared by reference count).
//!
//! A subscriber that falls more than the channel's capacity behind misses
//! messages (the load generator counts them as lost), as a wsflow member
//! with `slow_member = "drop"` does. Prints `listening on ws://ADDR/sub`
//! once bound, like `wsflow up`.

use std::net::SocketAddr;

use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use wsflow_bench::{serve_native, ws_config};

/// A native WebSocket broadcast server, the baseline for wsflow's fan-out
/// benchmark.
#[derive(Debug, Parser)]
#[command(name = "native-fanout")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
}

/// Messages a subscriber may fall behind before it misses some: wsflow's
/// outbound queue per connection.
const CAPACITY: usize = 64;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (channel, _) = broadcast::channel(CAPACITY);
    serve_native(args.addr, "/sub", move |stream| {
        connection(stream, channel.clone())
    })
}

#[expect(
    clippy::result_large_err,
    reason = "tungstenite's handshake callback returns its ErrorResponse by value"
)]
async fn connection(stream: TcpStream, channel: broadcast::Sender<Message>) {
    let mut path = String::new();
    let record_path = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        path = request.uri().path().to_owned();
        Ok(response)
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, record_path, Some(ws_config()))
            .await
    else {
        return;
    };
    match path.as_str() {
        "/sub" => subscriber(ws, channel).await,
        "/pub" => publisher(ws, channel).await,
        _ => {}
    }
}

/// Publish every message the client sends.
async fn publisher(mut ws: WebSocketStream<TcpStream>, channel: broadcast::Sender<Message>) {
    while let Some(Ok(message)) = ws.next().await {
        if matches!(message, Message::Text(_) | Message::Binary(_)) {
            // No subscriber: nobody to send to.
            let _ = channel.send(message);
        }
    }
}

/// Wait for the subscribe message, then pass on every published message.
async fn subscriber(mut ws: WebSocketStream<TcpStream>, channel: broadcast::Sender<Message>) {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(_) | Message::Binary(_))) => break,
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return,
        }
    }
    let mut published = channel.subscribe();
    if ws.send(Message::text("ok joined")).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            // tungstenite answers pings and the closing handshake itself;
            // the stream ends once the close is complete.
            next = ws.next() => match next {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            message = published.recv() => match message {
                Ok(message) => {
                    if write_batch(&mut ws, message, &mut published).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_missed)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Write `first` and whatever else is already published, then flush once,
/// as wsflow's writer batches what is queued.
async fn write_batch(
    ws: &mut WebSocketStream<TcpStream>,
    first: Message,
    published: &mut broadcast::Receiver<Message>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    ws.feed(first).await?;
    while let Ok(message) = published.try_recv() {
        ws.feed(message).await?;
    }
    ws.flush().await
}
