//! The HTTP/1.1 a trigger speaks itself when it must see a request before
//! the WebSocket handshake (a `static_dir` to serve, an `on_connect` hook
//! to ask): reading a request head within the handshake deadline,
//! answering a request that gets no upgrade, and handing an upgrade on to
//! the handshake with every byte read so far replayed ([`Replay`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::Request;

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
            let mut builder = http::Request::builder().method(method).uri(path);
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
    pub(super) body: Vec<u8>,
    /// A `HEAD` request: the headers only.
    pub(super) head_only: bool,
}

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
            body: body.into_bytes(),
            head_only: false,
        }
    }

    /// Write the response, then shut the stream down.
    pub(super) async fn send<S: AsyncWrite + Unpin>(&self, stream: &mut S) {
        if let Err(error) = self.write_to(stream).await {
            tracing::debug!("HTTP response failed: {error}");
        }
        let _ = stream.shutdown().await;
    }

    async fn write_to<S: AsyncWrite + Unpin>(&self, stream: &mut S) -> io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\
             x-content-type-options: nosniff\r\nconnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            head.push_str("allow: GET, HEAD\r\n");
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        if !self.head_only {
            stream.write_all(&self.body).await?;
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
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let (head, _) = read_head(&mut huge, deadline).await.unwrap();
        assert!(matches!(head, Head::Bad(431 | 400)));
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
