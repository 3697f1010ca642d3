//! `native-work`: the native baseline for flows that do I/O per message,
//! the work of `bench/flows/` in a plain tokio + tokio-tungstenite server:
//!
//! - `--work sqlite`: what `bench-kv-counter` makes wsflow do on a host of
//!   its own. The database (`--database`) is opened as wsflow opens an
//!   app's (WAL, `synchronous = FULL`, the same table) and served by one
//!   thread; each message increments `count:ID` (ID: the connection's
//!   number) with the host's statements (read the value, read its size
//!   for the quota, upsert: one commit), reads it back and replies with it.
//! - `--work jetstream`: the same in a JetStream key-value bucket of
//!   `--nats`, with the host's operations: the entry and its revision, a
//!   write if the revision is still the one read (`update`, or `create`
//!   for a new key), the entry again.
//! - `--work http`: each message is posted to `--service` over a new
//!   HTTP/1.1 connection (hyper's client connection, as the host makes
//!   one per request) and the reply is the answer's body.
//!
//! Prints `listening on ws://ADDR/work` once bound, like `wsflow up`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rusqlite::{OptionalExtension as _, params};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use wsflow_bench::{accept_connections, native_runtime, ws_config};

/// A native WebSocket server doing a flow's per-message I/O.
#[derive(Debug, Parser)]
#[command(name = "native-work")]
struct Args {
    /// The work done per message.
    #[arg(long, value_enum)]
    work: Kind,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// sqlite: the database file (created if missing).
    #[arg(long, required_if_eq("work", "sqlite"))]
    database: Option<PathBuf>,
    /// jetstream: the NATS server, e.g. nats://127.0.0.1:4222.
    #[arg(long, required_if_eq("work", "jetstream"))]
    nats: Option<String>,
    /// http: the URL to post each message to, e.g. http://127.0.0.1:8080/.
    #[arg(long, required_if_eq("work", "http"))]
    service: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    Sqlite,
    Jetstream,
    Http,
}

/// The set-up work, shared by every connection.
#[derive(Clone)]
enum Work {
    Sqlite(mpsc::Sender<Request>),
    JetStream(Arc<kv::Store>),
    Http(Arc<Service>),
}

/// The store name of the rows, as the flow's `Store::open("default")`.
const STORE: &str = "default";
/// The JetStream bucket of `--work jetstream`.
const BUCKET: &str = "native-work";
/// Attempts of a JetStream increment whose write lost a race, as the host.
const ATTEMPTS: usize = 10;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = native_runtime()?;
    let work = match args.work {
        Kind::Sqlite => Work::Sqlite(open_database(
            args.database.as_deref().context("--database is required")?,
        )?),
        Kind::Jetstream => Work::JetStream(runtime.block_on(open_bucket(
            args.nats.as_deref().context("--nats is required")?,
        ))?),
        Kind::Http => Work::Http(Arc::new(Service::parse(
            args.service.as_deref().context("--service is required")?,
        )?)),
    };
    let connections = Arc::new(AtomicU64::new(0));
    runtime.block_on(accept_connections(args.addr, "/work", move |stream| {
        let id = connections.fetch_add(1, Ordering::Relaxed) + 1;
        serve(stream, work.clone(), id)
    }))
}

async fn serve(stream: TcpStream, work: Work, id: u64) {
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())).await
    else {
        return;
    };
    let key = format!("count:{id}");
    while let Some(Ok(message)) = ws.next().await {
        let body = match message {
            Message::Text(text) => Bytes::from(text),
            Message::Binary(bytes) => bytes,
            _ => continue,
        };
        let reply = match &work {
            Work::Sqlite(database) => count_in_sqlite(database, &key).await,
            Work::JetStream(bucket) => count_in_jetstream(bucket, &key).await,
            Work::Http(service) => service.post(body).await,
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => {
                eprintln!("connection {id}: {error:#}");
                break;
            }
        };
        if ws.send(Message::text(reply)).await.is_err() {
            break;
        }
    }
}

// --- SQLite --------------------------------------------------------------------

/// One operation for the database thread, as the flow makes them: one
/// request per key-value call.
struct Request {
    op: Op,
    key: String,
    answer: oneshot::Sender<rusqlite::Result<Option<Vec<u8>>>>,
}

enum Op {
    Increment,
    Get,
}

/// Open `path` as wsflow opens an app's database and start the thread that
/// serves it.
fn open_database(path: &std::path::Path) -> anyhow::Result<mpsc::Sender<Request>> {
    let conn =
        rusqlite::Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS entries (
            store TEXT NOT NULL,
            key TEXT NOT NULL,
            value BLOB NOT NULL,
            PRIMARY KEY (store, key)
        ) WITHOUT ROWID",
    )?;
    let (requests, mut queue) = mpsc::channel::<Request>(1024);
    std::thread::Builder::new()
        .name("database".into())
        .spawn(move || {
            while let Some(request) = queue.blocking_recv() {
                let answer = match request.op {
                    Op::Increment => increment(&conn, &request.key),
                    Op::Get => get(&conn, &request.key),
                };
                let _ = request.answer.send(answer);
            }
        })?;
    Ok(requests)
}

