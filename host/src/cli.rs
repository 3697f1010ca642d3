//! Command-line interface: `wsflow up` and `wsflow check`.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::loader::{self, LoadOptions};
use crate::manifest::ManifestFile;
use crate::runtime::Runtime;
use crate::server::Server;

/// Serve WebSocket apps whose logic runs as sandboxed WebAssembly flows.
#[derive(Debug, Parser)]
#[command(name = "wsflow", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build stale flows, then serve the app until Ctrl-C or SIGTERM.
    Up {
        /// The app manifest.
        #[arg(default_value = "wsflow.toml")]
        manifest: PathBuf,
    },
    /// Validate a manifest without serving it.
    Check {
        /// The app manifest.
        manifest: PathBuf,
    },
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Up { manifest } => up(manifest).await,
            Command::Check { manifest } => check(&manifest),
        }
    }
}

async fn up(manifest: PathBuf) -> anyhow::Result<()> {
    let apps = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let runtime = Runtime::new()?;
        let file = ManifestFile::load(&manifest)?;
        let app = loader::load(&runtime, &file, LoadOptions { build: true })?;
        Ok(vec![app])
    })
    .await
    .context("loading apps")??;

    let server = Server::bind(apps).await?;
    let mut stdout = std::io::stdout().lock();
    for endpoint in server.endpoints() {
        writeln!(stdout, "listening on {}", endpoint.url())?;
    }
    stdout.flush()?;
    drop(stdout);

    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    server.run(shutdown).await;
    tracing::info!("stopped");
    Ok(())
}

fn check(manifest: &std::path::Path) -> anyhow::Result<()> {
    let file = ManifestFile::load(manifest)?;
    let spec = &file.spec;
    let handlers: usize = spec.triggers.iter().map(|t| t.handlers.len()).sum();
    println!(
        "{}: app `{}` is valid ({} flow(s), {} trigger(s), {} handler(s))",
        manifest.display(),
        spec.name,
        spec.flows.len(),
        spec.triggers.len(),
        handlers
    );
    Ok(())
}

/// Cancel `shutdown` on Ctrl-C or SIGTERM.
async fn signal_shutdown(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    shutdown.cancel();
}
