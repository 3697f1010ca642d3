//! `wsflow-fairness`: does one app's load slow down another app?
//!
//! Runs a built `wsflow up` with two apps, a fresh host per row:
//!
//! - *victim*: the echo example at `/echo` and the `busy` test program at
//!   `/busy` (a flow that needs a fixed amount of CPU work, calibrated to
//!   `--busy-ms` when run alone), both in Data mode with default limits
//!   (`cpu_time = "1s"`);
//! - *hostile*: the `spin` test program at `/spin`, with `--spinners N`
//!   connections each starting an execution that loops forever (its CPU and
//!   wall-clock limits lifted so none stops during the row).
//!
//! For each N it measures the victim's echo round trip (one connection,
//! ping-pong, `--duration` seconds) and then runs the busy flow `--busy-runs`
//! times, one after the other: completion time, and how many completed
//! rather than being stopped by a limit. The last line of each row,
//! `result key=value ...`, is for scripts.
//!
//! ```sh
//! wsflow-fairness --wsflow target/release/wsflow \
//!     --echo target/wasm32-wasip2/release/wsflow_example_echo.wasm \
//!     --busy target/wasm32-wasip2/release/test_busy.wasm \
//!     --spin target/wasm32-wasip2/release/test_spin.wasm \
//!     --spinners 0,64,256
//! ```

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsflow_bench::{Summary, ws_config};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Measure how a spinning app affects another app's latency and CPU limit.
#[derive(Debug, Parser)]
#[command(name = "wsflow-fairness")]
struct Args {
    /// The `wsflow` binary to run.
    #[arg(long)]
    wsflow: PathBuf,
    /// The echo example's component.
    #[arg(long)]
    echo: PathBuf,
    /// The `busy` test program's component.
    #[arg(long)]
    busy: PathBuf,
    /// The `spin` test program's component.
    #[arg(long)]
    spin: PathBuf,
    /// Spinning executions of the hostile app, one row each.
    #[arg(long, value_delimiter = ',', default_value = "0,64,256")]
    spinners: Vec<usize>,
    /// Seconds of victim echo ping-pong per row.
    #[arg(short, long, default_value_t = 10.0)]
    duration: f64,
    /// Runs of the busy flow per row.
    #[arg(long, default_value_t = 5)]
    busy_runs: usize,
    /// CPU time the busy flow should need, in milliseconds (calibrated on
    /// a host with nothing else running).
    #[arg(long, default_value_t = 55.0)]
    busy_ms: f64,
    /// Use this much work (millions of rounds) instead of calibrating.
    #[arg(long)]
    busy_work: Option<u64>,
    /// Echo message size in bytes.
    #[arg(short, long, default_value_t = 32)]
    size: usize,
}

