//! Command-line interface: `wsflow up` (alone, or `--cluster` with other
//! hosts), `check`, `build` and `new`.

mod build;
mod new;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::Resolver;
use crate::admin::{self, AdminState};
use crate::cluster::{Cluster, ClusterOptions};
use crate::loader::{self, LoadOptions};
use crate::manifest::{self, Environment};
use crate::reload::Reloader;
use crate::scaffold;
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
        /// Serve the admin endpoint on this address, e.g. 127.0.0.1:9090:
        /// `GET /stats` (every app's counters, as JSON), `/metrics`
        /// (Prometheus text format), `/healthz` and `/readyz`.
        #[arg(long, value_name = "ADDR")]
        admin: Option<std::net::SocketAddr>,
        /// Serve the server API on this address, e.g. 127.0.0.1:9091: backends
        /// publish to an app's groups and send to its connections with the
        /// bearer token of the app's `[api]` section.
        #[arg(long, value_name = "ADDR")]
        api: Option<std::net::SocketAddr>,
        /// Where compiled components are cached [default: $WSFLOW_CACHE_DIR,
        /// else $XDG_CACHE_HOME/wsflow, else ~/.cache/wsflow].
        #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
        cache_dir: Option<PathBuf>,
        /// Compile every component at startup; read and write no cache.
        #[arg(long)]
        no_cache: bool,
        /// Where apps keep their key-value stores, one SQLite database per
        /// app (APP.sqlite3) [default: $XDG_DATA_HOME/wsflow, else
        /// ~/.local/share/wsflow].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Reload when a manifest, a component or a flow's build sources
        /// change (SIGHUP always reloads): open connections stay open, new
        /// executions run the new version.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Validate manifests without serving them: each on its own, and
    /// together as `wsflow up` would run them (distinct names and ports).
    Check {
        /// App manifests, or directories of them.
        #[arg(required = true)]
        manifests: Vec<PathBuf>,
    },
    /// Build the flows whose component is missing or stale, and compile
    /// every component into the cache `wsflow up` reads, with a line per
    /// flow.
    Build {
        /// App manifests, or directories of them.
        #[arg(default_value = "wsflow.toml")]
        manifests: Vec<PathBuf>,
        /// Where compiled components are cached [default: as for `wsflow up`].
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },
    /// Create a flow crate and its manifest in a new directory, ready for
    /// `cd NAME && wsflow up`.
    New {
        /// The directory to create; its last component names the crate,
        /// the app and the flow (e.g. `my-flow`).
        name: PathBuf,
        /// How the host runs the flow.
        #[arg(long, value_enum, default_value_t = scaffold::Mode::Data)]
        mode: scaffold::Mode,
        /// What the flow's messages are.
        #[arg(long, value_enum, default_value_t = scaffold::Format::String)]
        format: scaffold::Format,
        /// Depend on the wsflow-sdk crate in this directory [default: the
        /// SDK this wsflow was built from].
        #[arg(long, value_name = "PATH", conflicts_with = "sdk_git")]
        sdk: Option<PathBuf>,
        /// Depend on wsflow-sdk from this git repository instead.
        #[arg(long, value_name = "URL")]
        sdk_git: Option<String>,
    },
}

