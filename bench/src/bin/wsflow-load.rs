//! `wsflow-load`: a WebSocket load generator for echo servers.
//!
//! Opens N connections, then for a warm-up plus a measured period either
//! plays ping-pong (each connection sends one message and waits for its
//! echo) or keeps a window of W messages in flight per connection. Reports
//! messages/s and round-trip latency percentiles; the last line of output
//! (`result key=value ...`) is for scripts. `--mode hold` only opens the
//! connections and keeps them idle, for memory measurements.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsflow_bench::{CpuSnapshot, Summary, Usage, gather, micros, rss_kib, ws_config};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Load an echo server over WebSocket and report throughput and latency.
#[derive(Debug, Parser)]
#[command(name = "wsflow-load")]
struct Args {
    /// The server's URL, e.g. ws://127.0.0.1:9998/echo.
    url: String,
    /// Connections to open.
    #[arg(short, long, default_value_t = 64)]
    connections: usize,
    /// ping-pong: one message in flight per connection; pipelined: a window
    /// of --window messages; hold: open the connections and keep them idle.
    #[arg(short, long, value_enum, default_value_t = Mode::PingPong)]
    mode: Mode,
    /// Messages in flight per connection in pipelined mode.
    #[arg(short, long, default_value_t = 16)]
    window: usize,
    /// Message size in bytes.
    #[arg(short, long, default_value_t = 32)]
    size: usize,
    /// Send binary messages instead of text.
    #[arg(long)]
    binary: bool,
    /// Send this text message instead (a request to a server that does
    /// more than echo); --size and --binary do not apply.
    #[arg(long)]
    message: Option<String>,
    /// The reply every message must get (default: the message itself).
    #[arg(long)]
    reply: Option<String>,
    /// Every reply is the number of messages its connection has sent so
    /// far, in decimal (a server counting each connection's messages).
    #[arg(long, conflicts_with = "reply")]
    reply_count: bool,
    /// Seconds measured (after the warm-up); in hold mode, how long to hold.
    #[arg(short, long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Wait for one message from the server on each new connection before
    /// counting it as open (a connection-mode flow that greets its client).
    #[arg(long)]
    expect_greeting: bool,
    /// Handshakes in progress at once while connecting.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Runtime worker threads (default: the CPUs this process may use).
    #[arg(long)]
    threads: Option<usize>,
    /// The server's PID: report its CPU use over the measured period and
    /// its resident memory at the end.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    PingPong,
    Pipelined,
    Hold,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::PingPong => "ping-pong",
            Mode::Pipelined => "pipelined",
            Mode::Hold => "hold",
        }
    }
}

/// When the measured period starts and ends.
#[derive(Debug, Clone, Copy)]
struct Plan {
    measure_from: Instant,
    end: Instant,
}

/// How long after the end a reply may still be awaited before the server is
/// declared stuck.
const GRACE: Duration = Duration::from_secs(5);

/// What one connection measured.
#[derive(Debug, Default)]
struct Samples {
    /// Echoes received within the measured period.
    count: u64,
    /// Round trips, in nanoseconds, of messages sent and answered within it.
    latencies: Vec<u64>,
}

