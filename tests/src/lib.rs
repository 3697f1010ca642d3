//! The test harness: guest programs built by `build.rs`, manifests built
//! from TOML values, an in-process server on port 0 that sees only its own
//! apps' logs, and a real WebSocket client.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use wsflow::cluster::{Cluster, ClusterOptions};
use wsflow::loader::{self, LoadOptions};
use wsflow::manifest::Environment;
use wsflow::reload::{ReloadReport, Reloader};
use wsflow::server::{Endpoint, Server, StatsHandle};
use wsflow::{Resolver, StatsSnapshot};

use logs::LogView;
pub use manifest::{Manifest, Trigger, merged, table};

pub mod http_server;
mod logs;
pub mod manifest;
pub mod nats;
pub mod pki;

/// Paths of the guest test programs, compiled to components by `build.rs`.
pub mod programs {
    include!(concat!(env!("OUT_DIR"), "/programs.rs"));
}

/// How long a test waits for anything before it fails.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// Where the tests keep compiled components: each test server has an
/// engine of its own, as `wsflow up` does, and the cache spares them all but
/// the first compilation of each component. A `wsflow up` process a test
/// starts can use it too (`--cache-dir`).
pub fn component_cache() -> std::path::PathBuf {
    std::path::Path::new(env!("OUT_DIR")).join("component-cache")
}

/// A wsflow server running in this process. Tests name its apps as they
/// asked for them in their [`Manifest`]s; the server knows their real,
/// process-unique names and sees only their log lines.
pub struct TestServer {
    /// (asked name, real name) of every app served.
    apps: Vec<(String, String)>,
    endpoints: Vec<Endpoint>,
    stats: StatsHandle,
    logs: LogView,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    reloader: Reloader,
    cluster: Option<Cluster>,
    /// Where the manifests are, `app0.toml`, `app1.toml`, ...
    dir: tempfile::TempDir,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestServer {
    /// Load `manifest` and serve it. Panics on any error.
    pub async fn start(manifest: &Manifest) -> Self {
        Self::start_apps(std::slice::from_ref(manifest)).await
    }

    pub async fn try_start(manifest: &Manifest) -> anyhow::Result<Self> {
        Self::try_start_apps(std::slice::from_ref(manifest)).await
    }

    /// Serve several apps in one host, as `wsflow up app0.toml app1.toml
    /// ...` does.
    pub async fn start_apps(manifests: &[Manifest]) -> Self {
        Self::try_start_apps(manifests)
            .await
            .expect("starting the test server")
    }

    /// Like [`TestServer::start_apps`]; the manifests are written to
    /// `app0.toml`, `app1.toml`, ... in a temporary directory.
    pub async fn try_start_apps(manifests: &[Manifest]) -> anyhow::Result<Self> {
        Self::try_start_in(manifests, None).await
    }

    /// Serve `manifest` on a host of the cluster whose NATS servers are
    /// `servers`, as `wsflow up --cluster SERVERS` does. Several hosts
    /// started with the same manifest serve the same app. Panics on any
    /// error.
    pub async fn start_in_cluster(manifest: &Manifest, servers: &str) -> Self {
        let cluster = ClusterOptions {
            servers: vec![servers.to_owned()],
            ..ClusterOptions::default()
        };
        Self::try_start_in(std::slice::from_ref(manifest), Some(cluster))
            .await
            .expect("starting a test server in the cluster")
    }

    /// Serve `manifest` with its key-value stores in `data_dir`, as `wsflow
    /// up --data-dir DATA_DIR` does: a server started again on the same
    /// directory with the same manifest finds the same data. Panics on any
    /// error.
    pub async fn start_with_data(manifest: &Manifest, data_dir: &std::path::Path) -> Self {
        Self::try_start_with(std::slice::from_ref(manifest), None, Some(data_dir))
            .await
            .expect("starting the test server")
    }

    /// Serve `manifests`, in the cluster of `cluster` if given.
    pub async fn try_start_in(
        manifests: &[Manifest],
        cluster: Option<ClusterOptions>,
    ) -> anyhow::Result<Self> {
        Self::try_start_with(manifests, cluster, None).await
    }

    /// Serve `manifest`, its flows' outbound HTTP resolving names with
    /// `resolver`. Panics on any error.
    pub async fn start_resolving(manifest: &Manifest, resolver: Resolver) -> Self {
        Self::try_start_resolving(std::slice::from_ref(manifest), None, None, resolver)
            .await
            .expect("starting the test server")
    }

    /// Serve `manifests`, in the cluster of `cluster` if given, with their
    /// key-value stores in `data_dir` (default: a directory of this server's
    /// own, removed with it).
    pub async fn try_start_with(
        manifests: &[Manifest],
        cluster: Option<ClusterOptions>,
        data_dir: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        Self::try_start_resolving(manifests, cluster, data_dir, Resolver::default()).await
    }

    /// As [`TestServer::try_start_with`], outbound HTTP resolving names
    /// with `resolver`.
    pub async fn try_start_resolving(
        manifests: &[Manifest],
        cluster: Option<ClusterOptions>,
        data_dir: Option<&std::path::Path>,
        resolver: Resolver,
    ) -> anyhow::Result<Self> {
        logs::init();
        let logs = LogView::new();
        let dir = tempfile::tempdir()?;
        let mut paths = Vec::new();
        for (i, manifest) in manifests.iter().enumerate() {
            let path = dir.path().join(format!("app{i}.toml"));
            std::fs::write(&path, manifest.to_toml())?;
            paths.push(path);
        }
        let cluster = match cluster {
            Some(options) => Some(Cluster::join(&options).await?),
            None => None,
        };
        let options = LoadOptions {
            build: false,
            cache_dir: Some(component_cache()),
            env: Environment::default(),
            cluster: cluster.clone(),
            data_dir: Some(data_dir.map_or_else(|| dir.path().join("data"), Into::into)),
            resolver,
        };
        let apps = tokio::task::spawn_blocking(move || loader::load(&paths, &options)).await??;
        let server = Server::bind(apps).await?;
        let reloader = server.reloader();
        let stats = server.stats();
        let endpoints = server.endpoints().to_vec();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Ok(Self {
            apps: manifests
                .iter()
                .map(|manifest| (manifest.asked_name().to_owned(), manifest.name().to_owned()))
                .collect(),
            endpoints,
            stats,
            logs,
            shutdown,
            task: Some(task),
            reloader,
            cluster,
            dir,
        })
    }

    /// Serve the server API on a free loopback port until the server stops;
    /// its address.
    pub async fn start_api(&self) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the server API");
        let addr = listener.local_addr().unwrap();
        let stats = self.stats.clone();
        let stop = self.shutdown.child_token();
        tokio::spawn(async move { wsflow::server::serve_api(listener, &stats, stop).await });
        addr
    }

