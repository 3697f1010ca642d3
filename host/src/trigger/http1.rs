//! The HTTP/1.1 a trigger speaks itself when it must see a request before
//! the WebSocket handshake (a `static_dir` to serve, an `on_connect` hook
//! to ask): reading a request head within the handshake deadline,
//! answering a request that gets no upgrade, and handing an upgrade on to
//! the handshake with every byte read so far replayed ([`Replay`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::Request;
use tokio_util::sync::CancellationToken;

/// Largest request head read before it is refused (431): far more than a
/// browser's `GET` or upgrade request needs.
const MAX_HEAD: usize = 16 * 1024;

/// Headers a request head may have.
const MAX_HEADERS: usize = 64;

/// A request that is not for the WebSocket handshake.
pub(super) struct Plain {
    pub(super) method: String,
    pub(super) path: String,
}

/// What a request head asked for.
pub(super) enum Head {
    /// The WebSocket handshake.
    Upgrade(Request),
    Plain(Plain),
    /// Not HTTP, or too large: answered with this status.
    Bad(u16),
}

/// Read a request head within `deadline`: what it asks for, and every byte
/// read (which may run past the head). `None` if the client closed, failed
/// or was too slow: there is nobody to answer.
pub(super) async fn read_head<S>(stream: &mut S, deadline: Instant) -> Option<(Head, Vec<u8>)>
where
    S: AsyncRead + Unpin,
{
    let mut read = Vec::with_capacity(1024);
    loop {
        match parse(&read) {
            Some(head) => return Some((head, read)),
            None if read.len() >= MAX_HEAD => return Some((Head::Bad(431), read)),
            None => {}
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut read)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// Parse the request head in `read`; `None` while it is incomplete.
fn parse(read: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(read) {
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(Head::Bad(431)),
        Err(_) => Some(Head::Bad(400)),
        Ok(httparse::Status::Complete(_)) => {
            let upgrade = request.headers.iter().any(|header| {
                header.name.eq_ignore_ascii_case("upgrade")
                    && String::from_utf8_lossy(header.value)
                        .split(',')
                        .any(|protocol| protocol.trim().eq_ignore_ascii_case("websocket"))
            });
            let method = request.method.unwrap_or_default();
            let path = request.path.unwrap_or_default();
            if !upgrade {
                return Some(Head::Plain(Plain {
                    method: method.to_owned(),
                    path: path.to_owned(),
                }));
            }
            let version = match request.version {
                Some(1) => http::Version::HTTP_11,
                _ => http::Version::HTTP_10,
            };
            let mut builder = http::Request::builder()
                .method(method)
                .uri(path)
                .version(version);
            for header in request.headers.iter() {
                builder = builder.header(header.name, header.value);
            }
            Some(builder.body(()).map_or(Head::Bad(400), Head::Upgrade))
        }
    }
}

/// An HTTP/1.1 response; the connection closes after it.
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) content_type: &'static str,
    pub(super) body: Body,
    /// A `HEAD` request: the headers only.
    pub(super) head_only: bool,
}

/// What a response carries.
pub(super) enum Body {
    Bytes(Vec<u8>),
    /// A file of this many bytes, read in [`CHUNK`]s as it is written
    /// (never whole into memory); `None` for a `HEAD` request, which only
    /// needs the length.
    File(Option<tokio::fs::File>, u64),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Self::Bytes(bytes) => bytes.len() as u64,
            Self::File(_, len) => *len,
        }
    }
}

/// How much of a file is read at a time.
const CHUNK: usize = 64 * 1024;

/// The slowest a response may be taken, for its deadline: a response has
/// the trigger's `handshake_timeout`, or one second per this many bytes of
/// its body if that is longer.
const MIN_BYTES_PER_SECOND: u64 = 1 << 20;

/// How long shutting the stream down after a response may take (TLS sends
/// its close_notify then).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

impl Response {
    /// A status with its reason as a plain-text body.
    pub(super) fn status(status: u16) -> Self {
        Self::text(status, format!("{}\n", reason(status)))
    }

