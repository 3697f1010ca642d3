//! The test harness: guest programs built by `build.rs`, an in-process
//! server on port 0, a real WebSocket client, and captured logs.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use wsflow::StatsSnapshot;
use wsflow::loader::{self, LoadOptions};
use wsflow::manifest::Environment;
use wsflow::server::{Endpoint, Server, StatsHandle};

/// Paths of the guest test programs, compiled to components by `build.rs`.
pub mod programs {
    include!(concat!(env!("OUT_DIR"), "/programs.rs"));
}

/// How long a test waits for anything before it fails.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// Where the tests keep compiled components: each test server has an
/// engine of its own, as `wsflow up` does, and the cache spares them all but
/// the first compilation of each component.
fn cache_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("OUT_DIR")).join("component-cache")
}

/// A manifest for app `name`: one flow served at `path` on port 0, with
/// extra `[limits]` lines.
pub fn app_manifest(name: &str, component: &str, path: &str, mode: &str, limits: &str) -> String {
    manifest(
        name,
        limits,
        component,
        &format!("path = \"{path}\"\nmode = \"{mode}\""),
    )
}

/// A manifest for one flow served by one handler on port 0; `handler` holds
/// the handler's settings other than `flow`.
pub fn single_handler_manifest(component: &str, handler: &str) -> String {
    manifest("test", "", component, handler)
}

fn manifest(name: &str, limits: &str, component: &str, handler: &str) -> String {
    format!(
        r#"
[app]
name = "{name}"

[limits]
{limits}

[flows.main]
component = "{component}"

[[triggers]]
port = 0

[[triggers.handlers]]
flow = "main"
{handler}
"#
    )
}

/// A wsflow server running in this process.
pub struct TestServer {
    endpoints: Vec<Endpoint>,
    stats: StatsHandle,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestServer {
    /// Load `manifest` (TOML text) and serve it. Panics on any error.
    pub async fn start(manifest: &str) -> Self {
        Self::try_start(manifest)
            .await
            .expect("starting the test server")
    }

    pub async fn try_start(manifest: &str) -> anyhow::Result<Self> {
        Self::try_start_apps(&[manifest]).await
    }

    /// Serve several apps (manifest texts) in one host, as
    /// `wsflow up app0.toml app1.toml ...` does.
    pub async fn start_apps(manifests: &[&str]) -> Self {
        Self::try_start_apps(manifests)
            .await
            .expect("starting the test server")
    }

    pub async fn try_start_apps(manifests: &[&str]) -> anyhow::Result<Self> {
        init_logs();
        let dir = tempfile::tempdir()?;
        let mut paths = Vec::new();
        for (i, manifest) in manifests.iter().enumerate() {
            let path = dir.path().join(format!("app{i}.toml"));
            std::fs::write(&path, manifest)?;
            paths.push(path);
        }
        let options = LoadOptions {
            build: false,
            cache_dir: Some(cache_dir()),
            env: Environment::default(),
        };
        let apps = tokio::task::spawn_blocking(move || loader::load(&paths, &options)).await??;
        let server = Server::bind(apps).await?;
        let stats = server.stats();
        let endpoints = server.endpoints().to_vec();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Ok(Self {
            endpoints,
            stats,
            shutdown,
            task: Some(task),
            _dir: dir,
        })
    }

    /// The counters of app `name`.
    pub fn app_stats(&self, name: &str) -> StatsSnapshot {
        self.stats
            .snapshot()
            .into_iter()
            .find(|(app, _)| app == name)
            .map(|(_, stats)| stats)
            .unwrap_or_else(|| panic!("no app named {name}"))
    }

    /// `ws://ADDR{path}` on the listener of app `app`.
    pub fn app_url(&self, app: &str, path: &str) -> String {
        let endpoint = self
            .endpoints
            .iter()
            .find(|endpoint| endpoint.app == app)
            .unwrap_or_else(|| panic!("no app named {app}"));
        format!("ws://{}{path}", endpoint.addr)
    }

    /// `ws://ADDR{path}` on the first trigger's listener.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.endpoints[0].addr)
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Shut down as on SIGTERM and wait until the server has stopped, which
    /// includes waiting for every client to answer its close frame (up to
    /// the server's close timeout). Dropping a `TestServer` starts the same
    /// shutdown without waiting.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().expect("running");
        tokio::time::timeout(TIMEOUT, task)
            .await
            .expect("server did not stop in time")
            .expect("server task panicked");
    }

    /// Start a shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }
}

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connect a WebSocket client, panicking on failure.
pub async fn connect(url: &str) -> Client {
    let (client, _response) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|error| panic!("connecting to {url}: {error}"));
    client
}

/// An upgrade the server refused before the upgrade: its status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

/// A client request for `url` with extra headers.
pub fn request(url: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = url.into_client_request().expect("a valid ws:// URL");
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    request
}

/// Connect with `request`; a refused upgrade comes back as [`Refused`].
pub async fn try_connect(request: http::Request<()>) -> Result<Client, Refused> {
    use tokio_tungstenite::tungstenite::Error;
    match tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect timed out")
    {
        Ok((client, _)) => Ok(client),
        Err(Error::Http(response)) => Err(Refused {
            status: response.status().as_u16(),
            body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned(),
        }),
        Err(other) => panic!("connecting failed without an HTTP response: {other}"),
    }
}

/// The next data or close message, skipping pings and pongs.
pub async fn next_message(client: &mut Client) -> Message {
    loop {
        let message = tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("no message within the timeout")
            .expect("the connection ended without a close frame")
            .expect("reading from the server failed");
        match message {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return other,
        }
    }
}

/// The next message, which must be text.
pub async fn next_text(client: &mut Client) -> String {
    match next_message(client).await {
        Message::Text(text) => text.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Read until the server's close frame and return it.
pub async fn next_close(client: &mut Client) -> CloseFrame {
    loop {
        match next_message(client).await {
            Message::Close(Some(frame)) => return frame,
            Message::Close(None) => panic!("close frame without a status code"),
            _ => continue,
        }
    }
}

pub async fn send_text(client: &mut Client, text: &str) {
    client
        .send(Message::text(text))
        .await
        .expect("sending a text message");
}

/// The next message, which must be JSON text.
pub async fn next_json(client: &mut Client) -> serde_json::Value {
    let text = next_text(client).await;
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

/// The client's local address, as the server sees its peer.
pub fn local_addr(client: &Client) -> std::net::SocketAddr {
    match client.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.local_addr().unwrap(),
        _ => unreachable!("plain ws:// connection"),
    }
}

pub mod pki;

/// Everything the host logged in this process, for tests that check what a
/// flow or the host reported.
fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(Default::default)
}

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        log_buffer().lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,wsflow=debug")
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

/// The lines logged so far.
pub fn log_lines() -> Vec<String> {
    String::from_utf8_lossy(&log_buffer().lock().unwrap())
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Wait until app `app` logged a line containing `needle`.
pub async fn wait_for_app_log(app: &str, needle: &str) -> String {
    wait_for_log_line(&[needle, &format!("app=\"{app}\"")]).await
}

/// Wait until the log contains `needle`; panics after the timeout.
pub async fn wait_for_log(needle: &str) -> String {
    wait_for_log_line(&[needle]).await
}

/// Wait until one log line contains every needle.
async fn wait_for_log_line(needles: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let logs = String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned();
        if let Some(line) = logs
            .lines()
            .find(|line| needles.iter().all(|needle| line.contains(needle)))
        {
            return line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line containing all of {needles:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
