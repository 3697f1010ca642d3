//! `wsflow-fanout`: a load generator for broadcast (fan-out) servers.
//!
//! Opens N subscriber connections; each sends one subscribe command and
//! counts as subscribed once the server answers it. Then one publisher
//! connection sends M messages, each carrying its sequence number and the
//! time it was sent, and the server is to deliver each to every
//! subscriber. Reports deliveries per second and publish-to-receive
//! latency percentiles, and checks that every subscriber received every
//! message exactly once and in order. The last line of output
//! (`result key=value ...`) is for scripts.
//!
//! The protocol, which every server under test speaks:
//!
//! - a subscriber connects to the subscriber URL, sends `--subscribe`
//!   (`join bench`) as a text message, and waits for any message back;
//! - the publisher connects to `--publisher`, sends `--publish-prefix`
//!   followed by the payload as a text message, and the server sends the
//!   payload (without the prefix) to every subscriber; whatever the server
//!   sends the publisher is read and ignored;
//! - a payload is `SEQ TIME ` (8 and 16 hex digits: the sequence number and
//!   nanoseconds since this process started) padded with `x` to `--size`
//!   bytes.
//!
//! Pacing: by default at most `--window` messages are outstanding (sent
//! and not yet received by every subscriber), so the publisher goes as
//! fast as the server delivers without overfilling its queues; with
//! `--rate`, messages are sent at that rate whatever happens.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use wsflow_bench::{CpuSnapshot, Summary, gather, micros, ws_config};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Load a broadcast server with one publisher and many subscribers.
#[derive(Debug, Parser)]
#[command(name = "wsflow-fanout")]
struct Args {
    /// The subscribers' URL, e.g. ws://127.0.0.1:9998/sub; with several
    /// (the hosts of a cluster), subscribers are spread over them in turn.
    #[arg(required = true)]
    urls: Vec<String>,
    /// The publisher's URL, e.g. ws://127.0.0.1:9998/pub.
    #[arg(long)]
    publisher: String,
    /// Subscriber connections.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    subscribers: u32,
    /// Messages published and measured (after the warm-up messages).
    #[arg(short, long, default_value_t = 200)]
    messages: u32,
    /// Messages published first and checked, but not measured.
    #[arg(long, default_value_t = 20)]
    warmup: u32,
    /// Payload size in bytes (at least the 26 bytes of sequence number and
    /// time).
    #[arg(short, long, default_value_t = 32)]
    size: usize,
    /// Messages outstanding at most: sent, and not yet received by every
    /// subscriber.
    #[arg(short, long, default_value_t = 8)]
    window: u32,
    /// Send this many messages per second instead, whatever is outstanding.
    #[arg(long)]
    rate: Option<f64>,
    /// What a subscriber sends to subscribe.
    #[arg(long, default_value = "join bench")]
    subscribe: String,
    /// What the publisher sends before each payload.
    #[arg(long, default_value = "")]
    publish_prefix: String,
    /// Handshakes (and subscriptions) in progress at once while connecting.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Seconds without a delivery after which the run ends and what has not
    /// arrived is lost.
    #[arg(long, default_value_t = 10.0)]
    stall_timeout: f64,
    /// Runtime worker threads (default: the CPUs this process may use).
    #[arg(long)]
    threads: Option<usize>,
    /// The server's PID: report its CPU use over the measured period.
    /// Repeat it for a server of several processes (the hosts of a cluster
    /// and their broker): their CPU times are added.
    #[arg(long)]
    server_pid: Vec<u32>,
}

/// Bytes of a payload's header: `SEQ TIME ` (8 + 1 + 16 + 1).
const HEADER: usize = 26;

/// Descriptors kept beyond one per connection: the runtime's, stdio,
/// `/proc` readings.
const SPARE_DESCRIPTORS: u64 = 64;

/// What the subscribers and the publisher share.
struct Run {
    /// When this process started: payload times count from here.
    epoch: Instant,
    subscribers: u32,
    warmup: u32,
    /// Warm-up and measured messages.
    total: u32,
    /// Per message, the subscribers that have received it.
    received: Vec<AtomicU32>,
    /// Free places in the window: a message received by every subscriber
    /// frees one.
    window: Semaphore,
    /// Messages received by every subscriber.
    complete: AtomicU32,
    /// Every delivery, measured or not (for the stall check).
    deliveries: AtomicU64,
    /// Cancelled when the run ends before every message arrived.
    stop: CancellationToken,
}