fn get(conn: &rusqlite::Connection, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT value FROM entries WHERE store = ?1 AND key = ?2")?
        .query_row(params![STORE, key], |row| row.get(0))
        .optional()
}

/// The host's increment: the value, the size of the old value (its quota
/// check), the upsert; autocommit, so one WAL commit and sync.
fn increment(conn: &rusqlite::Connection, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    let current = get(conn, key)?
        .and_then(|value| String::from_utf8(value).ok())
        .and_then(|text| text.parse::<u64>().ok())
        .unwrap_or(0);
    let _old_size: Option<i64> = conn
        .prepare_cached("SELECT length(value) FROM entries WHERE store = ?1 AND key = ?2")?
        .query_row(params![STORE, key], |row| row.get(0))
        .optional()?;
    let new = (current + 1).to_string().into_bytes();
    conn.prepare_cached(
        "INSERT INTO entries (store, key, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![STORE, key, new])?;
    Ok(Some(new))
}

async fn ask(
    database: &mpsc::Sender<Request>,
    op: Op,
    key: &str,
) -> anyhow::Result<Option<Vec<u8>>> {
    let (answer, answered) = oneshot::channel();
    let request = Request {
        op,
        key: key.to_owned(),
        answer,
    };
    database
        .send(request)
        .await
        .ok()
        .context("the database thread ended")?;
    Ok(answered.await.context("the database thread ended")??)
}

async fn count_in_sqlite(database: &mpsc::Sender<Request>, key: &str) -> anyhow::Result<String> {
    ask(database, Op::Increment, key).await?;
    let value = ask(database, Op::Get, key)
        .await?
        .with_context(|| format!("{key} has no value after its increment"))?;
    Ok(String::from_utf8_lossy(&value).into_owned())
}

// --- JetStream -----------------------------------------------------------------

/// The bucket, created as the host creates an app's (one value per key, on
/// file).
async fn open_bucket(url: &str) -> anyhow::Result<Arc<kv::Store>> {
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let context = jetstream::new(client);
    let config = kv::Config {
        bucket: BUCKET.to_owned(),
        history: 1,
        storage: jetstream::stream::StorageType::File,
        ..kv::Config::default()
    };
    context
        .create_key_value(config)
        .await
        .map(Arc::new)
        .with_context(|| format!("creating the bucket {BUCKET} on {url}"))
}

/// The value of `key` and its revision, if it has one.
async fn entry(bucket: &kv::Store, key: &str) -> anyhow::Result<Option<kv::Entry>> {
    let entry = bucket.entry(key).await.context("reading")?;
    Ok(entry.filter(|entry| entry.operation == kv::Operation::Put))
}

async fn count_in_jetstream(bucket: &kv::Store, key: &str) -> anyhow::Result<String> {
    // NATS keys have no `:`.
    let key = key.replace(':', "-");
    let mut written = false;
    for _ in 0..ATTEMPTS {
        let entry = entry(bucket, &key).await?;
        let current = entry
            .as_ref()
            .and_then(|entry| std::str::from_utf8(&entry.value).ok())
            .and_then(|text| text.parse::<u64>().ok())
            .unwrap_or(0);
        let new = Bytes::from((current + 1).to_string());
        written = match entry {
            Some(entry) => match bucket.update(&key, new, entry.revision).await {
                Ok(_) => true,
                Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => false,
                Err(error) => return Err(error).context("writing"),
            },
            None => match bucket.create(&key, new).await {
                Ok(_) => true,
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => false,
                Err(error) => return Err(error).context("writing"),
            },
        };
        if written {
            break;
        }
    }
    if !written {
        bail!("{key}: every write lost a race");
    }
    let entry = entry(bucket, &key)
        .await?
        .with_context(|| format!("{key} has no value after its increment"))?;
    Ok(String::from_utf8_lossy(&entry.value).into_owned())
}

// --- HTTP ----------------------------------------------------------------------

/// Where `--service` is.
struct Service {
    address: SocketAddr,
    authority: String,
    path: String,
}

impl Service {
    /// `http://IP:PORT/PATH`: an address, as the bench's local service has.
    fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: hyper::Uri = url.parse().with_context(|| format!("{url} is not a URL"))?;
        let authority = uri
            .authority()
            .with_context(|| format!("{url} has no host"))?
            .to_string();
        if uri.scheme_str() != Some("http") {
            bail!("{url}: only http:// URLs are served");
        }
        let address = authority
            .parse()
            .with_context(|| format!("{url}: the host must be IP:PORT"))?;
        let path = uri
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_owned();
        Ok(Self {
            address,
            authority,
            path,
        })
    }

    /// Post `body` over a new connection; the answer's body as text.
    async fn post(&self, body: Bytes) -> anyhow::Result<String> {
        let stream = TcpStream::connect(self.address)
            .await
            .with_context(|| format!("connecting to {}", self.address))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(connection);
        let request = hyper::Request::post(self.path.as_str())
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::CONTENT_LENGTH, body.len())
            .body(Full::new(body))
            .context("building the request")?;
        let response = sender.send_request(request).await.context("requesting")?;
        if !response.status().is_success() {
            bail!("the service answered {}", response.status());
        }
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading the answer")?;
        Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
    }
}