    /// A status with a plain-text body.
    pub(super) fn text(status: u16, body: String) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Body::Bytes(body.into_bytes()),
            head_only: false,
        }
    }

    /// How long writing this response may take: `timeout`, or longer for a
    /// large body (one second per MiB).
    pub(super) fn allowance(&self, timeout: Duration) -> Duration {
        let written = if self.head_only { 0 } else { self.body.len() };
        timeout.max(Duration::from_secs(written / MIN_BYTES_PER_SECOND))
    }

    /// Write the response, then shut the stream down; all of it within
    /// [`Response::allowance`] of `timeout` and until `shutdown`. A client
    /// that does not take it in time is dropped.
    pub(super) async fn send<S: AsyncWrite + Unpin>(
        self,
        stream: &mut S,
        timeout: Duration,
        shutdown: &CancellationToken,
    ) {
        let deadline = Instant::now() + self.allowance(timeout);
        let written = tokio::select! {
            written = tokio::time::timeout_at(deadline, self.write_to(stream)) => written,
            () = shutdown.cancelled() => return,
        };
        match written {
            Ok(Ok(())) => {
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, stream.shutdown()).await;
            }
            Ok(Err(error)) => tracing::debug!("HTTP response failed: {error}"),
            Err(_elapsed) => tracing::debug!("HTTP response not taken in time: dropped"),
        }
    }

    async fn write_to<S: AsyncWrite + Unpin>(self, stream: &mut S) -> io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\
             x-content-type-options: nosniff\r\nconnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        match self.status {
            405 => head.push_str("allow: GET, HEAD\r\n"),
            426 => head.push_str("upgrade: websocket\r\nsec-websocket-version: 13\r\n"),
            _ => {}
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        if !self.head_only {
            match self.body {
                Body::Bytes(bytes) => stream.write_all(&bytes).await?,
                Body::File(Some(file), len) => {
                    // No more than the length announced, should the file
                    // have grown since; a file that shrank ends the
                    // response early and the client sees it cut.
                    let mut file = file.take(len);
                    let mut chunk = vec![0; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
                    loop {
                        let n = file.read(&mut chunk).await?;
                        if n == 0 {
                            break;
                        }
                        stream.write_all(&chunk[..n]).await?;
                    }
                }
                Body::File(None, _) => {}
            }
        }
        stream.flush().await
    }
}

fn reason(status: u16) -> &'static str {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|status| status.canonical_reason())
        .unwrap_or("Error")
}

/// A stream that first yields bytes already read from it, then reads on.
pub(super) struct Replay<S> {
    /// Emptied (and its memory freed) once replayed.
    read: Vec<u8>,
    replayed: usize,
    inner: S,
}

impl<S> Replay<S> {
    pub(super) fn new(read: Vec<u8>, inner: S) -> Self {
        Self {
            read,
            replayed: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.replayed < this.read.len() {
            let rest = &this.read[this.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replayed += n;
            if this.replayed == this.read.len() {
                this.read = Vec::new();
                this.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_requests_are_told_from_plain_ones() {
        let upgrade =
            b"GET /ws?a=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
            Sec-WebSocket-Protocol: chat, json\r\n\r\n";
        let Some(Head::Upgrade(request)) = parse(upgrade) else {
            panic!("an upgrade");
        };
        assert_eq!(request.uri().path(), "/ws");
        assert_eq!(request.uri().query(), Some("a=1"));
        assert_eq!(request.headers()["sec-websocket-protocol"], "chat, json");
        assert!(parse(&upgrade[..20]).is_none(), "incomplete");
        let plain = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(
            parse(plain),
            Some(Head::Plain(Plain { method, path })) if method == "GET" && path == "/index.html"
        ));
        assert!(matches!(
            parse(b"\x16\x03\x01garbage\r\n\r\n"),
            Some(Head::Bad(400))
        ));
    }

    #[tokio::test]
    async fn a_head_larger_than_the_cap_is_refused_with_431() {
        let mut huge: &[u8] = &[b'a'; MAX_HEAD + 10];
        let deadline = Instant::now() + Duration::from_secs(5);
        let (head, _) = read_head(&mut huge, deadline).await.unwrap();
        assert!(matches!(head, Head::Bad(431 | 400)));
    }

    #[tokio::test]
    async fn a_response_nobody_reads_ends_at_its_deadline() {
        // The other end never reads: only 1 KiB of the 2 MiB body fits.
        let (mut server, _client) = tokio::io::duplex(1024);
        let response = Response {
            status: 200,
            content_type: "application/octet-stream",
            body: Body::Bytes(vec![0; 2 << 20]),
            head_only: false,
        };
        assert_eq!(
            response.allowance(Duration::from_millis(100)),
            Duration::from_secs(2),
            "one second per MiB"
        );
        let shutdown = CancellationToken::new();
        let send = response.send(&mut server, Duration::from_millis(100), &shutdown);
        tokio::time::timeout(Duration::from_secs(60), send)
            .await
            .expect("the response is given up at its deadline");
    }

    #[tokio::test]
    async fn a_response_ends_at_shutdown() {
        let (mut server, _client) = tokio::io::duplex(1024);
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let response = Response::text(200, "x".repeat(1 << 20));
        let send = response.send(&mut server, Duration::from_secs(3600), &shutdown);
        tokio::time::timeout(Duration::from_secs(60), send)
            .await
            .expect("shutdown ends the response");
    }

    #[tokio::test]
    async fn a_replay_yields_what_was_read_then_the_rest() {
        let rest: &[u8] = b" world";
        let mut replay = Replay::new(b"hello".to_vec(), rest);
        let mut all = String::new();
        replay.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
