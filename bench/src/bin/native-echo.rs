//! `native-echo`: the native baseline. A plain tokio + tokio-tungstenite
//! echo server with wsflow's WebSocket settings (4 KiB read and write
//! buffers, 1 MiB messages and frames, TCP_NODELAY) and no WebAssembly: every
//! text or binary message goes straight back on the same connection.
//!
//! Prints `listening on ws://ADDR/echo` once bound, like `wsflow up`. Any
//! path is accepted.

use std::net::SocketAddr;

use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use wsflow_bench::{serve_native, ws_config};

/// A native WebSocket echo server, the baseline for wsflow's benchmarks.
#[derive(Debug, Parser)]
#[command(name = "native-echo")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    serve_native(args.addr, "/echo", echo)
}

async fn echo(stream: TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())).await
    else {
        return;
    };
    // tungstenite answers pings and the closing handshake itself; the stream
    // ends once the close is complete.
    while let Some(Ok(message)) = ws.next().await {
        if matches!(message, Message::Text(_) | Message::Binary(_))
            && ws.send(message).await.is_err()
        {
            break;
        }
    }
}