/// Serving the apps together with other hosts, through NATS.
#[derive(Debug, clap::Args)]
struct ClusterArgs {
    /// Serve the apps as one with every other host that uses these NATS
    /// servers: groups, sends to a connection by id, member counts and
    /// listings span the hosts. One URL, or several separated by commas:
    /// nats://HOST:PORT, tls://HOST:PORT (user:password@ or token@ before
    /// HOST when the servers want them).
    #[arg(
        long,
        value_name = "URLS",
        env = "WSFLOW_CLUSTER",
        value_delimiter = ','
    )]
    cluster: Vec<String>,
    /// A NATS credentials file (.creds) to connect to the cluster with.
    #[arg(
        long,
        value_name = "FILE",
        env = "WSFLOW_CLUSTER_CREDS",
        requires = "cluster"
    )]
    cluster_creds: Option<PathBuf>,
    /// PEM CA certificates that sign the NATS servers' TLS certificates.
    #[arg(
        long,
        value_name = "FILE",
        env = "WSFLOW_CLUSTER_CA",
        requires = "cluster"
    )]
    cluster_ca: Option<PathBuf>,
    /// A PEM client certificate for NATS servers that verify clients.
    #[arg(
        long,
        value_name = "FILE",
        env = "WSFLOW_CLUSTER_CERT",
        requires_all = ["cluster", "cluster_key"]
    )]
    cluster_cert: Option<PathBuf>,
    /// The PEM private key of --cluster-cert.
    #[arg(
        long,
        value_name = "FILE",
        env = "WSFLOW_CLUSTER_KEY",
        requires_all = ["cluster", "cluster_cert"]
    )]
    cluster_key: Option<PathBuf>,
}

impl ClusterArgs {
    /// The cluster's settings, if the host is to join one.
    fn options(self) -> Option<ClusterOptions> {
        if self.cluster.is_empty() {
            return None;
        }
        Some(ClusterOptions {
            servers: self.cluster,
            credentials: self.cluster_creds,
            tls_ca: self.cluster_ca,
            tls_cert: self.cluster_cert,
            tls_key: self.cluster_key,
        })
    }
}

impl Cli {
    /// Run the command the user gave.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Up {
                manifests,
                admin,
                api,
                cache_dir,
                no_cache,
                data_dir,
                watch,
                cluster,
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
                    cluster: None,
                    resolver: Resolver::default(),
                    data_dir: Some(
                        data_dir
                            .or_else(LoadOptions::default_data_dir)
                            .context("--data-dir: HOME is not set; give a directory")?,
                    ),
                };
                let endpoints = Endpoints { admin, api };
                up(manifests, endpoints, options, watch, cluster.options()).await
            }
            Command::Check { manifests } => check(&manifests, &Environment::from_process()),
            Command::Build {
                manifests,
                cache_dir,
            } => {
                let cache_dir = cache_dir.or_else(LoadOptions::default_cache_dir);
                let env = Environment::from_process();
                tokio::task::spawn_blocking(move || build::run(&manifests, cache_dir, &env))
                    .await
                    .context("building flows")?
            }
            Command::New {
                name,
                mode,
                format,
                sdk,
                sdk_git,
            } => {
                let sdk = match (sdk, sdk_git) {
                    (_, Some(url)) => scaffold::Sdk::Git(url),
                    (Some(path), None) => scaffold::Sdk::Path(path),
                    (None, None) => scaffold::Sdk::built_with(),
                };
                new::run(&scaffold::NewFlow {
                    dir: name,
                    mode,
                    format,
                    sdk,
                })
            }
        }
    }
}

/// The host's own HTTP endpoints `up` serves, if asked.
struct Endpoints {
    admin: Option<std::net::SocketAddr>,
    api: Option<std::net::SocketAddr>,
}

