//! The host: binds every trigger of every app, serves until shutdown, then
//! closes connections with 1001 and waits for running flows.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{AppInfo, StatsSnapshot};
use crate::loader::LoadedApps;
use crate::reload::{LiveApp, Reloader};
use crate::sockets::HostSockets;
use crate::trigger::Listening;

/// How long shutdown waits for connections to finish their closing
/// handshake and for running flows to return.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// One path a client can connect to.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The app that serves it.
    pub app: String,
    /// `ws` or `wss`.
    pub scheme: &'static str,
    /// The address the listener is bound to.
    pub addr: SocketAddr,
    /// The handler's path pattern, e.g. `/rooms/{room}`.
    pub path: String,
}

impl Endpoint {
    /// `ws://ADDR/PATH` (or `wss://`).
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.addr, self.path)
    }
}

/// Serve the server API for the apps of `stats` that set `[api] token`,
/// on `listener`, until `stop` (see the `api` module for what it serves).
pub async fn serve_api(listener: TcpListener, stats: &StatsHandle, stop: CancellationToken) {
    let state = Arc::new(crate::api::ApiState::default());
    state.serving(stats);
    crate::api::serve(listener, state, stop).await;
}

/// Apps with their listeners bound, ready to serve.
pub struct Server {
    apps: Vec<Arc<AppInfo>>,
    listeners: Vec<(Arc<Listening>, TcpListener)>,
    endpoints: Vec<Endpoint>,
    reloader: Reloader,
}

/// A handle to read the counters of a server's apps while it runs.
#[derive(Clone, Default)]
pub struct StatsHandle {
    apps: Vec<Arc<AppInfo>>,
}

impl StatsHandle {
    /// The apps, for the admin endpoint's metrics.
    pub(crate) fn apps(&self) -> &[Arc<AppInfo>] {
        &self.apps
    }

    /// Each app's name and counters.
    pub fn snapshot(&self) -> Vec<(String, StatsSnapshot)> {
        self.apps
            .iter()
            .map(|app| (app.name.to_string(), app.snapshot()))
            .collect()
    }

    /// The counters as JSON: `{"apps": {"NAME": {...}}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let apps: serde_json::Map<String, serde_json::Value> = self
            .snapshot()
            .into_iter()
            .map(|(name, stats)| (name, serde_json::to_value(stats).expect("plain counters")))
            .collect();
        serde_json::json!({ "apps": apps })
    }
}

/// Clients a listener's backlog holds while the host accepts none (a
/// listener stops accepting while its handshake slots are taken): room for
/// a burst, where the usual 128 would have the kernel drop connection
/// attempts (clients then retry after a second or more). The kernel may
/// cap it (`net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 1024;

/// A listener on `addr` with [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted host can bind at once.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Server {
    /// Bind a listener for every trigger. Nothing is served until
    /// [`Server::run`]; if any bind fails, none is kept.
    pub async fn bind(loaded: LoadedApps) -> anyhow::Result<Self> {
        let mut listeners = Vec::new();
        let mut endpoints = Vec::new();
        let mut infos = Vec::new();
        let mut live = Vec::new();
        for mut app in loaded.apps {
            infos.push(Arc::clone(&app.info));
            let mut app_listeners = Vec::new();
            for (wanted, trigger) in std::mem::take(&mut app.triggers) {
                let listener = listen(wanted).with_context(|| {
                    format!("app `{}`: cannot listen on {wanted}", app.info.name)
                })?;
                let addr = listener.local_addr()?;
                for path in trigger.paths() {
                    endpoints.push(Endpoint {
                        app: app.info.name.to_string(),
                        scheme: trigger.scheme(),
                        addr,
                        path,
                    });
                }
                let listening = Arc::new(Listening::new(trigger));
                app_listeners.push((wanted, Arc::clone(&listening)));
                listeners.push((listening, listener));
            }
            live.push(LiveApp::new(&app, app_listeners));
        }
        let reloader = Reloader::new(loaded.paths, loaded.options, loaded.runtime, live);
        Ok(Self {
            apps: infos,
            listeners,
            endpoints,
            reloader,
        })
    }

    /// A handle that reloads the apps from their manifests while the server
    /// runs.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// A handle to the apps' counters.
    pub fn stats(&self) -> StatsHandle {
        StatsHandle {
            apps: self.apps.clone(),
        }
    }

    /// Every path served, with its listener's address.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Serve until `shutdown` is cancelled, then close every connection with
    /// 1001 and wait (up to a deadline) for them to finish.
    pub async fn run(self, shutdown: CancellationToken) {
        let stats = self.stats();
        let tracker = TaskTracker::new();
        let sockets = Arc::new(HostSockets::for_this_process());
        tracing::info!("{}", sockets.describe());
        let mut accept_loops = Vec::new();
        for (trigger, listener) in self.listeners {
            accept_loops.push(tokio::spawn(trigger.serve(
                listener,
                Arc::clone(&sockets),
                shutdown.clone(),
                tracker.clone(),
            )));
        }
        shutdown.cancelled().await;
        for accept_loop in accept_loops {
            let _ = accept_loop.await;
        }
        tracker.close();
        let open = tracker.len();
        if open > 0 {
            tracing::info!("closing {open} connection(s)");
        }
        if tokio::time::timeout(SHUTDOWN_DEADLINE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "{} connection(s) still open after {SHUTDOWN_DEADLINE:?}; exiting anyway",
                tracker.len()
            );
        }
        for (app, totals) in stats.snapshot() {
            tracing::info!(app, "app totals: {}", totals.summary());
        }
    }
}
