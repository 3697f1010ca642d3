//! `wsflow-startup`: how long a server takes from being started to printing
//! its `listening on` line. Runs the command several times (after discarded
//! warm-up runs, which fill the page cache), kills it each time, and reports
//! the minimum, median and maximum.
//!
//! `wsflow-startup --runs 7 -- target/release/wsflow up app.toml`

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;

/// Time from spawning a server to its `listening on` line.
#[derive(Debug, Parser)]
#[command(name = "wsflow-startup")]
struct Args {
    /// Measured runs.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Unmeasured runs first.
    #[arg(long, default_value_t = 1)]
    warmup_runs: usize,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// The server command and its arguments.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    for _ in 0..args.warmup_runs {
        time_to_listening(&args)?;
    }
    let mut times = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        times.push(time_to_listening(&args)?);
    }
    times.sort_unstable();
    let ms = |duration: &Duration| duration.as_secs_f64() * 1e3;
    let (min, median, max) = (
        ms(&times[0]),
        ms(&times[(times.len() - 1) / 2]),
        ms(&times[times.len() - 1]),
    );
    let all: Vec<String> = times.iter().map(|t| format!("{:.1}", ms(t))).collect();
    println!(
        "start to `listening on` over {} run(s): min {min:.1} ms, median {median:.1} ms, \
         max {max:.1} ms ({})",
        times.len(),
        all.join(", ")
    );
    println!(
        "result runs={} min_ms={min:.1} median_ms={median:.1} max_ms={max:.1}",
        times.len()
    );
    Ok(())
}

fn time_to_listening(args: &Args) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut child = Command::new(&args.command[0])
        .args(&args.command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.command[0]))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("listening on") {
                let _ = tx.send(Instant::now());
                break;
            }
        }
    });
    let listening = rx.recv_timeout(Duration::from_secs(args.timeout));
    let _ = child.kill();
    let _ = child.wait();
    match listening {
        Ok(at) => Ok(at - started),
        Err(_) => bail!("no `listening on` line from {:?}", args.command),
    }
}