    /// This host's id in its cluster; panics for a host outside any.
    pub fn host_id(&self) -> u32 {
        self.cluster().host_id()
    }

    /// The cluster this host joined; panics for a host outside any.
    pub fn cluster(&self) -> &Cluster {
        self.cluster.as_ref().expect("a host in a cluster")
    }

    /// The name of this host's connection to NATS, as the broker's
    /// monitoring shows it.
    pub fn nats_name(&self) -> String {
        format!("wsflow host {}", self.host_id())
    }

    /// Replace the manifest of the `index`th app (its real name kept) and
    /// reload the server, as SIGHUP does.
    pub async fn reload_with(
        &self,
        index: usize,
        manifest: &Manifest,
    ) -> anyhow::Result<ReloadReport> {
        let real = &self.apps[index].1;
        let manifest = manifest.clone().with_real_name(real);
        let path = self.dir.path().join(format!("app{index}.toml"));
        std::fs::write(&path, manifest.to_toml())?;
        self.reloader.reload().await
    }

    /// The real name of the app the test calls `app`.
    pub fn app_name(&self, app: &str) -> &str {
        self.apps
            .iter()
            .find(|(asked, _)| asked == app)
            .map(|(_, real)| real.as_str())
            .unwrap_or_else(|| panic!("this server has no app named {app}"))
    }

    /// The counters of app `app`.
    pub fn app_stats(&self, app: &str) -> StatsSnapshot {
        let name = self.app_name(app);
        self.stats
            .snapshot()
            .into_iter()
            .find(|(served, _)| served == name)
            .map(|(_, stats)| stats)
            .unwrap_or_else(|| panic!("the host serves no app named {name}"))
    }

    /// Wait until the counters of app `app` satisfy `condition`, which
    /// `what` describes for the panic after [`TIMEOUT`].
    pub async fn wait_for_stats(
        &self,
        app: &str,
        what: &str,
        condition: impl Fn(&StatsSnapshot) -> bool,
    ) -> StatsSnapshot {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let stats = self.app_stats(app);
            if condition(&stats) {
                return stats;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "app {app}: not {what} after {TIMEOUT:?}: {stats:?}"
            );
            // The counters are plain atomics with no notification to await.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `ws://ADDR{path}` on the listener of app `app`.
    pub fn app_url(&self, app: &str, path: &str) -> String {
        let name = self.app_name(app);
        let endpoint = self
            .endpoints
            .iter()
            .find(|endpoint| endpoint.app == name)
            .unwrap_or_else(|| panic!("app {name} has no listener"));
        format!("ws://{}{path}", endpoint.addr)
    }

    /// `ws://ADDR{path}` on the first trigger's listener.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.endpoints[0].addr)
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Wait until one of this server's apps logs a line containing
    /// `needle`; panics after [`TIMEOUT`].
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let apps: Vec<&str> = self.apps.iter().map(|(_, real)| real.as_str()).collect();
        self.logs.wait_for(&apps, needle).await
    }

    /// Wait until this host's cluster link logs a line containing
    /// `needle`; panics after [`TIMEOUT`].
    pub async fn wait_for_cluster_log(&self, needle: &str) -> String {
        let field = format!("cluster_host={}", self.host_id());
        self.logs.wait_for_field(&[field], needle).await
    }

    /// Wait until app `app` logs a line containing `needle`; panics after
    /// [`TIMEOUT`].
    pub async fn wait_for_app_log(&self, app: &str, needle: &str) -> String {
        self.logs.wait_for(&[self.app_name(app)], needle).await
    }

    /// The lines app `app` has logged so far.
    pub fn app_log_lines(&self, app: &str) -> Vec<String> {
        self.logs.lines(&[self.app_name(app)])
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
        if let Some(cluster) = &self.cluster {
            cluster.leave().await;
        }
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

/// Try `n` upgrades to `url` at once; the connections admitted, after
/// asserting that every other one was refused with `status`.
pub async fn connect_at_once(url: &str, n: usize, status: u16) -> Vec<Client> {
    let attempts: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_owned();
            tokio::spawn(async move { try_connect(request(&url, &[])).await })
        })
        .collect();
    let mut admitted = Vec::new();
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(client) => admitted.push(client),
            Err(refused) => assert_eq!(refused.status, status, "{}", refused.body),
        }
    }
    admitted
}

/// An HTTP/1.1 response: status, lower-case headers, body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }

    /// The body as JSON; panics if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }
}

/// Send one HTTP/1.1 request (`Connection: close`) to `addr` and read the
/// whole response.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut raw))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}
