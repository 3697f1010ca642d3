//! Shared pieces of the benchmark binaries (`wsflow-load`, `wsflow-fanout`,
//! the `native-*` baselines, `wsflow-startup`): the WebSocket settings, the
//! baselines' server loop, latency percentiles and the `/proc` readings.
//! See `docs/BENCHMARKS.md` for what is measured and how.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The buffer sizes of wsflow's trigger (`host/src/trigger/mod.rs`), so the
/// native baseline and the load generator pay the same per connection.
pub const READ_BUFFER: usize = 4 * 1024;
pub const WRITE_BUFFER: usize = 4 * 1024;
/// wsflow's default `max_message_size` (and frame size): 1 MiB.
pub const MAX_MESSAGE: usize = 1 << 20;

/// The WebSocket configuration wsflow's trigger uses, for both ends here.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// Run a native baseline server: the runtime `wsflow up` has (multi-threaded,
/// one worker per usable CPU), a listener on `addr` (port 0 picks a free
/// port), `listening on ws://ADDR{path}` on stdout once bound, as `wsflow
/// up` prints it, and a task running `connection` for every accepted
/// socket.
pub fn serve_native<F, Fut>(addr: SocketAddr, path: &str, connection: F) -> anyhow::Result<()>
where
    F: FnMut(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    native_runtime()?.block_on(accept_connections(addr, path, connection))
}

/// The runtime of the native baselines: the one `wsflow up` has
/// (multi-threaded, one worker per usable CPU).
pub fn native_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The server loop of [`serve_native`], for a baseline that sets up more
/// on the runtime first: listen on `addr`, print `listening on
/// ws://ADDR{path}`, run `connection` for every accepted socket.
pub async fn accept_connections<F, Fut>(
    addr: SocketAddr,
    path: &str,
    mut connection: F,
) -> anyhow::Result<()>
where
    F: FnMut(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on ws://{}{path}", listener.local_addr()?)?;
    stdout.flush()?;
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream));
            }
            Err(error) => {
                // Typically EMFILE: back off instead of spinning.
                eprintln!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The outputs of `tasks`, which open one connection each; if any failed,
/// the first error, saying how many of them (`what`, e.g. "subscriber(s)")
/// failed.
pub async fn gather<T: 'static>(
    mut tasks: JoinSet<anyhow::Result<T>>,
    what: &str,
) -> anyhow::Result<Vec<T>> {
    let total = tasks.len();
    let mut done = Vec::with_capacity(total);
    let mut first_error = None;
    let mut failed = 0usize;
    while let Some(joined) = tasks.join_next().await {
        match joined.with_context(|| format!("a task panicked while opening the {what}"))? {
            Ok(value) => done.push(value),
            Err(error) => {
                failed += 1;
                first_error.get_or_insert(error);
            }
        }
    }
    match first_error {
        Some(error) => Err(error.context(format!("{failed} of {total} {what} failed"))),
        None => Ok(done),
    }
}

/// Percentiles of a set of round-trip times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub count: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

impl Summary {
    /// Summarise samples given in nanoseconds (sorted in place).
    pub fn from_nanos(samples: &mut [u64]) -> Self {
        samples.sort_unstable();
        let at = |q: f64| Duration::from_nanos(percentile(samples, q));
        Self {
            count: samples.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: Duration::from_nanos(samples.last().copied().unwrap_or(0)),
        }
    }
}

/// Nearest-rank percentile of sorted samples; 0 when there are none.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Microseconds with one decimal, for reports.
pub fn micros(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1e6)
}

/// Linux reports process CPU times in clock ticks of 1/100 s (`USER_HZ`,
/// fixed at 100 in the kernel ABI on the architectures we run on).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU time of a process (`"self"` or a PID) from
/// `/proc/PID/stat`, in seconds. Children's time is not included.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_seconds(&stat)
}

fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses: the
    // fields that follow start after its last `)`. utime and stime are
    // fields 14 and 15, so the 12th and 13th after the name.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// Resident set size of a process (`VmRSS` in `/proc/PID/status`), in KiB.
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss_kib(&status)
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Machine-wide CPU time from the first line of `/proc/stat`, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MachineCpu {
    /// All time of all CPUs, idle included.
    pub total: f64,
    /// Idle and waiting for I/O.
    pub idle: f64,
    /// Interrupts and soft interrupts (on loopback, much of TCP's work),
    /// which Linux charges to no process.
    pub interrupts: f64,
}