impl Run {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from((at - self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Count a delivery of message `seq`.
    fn delivered(&self, seq: u32) {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        let Some(count) = self.received.get(seq as usize) else {
            return;
        };
        if count.fetch_add(1, Ordering::AcqRel) + 1 == self.subscribers {
            self.window.add_permits(1);
            self.complete.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct Inbox {
    /// Measured messages received in order.
    measured: u64,
    /// Publish-to-receive times of the measured messages, in nanoseconds.
    latencies: Vec<u64>,
    /// The arrival of its last measured message.
    last: Option<Instant>,
    /// Messages that never arrived (gaps, and what was missing at the end).
    lost: u64,
    /// Messages that arrived again or after a later one.
    disordered: u64,
    /// The connection ended before every message arrived.
    closed_early: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.subscribers == 0 || args.messages == 0 || args.window == 0 {
        bail!("--subscribers, --messages and --window must be at least 1");
    }
    if args.size < HEADER {
        bail!("--size must be at least {HEADER} bytes (sequence number and time)");
    }
    if args
        .rate
        .is_some_and(|rate| !(rate > 0.0 && rate.is_finite()))
    {
        bail!("--rate must be a positive number of messages per second");
    }
    raise_descriptor_limit(u64::from(args.subscribers) + 1 + SPARE_DESCRIPTORS)?;
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

/// Raise the soft open-file limit to `needed` if it is lower (up to the
/// hard limit, which only a privileged process may raise).
fn raise_descriptor_limit(needed: u64) -> anyhow::Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|current| current >= needed) {
        return Ok(());
    }
    if limit.maximum.is_some_and(|maximum| maximum < needed) {
        bail!(
            "{needed} open files are needed and the hard limit is {:?}; \
             open fewer subscribers or raise it (ulimit -Hn)",
            limit.maximum
        );
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(needed),
            maximum: limit.maximum,
        },
    )
    .context("raising the open-file limit")
}

async fn run(args: Args, threads: usize) -> anyhow::Result<()> {
    let pacing = match args.rate {
        Some(rate) => format!("{rate} messages/s"),
        None => format!("window {}", args.window),
    };
    println!(
        "wsflow-fanout: {} subscriber(s) to {}, publisher to {}, {} + {} warm-up message(s) of \
         {} bytes, {pacing}, {threads} thread(s)",
        args.subscribers,
        args.urls.join(" and "),
        args.publisher,
        args.messages,
        args.warmup,
        args.size,
    );

    let total = args.warmup + args.messages;
    let run = Arc::new(Run {
        epoch: Instant::now(),
        subscribers: args.subscribers,
        warmup: args.warmup,
        total,
        received: (0..total).map(|_| AtomicU32::new(0)).collect(),
        window: Semaphore::new(args.window as usize),
        complete: AtomicU32::new(0),
        deliveries: AtomicU64::new(0),
        stop: CancellationToken::new(),
    });

    let started = Instant::now();
    let subscribers = subscribe_all(&args).await?;
    println!(
        "{} subscribed in {:.2}s",
        subscribers.len(),
        started.elapsed().as_secs_f64()
    );

    let mut inboxes = JoinSet::new();
    for ws in subscribers {
        inboxes.spawn(receive(ws, Arc::clone(&run)));
    }
    let (publisher, _response) =
        tokio_tungstenite::connect_async_with_config(&args.publisher, Some(ws_config()), true)
            .await
            .context("connecting the publisher")?;
    let (sink, mut replies) = publisher.split();
    // What the server answers the publisher is read and ignored.
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = replies.next().await {} });
    let publishing = tokio::spawn(publish(
        sink,
        Arc::clone(&run),
        args.size,
        args.rate,
        args.publish_prefix.clone(),
        args.server_pid.clone(),
    ));

    let outcome = watch(&run, Duration::from_secs_f64(args.stall_timeout)).await;
    let cpu_to = CpuSnapshot::take(&args.server_pid);
    let (measure_from, cpu_from) = publishing
        .await
        .context("the publisher panicked")?
        .context("publishing")?;
    drain.abort();

    let mut summary = Inbox::default();
    let mut latencies = Vec::new();
    // Closed with the process: a close frame each would only add to the
    // servers' work after the measurement.
    let mut connections = Vec::with_capacity(args.subscribers as usize);
    while let Some(joined) = inboxes.join_next().await {
        let (inbox, ws) = joined.context("a subscriber task panicked")?;
        connections.push(ws);
        summary.measured += inbox.measured;
        summary.lost += inbox.lost;
        summary.disordered += inbox.disordered;
        summary.closed_early |= inbox.closed_early;
        summary.last = summary.last.max(inbox.last);
        latencies.extend(inbox.latencies);
    }
    let closed_early = summary.closed_early;

    let Some(last) = summary.last else {
        bail!("no measured message arrived ({outcome})");
    };
    let seconds = (last - measure_from).as_secs_f64();
    let rate = summary.measured as f64 / seconds;
    let usage = cpu_to.usage_since(&cpu_from, seconds);
    let latency = Summary::from_nanos(&mut latencies);
    println!(
        "deliveries/s: {rate:.0} ({} deliveries of {} messages to {} subscribers in {seconds:.2}s)",
        summary.measured, args.messages, args.subscribers
    );
    println!(
        "publish to receive (µs): p50 {} p90 {} p99 {} p99.9 {} max {} ({} samples)",
        micros(latency.p50),
        micros(latency.p90),
        micros(latency.p99),
        micros(latency.p999),
        micros(latency.max),
        latency.count,
    );
    println!(
        "checked: {} of {} messages lost, {} out of order or twice, {outcome}{}",
        summary.lost,
        u64::from(total) * u64::from(args.subscribers),
        summary.disordered,
        if closed_early {
            "; some subscribers were closed by the server"
        } else {
            ""
        }
    );
    println!("{}", usage.describe());
    // CPU time per delivery depends less on how much CPU other processes
    // left the server than deliveries/s does.
    let server_us = usage
        .server
        .map(|server| server * seconds * 1e6 / summary.measured as f64);
    if let Some(server_us) = server_us {
        println!("server CPU per delivery: {server_us:.2} µs");
    }
    println!(
        "result subscribers={} messages={} size={} seconds={seconds:.3} deliveries={} \
         deliveries_per_s={rate:.0} p50_us={} p90_us={} p99_us={} p999_us={} max_us={} \
         lost={} disordered={} server_us_per_delivery={} {}",
        args.subscribers,
        args.messages,
        args.size,
        summary.measured,
        micros(latency.p50),
        micros(latency.p90),
        micros(latency.p99),
        micros(latency.p999),
        micros(latency.max),
        summary.lost,
        summary.disordered,
        server_us.map_or("?".to_owned(), |us| format!("{us:.2}")),
        usage.fields(),
    );
    Ok(())
}

/// Open every subscriber and subscribe it, a bounded number at a time.
async fn subscribe_all(args: &Args) -> anyhow::Result<Vec<Ws>> {
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for (_, url) in (0..args.subscribers).zip(args.urls.iter().cycle()) {
        let permits = Arc::clone(&permits);
        let url = url.clone();
        let subscribe = args.subscribe.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let subscribing = async {
                let (mut ws, _response) =
                    tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true)
                        .await
                        .context("connecting")?;
                ws.send(Message::text(subscribe))
                    .await
                    .context("subscribing")?;
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(_) | Message::Binary(_))) => break,
                        Some(Ok(Message::Close(frame))) => {
                            bail!("the server closed the connection: {frame:?}")
                        }
                        Some(Ok(_)) => {}
                        Some(Err(error)) => return Err(error).context("reading"),
                        None => bail!("the connection ended"),
                    }
                }
                anyhow::Ok(ws)
            };
            timeout(Duration::from_secs(30), subscribing)
                .await
                .context("subscribing timed out")?
        });
    }
    gather(tasks, "subscriber(s)").await
}