async fn up(
    manifests: Vec<PathBuf>,
    endpoints: Endpoints,
    mut options: LoadOptions,
    watch: bool,
    cluster: Option<ClusterOptions>,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    // Up before the apps load, so health checks answer during a build.
    let admin_state = Arc::new(AdminState::new(shutdown.clone()));
    let admin_stop = CancellationToken::new();
    let admin = match endpoints.admin {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--admin: cannot listen on {addr}"))?;
            let url = format!("http://{}/stats", listener.local_addr()?);
            let serve = admin::serve(listener, Arc::clone(&admin_state), admin_stop.clone());
            tokio::spawn(serve);
            Some(url)
        }
        None => None,
    };
    // Stops the admin endpoint however `up` ends.
    let _admin_stop = admin_stop.drop_guard();
    // Bound before the apps load, so a taken address fails at once.
    let api = match endpoints.api {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--api: cannot listen on {addr}"))?,
        ),
        None => None,
    };

    let cluster = match cluster {
        Some(cluster) => Some(Cluster::join(&cluster).await?),
        None => None,
    };
    options.cluster.clone_from(&cluster);
    match (&cluster, &options.data_dir) {
        (Some(_), _) => tracing::info!("key-value stores in the cluster's JetStream"),
        (None, Some(dir)) => tracing::info!("key-value stores in {}", dir.display()),
        (None, None) => {}
    }
    let apps = tokio::task::spawn_blocking(move || loader::load(&manifests, &options))
        .await
        .context("loading apps")??;

    let server = Server::bind(apps).await?;
    admin_state.serving(server.stats());
    // The API stops taking requests when shutdown begins.
    let api = match api {
        Some(listener) => {
            let url = format!("http://{}/v1/apps/", listener.local_addr()?);
            let stats = server.stats();
            let stop = shutdown.child_token();
            tokio::spawn(async move { crate::server::serve_api(listener, &stats, stop).await });
            Some(url)
        }
        None => None,
    };
    // Handlers are installed before the ready line, so a SIGTERM sent as
    // soon as it appears shuts down gracefully instead of killing us.
    let signals = ShutdownSignals::install().context("installing signal handlers")?;
    let reloader = server.reloader();
    // `--watch` takes its first look before the ready line, so a change
    // made as soon as the line appears is seen.
    let watched = if watch {
        let reloader = reloader.clone();
        Some(tokio::task::spawn_blocking(move || reloader.fingerprint()).await?)
    } else {
        None
    };
    let mut stdout = std::io::stdout().lock();
    for endpoint in server.endpoints() {
        writeln!(stdout, "listening on {}", endpoint.url())?;
    }
    if let Some(url) = admin {
        writeln!(stdout, "stats on {url}")?;
    }
    if let Some(url) = api {
        writeln!(stdout, "server API on {url}")?;
    }
    stdout.flush()?;
    drop(stdout);

    tokio::spawn(signals.handle(reloader.clone(), shutdown.clone()));
    if let Some(seen) = watched {
        tokio::spawn(watch_files(reloader, seen, shutdown.clone()));
    }
    server.run(shutdown).await;
    if let Some(cluster) = cluster {
        cluster.leave().await;
    }
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

/// SIGINT (Ctrl-C) and SIGTERM, which shut down, and SIGHUP, which
/// reloads, with their handlers installed.
struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Reload on every SIGHUP; cancel `shutdown` on the first SIGINT or
    /// SIGTERM.
    async fn handle(mut self, reloader: Reloader, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.interrupt.recv() => break,
                _ = self.terminate.recv() => break,
                _ = self.hangup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    reloader.reload_and_log().await;
                }
            }
        }
        tracing::info!("shutting down");
        shutdown.cancel();
    }
}

/// How often `--watch` looks at the files.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Reload whenever the files of the apps change from `seen` (`--watch`). A
/// change is acted on once the files have stopped changing for one
/// interval, so an editor's or a build's several writes make one reload.
async fn watch_files(
    reloader: Reloader,
    mut seen: Vec<(PathBuf, Option<std::time::SystemTime>)>,
    shutdown: CancellationToken,
) {
    let fingerprint = |reloader: &Reloader| {
        let reloader = reloader.clone();
        tokio::task::spawn_blocking(move || reloader.fingerprint())
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(WATCH_INTERVAL) => {}
            () = shutdown.cancelled() => return,
        }
        let Ok(mut now) = fingerprint(&reloader).await else {
            return;
        };
        if now == seen {
            continue;
        }
        // Settle: wait until two looks agree.
        loop {
            tokio::select! {
                () = tokio::time::sleep(WATCH_INTERVAL) => {}
                () = shutdown.cancelled() => return,
            }
            let Ok(again) = fingerprint(&reloader).await else {
                return;
            };
            if again == now {
                break;
            }
            now = again;
        }
        tracing::info!("files changed: reloading");
        reloader.reload_and_log().await;
        let Ok(after) = fingerprint(&reloader).await else {
            return;
        };
        seen = after;
    }
}