impl MachineCpu {
    pub fn read() -> Option<Self> {
        parse_machine_cpu(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The time between two readings.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            total: self.total - earlier.total,
            idle: self.idle - earlier.idle,
            interrupts: self.interrupts - earlier.interrupts,
        }
    }
}

fn parse_machine_cpu(stat: &str) -> Option<MachineCpu> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal (guest time is
    // already part of user).
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    let seconds = |range: std::ops::Range<usize>| {
        ticks.get(range).map_or(0, |t| t.iter().sum::<u64>()) as f64 / TICKS_PER_SECOND
    };
    Some(MachineCpu {
        total: seconds(0..ticks.len()),
        idle: seconds(3..5),
        interrupts: seconds(5..7),
    })
}

/// CPU times read at one moment: this process's, the server's (when its
/// PID is known) and the machine's.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSnapshot {
    client: f64,
    server: Option<f64>,
    machine: MachineCpu,
}

impl CpuSnapshot {
    /// `servers`: the processes that serve the load (several hosts of a
    /// cluster and their broker), their CPU times summed; none if unknown.
    pub fn take(servers: &[u32]) -> Self {
        let server = servers
            .iter()
            .map(|pid| cpu_seconds(&pid.to_string()))
            .sum::<Option<f64>>();
        Self {
            client: cpu_seconds("self").unwrap_or(0.0),
            server: server.filter(|_| !servers.is_empty()),
            machine: MachineCpu::read().unwrap_or_default(),
        }
    }

    /// CPU use between `earlier` and this reading, `seconds` apart.
    pub fn usage_since(&self, earlier: &Self, seconds: f64) -> Usage {
        let machine = self.machine.since(earlier.machine);
        let client = (self.client - earlier.client) / seconds;
        let server = earlier
            .server
            .zip(self.server)
            .map(|(from, to)| (to - from) / seconds);
        let busy = (machine.total - machine.idle) / seconds;
        let interrupts = machine.interrupts / seconds;
        Usage {
            client,
            server,
            interrupts,
            others: (busy - interrupts - client - server.unwrap_or(0.0)).max(0.0),
            idle: machine.idle / seconds,
        }
    }
}

/// CPU use over a period, in CPUs (1.0 = one CPU busy all the time).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// This process (the load generator).
    pub client: f64,
    pub server: Option<f64>,
    /// Interrupt and soft-interrupt time, machine-wide.
    pub interrupts: f64,
    /// Busy time of every other process on the machine.
    pub others: f64,
    pub idle: f64,
}

impl Usage {
    /// One line for a report.
    pub fn describe(&self) -> String {
        format!(
            "CPU over the measured period (100% = one CPU): server {}, load generator {:.0}%, \
             interrupts {:.0}%, everything else {:.0}%, idle {:.0}%",
            self.server
                .map_or("?".to_owned(), |server| format!("{:.0}%", server * 100.0)),
            self.client * 100.0,
            self.interrupts * 100.0,
            self.others * 100.0,
            self.idle * 100.0,
        )
    }

    /// `key=value` fields for a `result` line.
    pub fn fields(&self) -> String {
        let mut fields = format!(
            "client_cpu={:.2} interrupts_cpu={:.2} others_cpu={:.2} idle_cpu={:.2}",
            self.client, self.interrupts, self.others, self.idle
        );
        if let Some(server) = self.server {
            fields.push_str(&format!(" server_cpu={server:.2}"));
        }
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut samples: Vec<u64> = (1..=100).rev().collect();
        let summary = Summary::from_nanos(&mut samples);
        assert_eq!(summary.count, 100);
        assert_eq!(summary.p50, Duration::from_nanos(50));
        assert_eq!(summary.p90, Duration::from_nanos(90));
        assert_eq!(summary.p99, Duration::from_nanos(99));
        assert_eq!(summary.p999, Duration::from_nanos(100));
        assert_eq!(summary.max, Duration::from_nanos(100));
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(percentile(&[7], 0.0), 7);
    }

    #[test]
    fn parses_proc_files() {
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0";
        assert_eq!(parse_cpu_seconds(stat), Some(3.0));
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t4\n";
        assert_eq!(parse_rss_kib(status), Some(1234));
        let stat = "cpu  100 50 30 700 20 5 45 0 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let cpu = parse_machine_cpu(stat).unwrap();
        assert_eq!(cpu.total, 9.5);
        assert_eq!(cpu.idle, 7.2);
        assert_eq!(cpu.interrupts, 0.5);
        assert!(MachineCpu::read().is_some());
        assert!(cpu_seconds("self").is_some());
        assert!(rss_kib("self").is_some_and(|kib| kib > 0));
    }
}