/// Send every message; returns when the first measured one was sent and
/// the CPU times just before.
async fn publish(
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    run: Arc<Run>,
    size: usize,
    rate: Option<f64>,
    prefix: String,
    server_pids: Vec<u32>,
) -> anyhow::Result<(Instant, CpuSnapshot)> {
    let mut measured = None;
    let start = Instant::now();
    for seq in 0..run.total {
        match rate {
            Some(rate) => sleep_until(start + Duration::from_secs_f64(f64::from(seq) / rate)).await,
            None => tokio::select! {
                permit = run.window.acquire() => permit?.forget(),
                () = run.stop.cancelled() => break,
            },
        }
        // The measured period starts with the send of its first message.
        let cpu = (seq == run.warmup).then(|| CpuSnapshot::take(&server_pids));
        let now = Instant::now();
        let mut text = String::with_capacity(prefix.len() + size);
        text.push_str(&prefix);
        text.push_str(&format!("{seq:08x} {:016x} ", run.nanos(now)));
        text.extend(std::iter::repeat_n('x', size - HEADER));
        tokio::select! {
            sent = sink.send(Message::text(text)) => sent.context("sending")?,
            () = run.stop.cancelled() => break,
        }
        if let Some(cpu) = cpu {
            measured = Some((now, cpu));
        }
    }
    measured.context("the run stalled before the first measured message was sent")
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Complete,
    Stalled,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Complete => "every message reached every subscriber",
            Outcome::Stalled => "the run stalled (nothing arrived for --stall-timeout)",
        })
    }
}

