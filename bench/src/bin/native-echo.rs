//! `native-echo`: the native baseline. A plain tokio + tokio-tungstenite
//! echo server with wsflow's WebSocket settings (4 KiB read and write
//! buffers, 1 MiB messages and frames, TCP_NODELAY) and no WebAssembly: every
//! text or binary message goes straight back on the same connection.
//!
//! Prints `listening on ws://ADDR/echo` once bound, like `wsflow up`. Any
//! path is accepted.

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use wsflow_bench::ws_config;

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
    // Same runtime as `wsflow up`: multi-threaded, one worker per usable CPU.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(args.addr))
}

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on ws://{}/echo", listener.local_addr()?)?;
    stdout.flush()?;
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                tokio::spawn(echo(stream));
            }
            Err(error) => {
                // Typically EMFILE: back off instead of spinning.
                eprintln!("accept failed: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn echo(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
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
