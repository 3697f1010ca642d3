//! `wsflow-recovery`: what it costs a client to get back what it missed.
//! Against a wsflow host serving the `recall` test program at
//! `/recall/{room}` with `[[history]]` for `room:*`, it publishes
//! `--missed` messages to a room, then connects again and again with
//! `?since=` the position before them (each connection is sent the missed
//! messages and `recovered complete=true`), and, as the baseline, with
//! `?since=` the newest position (sent `recovered complete=true` only).
//! Reports the time from starting the connection to the last line, median
//! and p99, for both.
//!
//! `wsflow-recovery ws://127.0.0.1:PORT/recall/bench --missed 100 --runs 200`

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use wsflow_bench::{Summary, micros};

/// Reconnect-with-recovery latency.
#[derive(Debug, Parser)]
#[command(name = "wsflow-recovery")]
struct Args {
    /// The room's URL (`ws://HOST:PORT/recall/ROOM`).
    url: String,
    /// Messages the client missed.
    #[arg(long, default_value_t = 100)]
    missed: usize,
    /// Measured reconnects of each kind.
    #[arg(long, default_value_t = 200)]
    runs: usize,
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const TIMEOUT: Duration = Duration::from_secs(10);

async fn next_text(client: &mut Client) -> anyhow::Result<String> {
    loop {
        let message = tokio::time::timeout(TIMEOUT, client.next())
            .await
            .context("no message within 10 s")?
            .context("the connection ended")??;
        match message {
            Message::Text(text) => return Ok(text.as_str().to_owned()),
            Message::Ping(_) | Message::Pong(_) => {}
            other => bail!("unexpected message {other:?}"),
        }
    }
}

/// Publish through `client` and answer the position (`ok pos P`).
async fn publish(client: &mut Client, text: &str) -> anyhow::Result<String> {
    client.send(Message::text(format!("pub {text}"))).await?;
    loop {
        let line = next_text(client).await?;
        if let Some(position) = line.strip_prefix("ok pos ") {
            return Ok(position.to_owned());
        }
    }
}

/// Connect with `since`, read `expected` lines and the `recovered` line;
/// the time it took.
async fn recover(url: &str, since: &str, expected: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let (mut client, _) = tokio_tungstenite::connect_async(format!("{url}?since={since}")).await?;
    for n in 0..expected {
        let line = next_text(&mut client).await?;
        if line.starts_with("recovered") {
            bail!("recovered after {n} of {expected} messages");
        }
    }
    let last = next_text(&mut client).await?;
    if last != "recovered complete=true" {
        bail!("expected `recovered complete=true`, got {last}");
    }
    let took = started.elapsed();
    client.close(None).await.ok();
    Ok(took)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (mut publisher, _) = tokio_tungstenite::connect_async(&args.url)
        .await
        .with_context(|| format!("connecting to {}", args.url))?;
    let before = publish(&mut publisher, r#"{"n":0}"#).await?;
    let mut newest = before.clone();
    for n in 1..=args.missed {
        newest = publish(&mut publisher, &format!(r#"{{"n":{n}}}"#)).await?;
    }
    let mut rows = Vec::new();
    for (label, since, expected) in [
        ("nothing missed (since = newest)", &newest, 0),
        (
            "missed messages (since = before them)",
            &before,
            args.missed,
        ),
    ] {
        // Warm-up: the flow's compiled code, the kernel's buffers.
        for _ in 0..10 {
            recover(&args.url, since, expected).await?;
        }
        let mut nanos = Vec::with_capacity(args.runs);
        for _ in 0..args.runs {
            let took = recover(&args.url, since, expected).await?;
            nanos.push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
        }
        let summary = Summary::from_nanos(&mut nanos);
        println!(
            "{label}: {expected} message(s), {} runs: p50 {} µs, p99 {} µs",
            summary.count,
            micros(summary.p50),
            micros(summary.p99)
        );
        rows.push(summary);
    }
    let extra = rows[1].p50.saturating_sub(rows[0].p50);
    println!(
        "recovery of {} missed messages adds {} µs at the median ({} µs per message)",
        args.missed,
        micros(extra),
        micros(extra / u32::try_from(args.missed.max(1)).unwrap_or(1))
    );
    Ok(())
}
