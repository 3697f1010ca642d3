//! Command-line interface: `wsflow up` and `wsflow check`.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::loader::{self, LoadOptions};
use crate::manifest::{self, Environment};
use crate::server::Server;

/// Serve WebSocket apps whose logic runs as sandboxed WebAssembly flows.
#[derive(Debug, Parser)]
#[command(name = "wsflow", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build stale flows, then serve the apps until Ctrl-C or SIGTERM.
    Up {
        /// App manifests, or directories of them (every *.toml file). All
        /// apps share this host; none is served unless all load.
        #[arg(default_value = "wsflow.toml")]
        manifests: Vec<PathBuf>,
        /// Serve `GET /stats` (every app's counters, as JSON) on this
        /// address, e.g. 127.0.0.1:9090.
        #[arg(long, value_name = "ADDR")]
        admin: Option<std::net::SocketAddr>,
        /// Where compiled components are cached [default: $WSFLOW_CACHE_DIR,
        /// else $XDG_CACHE_HOME/wsflow, else ~/.cache/wsflow].
        #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
        cache_dir: Option<PathBuf>,
        /// Compile every component at startup; read and write no cache.
        #[arg(long)]
        no_cache: bool,
    },
    /// Validate manifests without serving them: each on its own, and
    /// together as `wsflow up` would run them (distinct names and ports).
    Check {
        /// App manifests, or directories of them.
        #[arg(required = true)]
        manifests: Vec<PathBuf>,
    },
}

impl Cli {
    /// Run the command the user gave.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Up {
                manifests,
                admin,
                cache_dir,
                no_cache,
            } => {
                let cache_dir = if no_cache {
                    None
                } else {
                    cache_dir.or_else(LoadOptions::default_cache_dir)
                };
                let options = LoadOptions {
                    build: true,
                    cache_dir,
                    env: Environment::from_process(),
                };
                up(manifests, admin, options).await
            }
            Command::Check { manifests } => check(&manifests, &Environment::from_process()),
        }
    }
}

async fn up(
    manifests: Vec<PathBuf>,
    admin: Option<std::net::SocketAddr>,
    options: LoadOptions,
) -> anyhow::Result<()> {
    let apps = tokio::task::spawn_blocking(move || loader::load(&manifests, &options))
        .await
        .context("loading apps")??;

    let server = Server::bind(apps).await?;
    let shutdown = CancellationToken::new();
    let admin = match admin {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--admin: cannot listen on {addr}"))?;
            let url = format!("http://{}/stats", listener.local_addr()?);
            tokio::spawn(crate::admin::serve(
                listener,
                server.stats(),
                shutdown.clone(),
            ));
            Some(url)
        }
        None => None,
    };
    // Handlers are installed before the ready line, so a SIGTERM sent as
    // soon as it appears shuts down gracefully instead of killing us.
    let signals = ShutdownSignals::install().context("installing signal handlers")?;
    let mut stdout = std::io::stdout().lock();
    for endpoint in server.endpoints() {
        writeln!(stdout, "listening on {}", endpoint.url())?;
    }
    if let Some(url) = admin {
        writeln!(stdout, "stats on {url}")?;
    }
    stdout.flush()?;
    drop(stdout);

    tokio::spawn(signals.cancel_on_signal(shutdown.clone()));
    server.run(shutdown).await;
    tracing::info!("stopped");
    Ok(())
}

fn check(manifests: &[PathBuf], env: &Environment) -> anyhow::Result<()> {
    for app in manifest::load_all(manifests, env)? {
        let (flows, triggers, handlers) = app.counts();
        println!(
            "{}: app `{}` is valid ({flows} flow(s), {triggers} trigger(s), {handlers} handler(s))",
            app.manifest().display(),
            app.name(),
        );
    }
    Ok(())
}

/// SIGINT (Ctrl-C) and SIGTERM, with their handlers installed.
struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Cancel `shutdown` on the first of the signals.
    async fn cancel_on_signal(mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        tracing::info!("shutting down");
        shutdown.cancel();
    }
}