/// How long any one step may take before the row is given up.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // The manifests live in a temporary directory: give them absolute paths.
    for file in [
        &mut args.wsflow,
        &mut args.echo,
        &mut args.busy,
        &mut args.spin,
    ] {
        *file = std::fs::canonicalize(&*file)
            .with_context(|| format!("{} does not exist", file.display()))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("wsflow-fairness-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = rows(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn rows(args: &Args, dir: &Path) -> anyhow::Result<()> {
    let max_spinners = args.spinners.iter().copied().max().unwrap_or(0).max(1);
    let victim = dir.join("victim.toml");
    let hostile = dir.join("hostile.toml");
    std::fs::write(&victim, victim_manifest(args))?;
    std::fs::write(&hostile, hostile_manifest(args, max_spinners))?;

    let work = match args.busy_work {
        Some(work) => {
            println!("busy flow: {work} million rounds (--busy-work)");
            work
        }
        None => {
            let work = calibrate(args, &victim, &hostile).await?;
            println!(
                "busy flow: {work} million rounds (calibrated to ~{} ms alone)",
                args.busy_ms
            );
            work
        }
    };
    println!();
    println!(
        "| spinning executions of the other app | victim echo p50 | p99 | max | round trips | busy flow: min | median | max | completed |"
    );
    println!("| --: | --: | --: | --: | --: | --: | --: | --: | --: |");
    let mut results = Vec::new();
    for &spinners in &args.spinners {
        let row = row(args, &victim, &hostile, spinners, work)
            .await
            .with_context(|| format!("row with {spinners} spinning executions"))?;
        println!("{}", row.table_line());
        results.push(row);
    }
    println!();
    for row in &results {
        println!("{}", row.result_line());
    }
    Ok(())
}

fn victim_manifest(args: &Args) -> String {
    format!(
        r#"[app]
name = "victim"

[flows.echo]
component = "{}"

[flows.busy]
component = "{}"

[[triggers]]
port = 0

[[triggers.handlers]]
path = "/echo"
mode = "data"
flow = "echo"

[[triggers.handlers]]
path = "/busy"
mode = "data"
flow = "busy"
"#,
        args.echo.display(),
        args.busy.display()
    )
}

fn hostile_manifest(args: &Args, spinners: usize) -> String {
    format!(
        r#"[app]
name = "hostile"

[limits]
cpu_time = "1h"
wall_time = "1h"
max_executions = {}

[flows.spin]
component = "{}"

[[triggers]]
port = 0

[[triggers.handlers]]
path = "/spin"
mode = "data"
flow = "spin"
"#,
        spinners.max(256),
        args.spin.display()
    )
}

/// Paths the two apps serve: `/echo` and `/busy`, `/spin`.
const ENDPOINTS: usize = 3;

/// A running `wsflow up`, killed when dropped.
struct Host {
    child: Child,
    urls: Vec<String>,
    /// `spinning` lines the hostile app logged so far.
    spinning: Arc<AtomicUsize>,
}

impl Host {
    fn start(args: &Args, manifests: &[&Path]) -> anyhow::Result<Self> {
        let mut child = Command::new(&args.wsflow)
            .arg("up")
            .args(manifests)
            .env("WSFLOW_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", args.wsflow.display()))?;
        let spinning = Arc::new(AtomicUsize::new(0));
        // The last lines of its log, to show if it fails to start.
        let log_tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr = child.stderr.take().context("no stderr")?;
        let counter = Arc::clone(&spinning);
        let tail = Arc::clone(&log_tail);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("spinning") {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                let mut tail = tail.lock().expect("not poisoned");
                if tail.len() == 20 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let mut urls = Vec::new();
        while urls.len() < ENDPOINTS {
            match rx.recv_timeout(STEP_TIMEOUT) {
                Ok(url) => urls.push(url),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let tail = log_tail.lock().expect("not poisoned");
                    let log: Vec<&str> = tail.iter().map(String::as_str).collect();
                    bail!(
                        "wsflow did not print its `listening on` lines; its log:\n{}",
                        log.join("\n")
                    );
                }
            }
        }
        Ok(Self {
            child,
            urls,
            spinning,
        })
    }

    fn url(&self, path: &str) -> anyhow::Result<&str> {
        self.urls
            .iter()
            .find(|url| url.ends_with(path))
            .map(String::as_str)
            .with_context(|| format!("no endpoint {path} in {:?}", self.urls))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(url: &str) -> anyhow::Result<Ws> {
    let (ws, _) = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true),
    )
    .await
    .context("connecting timed out")?
    .with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

/// The next data message, or `None` when the server closed.
async fn next_data(ws: &mut Ws) -> anyhow::Result<Option<Message>> {
    loop {
        let next = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .context("no answer from the server")?;
        match next {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                return Ok(Some(message));
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error.into()),
        }
    }
}

/// Find the work (millions of rounds) that takes `--busy-ms` on a host
/// with nothing else running.
async fn calibrate(args: &Args, victim: &Path, hostile: &Path) -> anyhow::Result<u64> {
    let host = Host::start(args, &[victim, hostile])?;
    let url = host.url("/busy")?.to_owned();
    let mut work = 4;
    loop {
        let mut times = Vec::new();
        for _ in 0..5 {
            let run = busy_run(&url, work).await?;
            times.push(run.context("the busy flow was stopped while calibrating")?);
        }
        times.sort();
        let median = times[times.len() / 2].as_secs_f64() * 1e3;
        if median >= args.busy_ms / 4.0 {
            let scaled = (work as f64 * args.busy_ms / median).round() as u64;
            return Ok(scaled.max(1));
        }
        work *= 4;
    }
}