impl Samples {
    fn record(&mut self, plan: &Plan, sent: Instant, received: Instant) {
        if received < plan.measure_from || received > plan.end {
            return;
        }
        self.count += 1;
        if sent >= plan.measure_from {
            let nanos = u64::try_from((received - sent).as_nanos()).unwrap_or(u64::MAX);
            self.latencies.push(nanos);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if let Some(message) = &args.message {
        args.size = message.len();
        args.binary = false;
    }
    if args.connections == 0 || args.window == 0 {
        bail!("--connections and --window must be at least 1");
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(args, threads))
}

async fn run(args: Args, threads: usize) -> anyhow::Result<()> {
    let kind = if args.binary { "binary" } else { "text" };
    println!(
        "wsflow-load: {} connection(s) to {}, {}{}, {}-byte {kind} messages, \
         {}s warm-up + {}s measured, {threads} thread(s)",
        args.connections,
        args.url,
        args.mode.name(),
        if args.mode == Mode::Pipelined {
            format!(" (window {})", args.window)
        } else {
            String::new()
        },
        args.size,
        args.warmup,
        args.duration,
    );

    let started = Instant::now();
    let connections = connect_all(&args).await?;
    let connect_time = started.elapsed();
    println!(
        "connected {} in {:.2}s",
        connections.len(),
        connect_time.as_secs_f64()
    );

    if args.mode == Mode::Hold {
        return hold(&args, connections).await;
    }

    let payload = match &args.message {
        Some(text) => Message::text(text.as_str()),
        None => payload(args.size, args.binary),
    };
    let expected = match (&args.reply, args.reply_count) {
        (_, true) => Expect::Count,
        (Some(text), false) => Expect::Message(Message::text(text.as_str())),
        (None, false) => Expect::Message(payload.clone()),
    };
    let start = Instant::now();
    let plan = Plan {
        measure_from: start + Duration::from_secs_f64(args.warmup),
        end: start + Duration::from_secs_f64(args.warmup + args.duration),
    };
    let usage = tokio::spawn(measure_cpu(plan, args.server_pid));

    let mut workers = JoinSet::new();
    for ws in connections {
        let payload = payload.clone();
        let expected = expected.clone();
        let (mode, window) = (args.mode, args.window);
        workers.spawn(async move {
            match mode {
                Mode::Pipelined => pipelined(ws, payload, expected, window, plan).await,
                _ => ping_pong(ws, payload, expected, plan).await,
            }
        });
    }
    let mut count = 0u64;
    let mut latencies = Vec::new();
    let mut errors = 0usize;
    while let Some(joined) = workers.join_next().await {
        match joined.context("a connection task panicked")? {
            Ok(samples) => {
                count += samples.count;
                latencies.extend(samples.latencies);
            }
            Err(error) => {
                if errors == 0 {
                    eprintln!("connection failed: {error:#}");
                }
                errors += 1;
            }
        }
    }
    let (usage, server_rss_kib) = usage.await.unwrap_or_default();

    let summary = Summary::from_nanos(&mut latencies);
    let rate = count as f64 / args.duration;
    println!(
        "messages/s: {rate:.0} ({count} echoes in {}s)",
        args.duration
    );
    println!(
        "round trip (µs): p50 {} p90 {} p99 {} p99.9 {} max {} ({} samples)",
        micros(summary.p50),
        micros(summary.p90),
        micros(summary.p99),
        micros(summary.p999),
        micros(summary.max),
        summary.count,
    );
    println!("{}", usage.describe());
    if errors > 0 {
        eprintln!("{errors} connection(s) failed");
    }
    let mut result = format!(
        "result mode={} connections={} size={} seconds={} messages={count} msgs_per_s={rate:.0} \
         p50_us={} p90_us={} p99_us={} p999_us={} max_us={} errors={errors} {}",
        args.mode.name(),
        args.connections,
        args.size,
        args.duration,
        micros(summary.p50),
        micros(summary.p90),
        micros(summary.p99),
        micros(summary.p999),
        micros(summary.max),
        usage.fields(),
    );
    if let Some(rss) = server_rss_kib {
        result.push_str(&format!(" server_rss_kib={rss}"));
    }
    println!("{result}");
    if errors > 0 || count == 0 {
        bail!("the run had failed connections or no echoes");
    }
    Ok(())
}

/// Open every connection, a bounded number of handshakes at a time.
async fn connect_all(args: &Args) -> anyhow::Result<Vec<Ws>> {
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for _ in 0..args.connections {
        let permits = Arc::clone(&permits);
        let url = args.url.clone();
        let expect_greeting = args.expect_greeting;
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let connect =
                tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true);
            let (mut ws, _response) = timeout(Duration::from_secs(30), connect)
                .await
                .context("connecting timed out")??;
            if expect_greeting {
                timeout(Duration::from_secs(30), next_data(&mut ws))
                    .await
                    .context("no greeting within 30s")??;
            }
            anyhow::Ok(ws)
        });
    }
    gather(tasks, "connection(s)").await
}

/// Keep the connections open and idle for the duration (or until killed).
async fn hold(args: &Args, connections: Vec<Ws>) -> anyhow::Result<()> {
    if let Some(pid) = args.server_pid
        && let Some(rss) = rss_kib(&pid.to_string())
    {
        println!("server VmRSS with the connections open: {rss} KiB");
    }
    println!("holding {} connection(s)", connections.len());
    std::io::stdout().flush()?;
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let mut closing = JoinSet::new();
    for mut ws in connections {
        closing.spawn(async move {
            let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
        });
    }
    while closing.join_next().await.is_some() {}
    Ok(())
}