/// Wait until every message has reached every subscriber, or until nothing
/// arrives for `stall`; then stop the subscribers.
async fn watch(run: &Run, stall: Duration) -> Outcome {
    let mut seen = run.deliveries.load(Ordering::Acquire);
    let mut last_change = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    loop {
        ticks.tick().await;
        if run.complete.load(Ordering::Acquire) == run.total {
            return Outcome::Complete;
        }
        let now = run.deliveries.load(Ordering::Acquire);
        if now != seen {
            seen = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= stall {
            run.stop.cancel();
            return Outcome::Stalled;
        }
    }
}

/// Read one subscriber's messages until it has every one, or the run
/// stops. The connection is handed back to stay open until every
/// subscriber is done.
async fn receive(mut ws: Ws, run: Arc<Run>) -> (Inbox, Ws) {
    let mut inbox = Inbox {
        latencies: Vec::with_capacity((run.total - run.warmup) as usize),
        ..Inbox::default()
    };
    let mut next = 0u32;
    let stop = run.stop.cancelled();
    tokio::pin!(stop);
    while next < run.total {
        let message = tokio::select! {
            biased;
            message = ws.next() => message,
            () = &mut stop => break,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(
                Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_),
            )) => {
                continue;
            }
            Some(Ok(Message::Close(_)) | Err(_)) | None => {
                inbox.closed_early = true;
                break;
            }
        };
        let received = Instant::now();
        let Some((seq, sent)) = parse(text.as_str()) else {
            continue;
        };
        run.delivered(seq);
        if seq < next {
            inbox.disordered += 1;
            continue;
        }
        inbox.lost += u64::from(seq - next);
        next = seq + 1;
        if seq >= run.warmup {
            inbox.measured += 1;
            inbox
                .latencies
                .push(run.nanos(received).saturating_sub(sent));
            inbox.last = Some(received);
        }
    }
    inbox.lost += u64::from(run.total - next);
    (inbox, ws)
}

/// The sequence number and send time of a payload.
fn parse(text: &str) -> Option<(u32, u64)> {
    let seq = u32::from_str_radix(text.get(..8)?, 16).ok()?;
    let sent = u64::from_str_radix(text.get(9..25)?, 16).ok()?;
    Some((seq, sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_their_sequence_number_and_time() {
        let text = format!("{:08x} {:016x} xxxxxx", 258, 1_234_567_890_123u64);
        assert_eq!(text.len(), HEADER + 6);
        assert_eq!(parse(&text), Some((258, 1_234_567_890_123)));
        assert_eq!(parse("ok joined bench"), None);
    }
}