/// One run of the busy flow on a new connection: how long until its
/// answer, or `None` if the host stopped it.
async fn busy_run(url: &str, work: u64) -> anyhow::Result<Option<Duration>> {
    let mut ws = connect(url).await?;
    let started = Instant::now();
    ws.send(Message::text(work.to_string())).await?;
    let answer = next_data(&mut ws).await?;
    let took = started.elapsed();
    let _ = ws.close(None).await;
    match answer {
        Some(Message::Text(text)) if text.as_str() == format!("done {work}") => Ok(Some(took)),
        Some(other) => bail!("unexpected answer from the busy flow: {other:?}"),
        None => Ok(None),
    }
}

/// What one row measured.
struct Row {
    spinners: usize,
    echo: Summary,
    busy: Vec<Duration>,
    busy_runs: usize,
}

fn ms(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

impl Row {
    fn busy_at(&self, q: f64) -> Option<Duration> {
        let mut sorted = self.busy.clone();
        sorted.sort();
        let nanos: Vec<u64> = sorted.iter().map(|d| d.as_nanos() as u64).collect();
        (!nanos.is_empty()).then(|| Duration::from_nanos(wsflow_bench::percentile(&nanos, q)))
    }

    fn table_line(&self) -> String {
        let busy = |q| self.busy_at(q).map_or("—".to_owned(), ms);
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {}/{} |",
            self.spinners,
            ms(self.echo.p50),
            ms(self.echo.p99),
            ms(self.echo.max),
            self.echo.count,
            busy(0.0),
            busy(0.5),
            busy(1.0),
            self.busy.len(),
            self.busy_runs
        )
    }

    fn result_line(&self) -> String {
        let us = |d: Duration| d.as_micros();
        let busy_ms = |q| self.busy_at(q).map_or(0, |d| d.as_millis());
        format!(
            "result spinners={} echo_count={} echo_p50_us={} echo_p99_us={} echo_max_us={} busy_ok={} busy_runs={} busy_min_ms={} busy_median_ms={} busy_max_ms={}",
            self.spinners,
            self.echo.count,
            us(self.echo.p50),
            us(self.echo.p99),
            us(self.echo.max),
            self.busy.len(),
            self.busy_runs,
            busy_ms(0.0),
            busy_ms(0.5),
            busy_ms(1.0)
        )
    }
}

async fn row(
    args: &Args,
    victim: &Path,
    hostile: &Path,
    spinners: usize,
    work: u64,
) -> anyhow::Result<Row> {
    let host = Host::start(args, &[victim, hostile])?;
    // Start the spinners and wait until every one of them runs.
    let spin_url = host.url("/spin")?.to_owned();
    let mut hostile_clients = Vec::with_capacity(spinners);
    for _ in 0..spinners {
        let mut ws = connect(&spin_url).await?;
        ws.send(Message::text("go")).await?;
        hostile_clients.push(ws);
    }
    let deadline = Instant::now() + STEP_TIMEOUT;
    while host.spinning.load(Ordering::Relaxed) < spinners {
        if Instant::now() > deadline {
            bail!(
                "only {} of {spinners} executions started spinning",
                host.spinning.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let echo = echo_latency(host.url("/echo")?, args.size, args.duration).await?;
    let busy_url = host.url("/busy")?.to_owned();
    let mut busy = Vec::new();
    for _ in 0..args.busy_runs {
        if let Some(took) = busy_run(&busy_url, work).await? {
            busy.push(took);
        }
    }
    drop(hostile_clients);
    let _ = std::io::stdout().flush();
    Ok(Row {
        spinners,
        echo,
        busy,
        busy_runs: args.busy_runs,
    })
}

/// Ping-pong over one connection for `seconds`: the round trips.
async fn echo_latency(url: &str, size: usize, seconds: f64) -> anyhow::Result<Summary> {
    let mut ws = connect(url).await?;
    let payload = "x".repeat(size);
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut samples = Vec::new();
    while Instant::now() < end {
        let sent = Instant::now();
        ws.send(Message::text(payload.clone())).await?;
        match next_data(&mut ws).await? {
            Some(Message::Text(text)) if text.len() == size => {}
            other => bail!("unexpected echo: {other:?}"),
        }
        samples.push(sent.elapsed().as_nanos() as u64);
    }
    let _ = ws.close(None).await;
    Ok(Summary::from_nanos(&mut samples))
}