/// A message of `size` bytes; the same buffer is shared by every send.
fn payload(size: usize, binary: bool) -> Message {
    if binary {
        let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        Message::binary(bytes)
    } else {
        let text: String = (0..size)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        Message::text(text)
    }
}

/// The next data message; control frames are skipped.
async fn next_data<S>(stream: &mut S) -> anyhow::Result<Message>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => return Ok(message),
            Some(Ok(Message::Close(frame))) => bail!("the server closed the connection: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error).context("reading"),
            None => bail!("the connection ended"),
        }
    }
}

/// What the replies must be.
#[derive(Debug, Clone)]
enum Expect {
    /// This message, every time.
    Message(Message),
    /// The number of messages the connection has sent, counting this one.
    Count,
}

/// Check the reply to the `nth` message of a connection (from 1).
fn check_reply(reply: &Message, expected: &Expect, nth: u64) -> anyhow::Result<()> {
    let expected = match expected {
        Expect::Message(message) => message,
        Expect::Count => &Message::text(nth.to_string()),
    };
    if reply != expected {
        let shown = |message: &Message| match message {
            Message::Text(text) if text.len() <= 200 => format!("{:?}", text.as_str()),
            other => format!("a {}-byte message", other.len()),
        };
        bail!("expected {}, got {}", shown(expected), shown(reply));
    }
    Ok(())
}

/// One message in flight: send, wait for the echo, repeat.
async fn ping_pong(
    mut ws: Ws,
    payload: Message,
    expected: Expect,
    plan: Plan,
) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    let mut nth = 0;
    loop {
        let sent = Instant::now();
        if sent >= plan.end {
            break;
        }
        ws.send(payload.clone()).await.context("sending")?;
        let reply = timeout_at(plan.end + GRACE, next_data(&mut ws))
            .await
            .context("no echo: the server is stuck")??;
        let received = Instant::now();
        nth += 1;
        check_reply(&reply, &expected, nth)?;
        samples.record(&plan, sent, received);
    }
    let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
    Ok(samples)
}

/// Up to `window` messages in flight: a writer task sends whenever the
/// window has room, this task reads the echoes in order.
async fn pipelined(
    ws: Ws,
    payload: Message,
    expected: Expect,
    window: usize,
    plan: Plan,
) -> anyhow::Result<Samples> {
    let (mut sink, mut stream) = ws.split();
    let room = Arc::new(Semaphore::new(window));
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<Instant>();
    let writer = tokio::spawn({
        let room = Arc::clone(&room);
        async move {
            loop {
                room.acquire().await?.forget();
                let now = Instant::now();
                if now >= plan.end {
                    break;
                }
                sent_tx.send(now)?;
                // Batch the writes of a burst; flush when the window is full.
                if room.available_permits() > 0 {
                    sink.feed(payload.clone()).await?;
                } else {
                    sink.send(payload.clone()).await?;
                }
            }
            sink.flush().await?;
            anyhow::Ok(sink)
        }
    });
    let mut samples = Samples::default();
    let mut nth = 0;
    while let Some(sent) = sent_rx.recv().await {
        let reply = timeout_at(plan.end + GRACE, next_data(&mut stream))
            .await
            .context("no echo: the server is stuck")??;
        let received = Instant::now();
        room.add_permits(1);
        nth += 1;
        check_reply(&reply, &expected, nth)?;
        samples.record(&plan, sent, received);
    }
    let sink = writer.await.context("the writer panicked")??;
    if let Ok(mut ws) = sink.reunite(stream) {
        let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
    }
    Ok(samples)
}

/// CPU use over the measured period, and the server's memory at its end.
async fn measure_cpu(plan: Plan, server_pid: Option<u32>) -> (Usage, Option<u64>) {
    sleep_until(plan.measure_from).await;
    let from = CpuSnapshot::take(server_pid.as_slice());
    sleep_until(plan.end).await;
    let to = CpuSnapshot::take(server_pid.as_slice());
    let seconds = (plan.end - plan.measure_from).as_secs_f64();
    let rss = server_pid.and_then(|pid| rss_kib(&pid.to_string()));
    (to.usage_since(&from, seconds), rss)
}
