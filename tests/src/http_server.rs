//! A plain HTTP/1.1 server on 127.0.0.1 for outbound-HTTP tests, with
//! routes that misbehave on purpose, and a resolver tests give the host.
//! One request per connection (`connection: close`).
//!
//! | path | answer |
//! | --- | --- |
//! | `/ok` | 200, `hello` |
//! | `/echo` | 200, the request body |
//! | `/redirect?URL` | 302 to `URL` |
//! | `/silent` | reads the request, never answers |
//! | `/stall` | 200 headers and 5 of 100 body bytes, then nothing |
//! | `/endless` | 200, a chunked body that never ends |
//! | `/big` | 200 with a `content-length` of 64 MiB, then an endless body |
//! | `/hold` | waits until [`HttpServer::release`], then 200 |

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use wsflow::Resolve;

/// The largest request head the server reads.
const MAX_HEAD: usize = 1 << 20;

/// A running test HTTP server; stops when dropped.
pub struct HttpServer {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        let (release, released) = watch::channel(false);
        let task = tokio::spawn({
            let requests = Arc::clone(&requests);
            let held = Arc::clone(&held);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let requests = Arc::clone(&requests);
                    let held = Arc::clone(&held);
                    let released = released.clone();
                    tokio::spawn(async move {
                        let _ = serve(stream, &requests, &held, released).await;
                    });
                }
            }
        });
        Self {
            addr,
            requests,
            held,
            release,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://NAME:PORT{path}`: this server through a host name.
    pub fn url_as(&self, name: &str, path: &str) -> String {
        format!("http://{name}:{}{path}", self.port())
    }

    /// Requests whose head the server has read.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Requests to `/hold` waiting for [`HttpServer::release`].
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Answer every `/hold` request, now and from now on.
    pub fn release(&self) {
        let _ = self.release.send(true);
    }
}

async fn serve(
    mut stream: TcpStream,
    requests: &AtomicUsize,
    held: &AtomicUsize,
    mut released: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0; 8192];
    let end = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if head.len() > MAX_HEAD {
            return stream
                .write_all(b"HTTP/1.1 431 Too Large\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    };
    requests.fetch_add(1, Ordering::SeqCst);
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let target = text.split(' ').nth(1).unwrap_or("/").to_owned();
    let length: usize = text
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    let mut body = head[end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    match path {
        "/ok" => respond(&mut stream, "200 OK", &[], b"hello").await,
        "/echo" => respond(&mut stream, "200 OK", &[], &body).await,
        "/redirect" => respond(&mut stream, "302 Found", &[("location", query)], b"").await,
        "/silent" => std::future::pending().await,
        "/stall" => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello")
                .await?;
            std::future::pending().await
        }
        "/endless" | "/big" => {
            let head: &[u8] = if path == "/big" {
                b"HTTP/1.1 200 OK\r\ncontent-length: 67108864\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            };
            stream.write_all(head).await?;
            let chunk = vec![b'x'; 16 << 10];
            loop {
                if path == "/endless" {
                    stream.write_all(b"4000\r\n").await?;
                    stream.write_all(&chunk).await?;
                    stream.write_all(b"\r\n").await?;
                } else {
                    stream.write_all(&chunk).await?;
                }
            }
        }
        "/hold" => {
            held.fetch_add(1, Ordering::SeqCst);
            let _ = released.wait_for(|released| *released).await;
            respond(&mut stream, "200 OK", &[], b"released").await
        }
        _ => respond(&mut stream, "404 Not Found", &[], b"").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

/// A resolver for tests: names it knows resolve to their addresses, names
/// mapped to `None` never resolve, other names are not found.
#[derive(Debug, Default)]
pub struct TestResolver {
    names: HashMap<String, Option<Vec<IpAddr>>>,
}

impl TestResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// `name` resolves to `address`.
    pub fn with(mut self, name: &str, address: &str) -> Self {
        self.names
            .insert(name.to_owned(), Some(vec![address.parse().unwrap()]));
        self
    }

    /// Looking `name` up never finishes.
    pub fn hanging(mut self, name: &str) -> Self {
        self.names.insert(name.to_owned(), None);
        self
    }
}

impl Resolve for TestResolver {
    fn lookup(&self, host: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> {
        match self.names.get(host).cloned() {
            Some(Some(addresses)) => Box::pin(std::future::ready(Ok(addresses))),
            Some(None) => Box::pin(std::future::pending()),
            None => Box::pin(std::future::ready(Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} is not a name the test knows"),
            )))),
        }
    }
}
