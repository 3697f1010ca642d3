//! Static files next to the WebSocket endpoints (`static_dir` on a
//! trigger), so a browser client can be served from the same origin.
//!
//! Only a trigger with a `static_dir` reads the request head itself. An
//! upgrade request is handed on to the WebSocket handshake with every byte
//! read so far replayed ([`Replay`]); any other request is answered here
//! and the connection closed: `GET`/`HEAD` with a file of the directory
//! (`index.html` for a directory), 404 when there is none, 405 for other
//! methods. A path never leaves the directory: `..`, hidden names and
//! encoded separators are refused, and the file found is checked to lie
//! inside the directory after symbolic links are resolved.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::time::Instant;

use super::handshake::percent_decode;

/// Largest request head read before it is refused (431): far more than a
/// browser's `GET` or upgrade request needs.
const MAX_HEAD: usize = 16 * 1024;

/// Headers a request head may have.
const MAX_HEADERS: usize = 64;

/// The directory a trigger serves.
#[derive(Debug, Clone)]
pub(super) struct StaticFiles {
    /// Canonical (checked at load).
    root: PathBuf,
}

/// A request that is not for the WebSocket handshake.
struct Plain {
    method: String,
    path: String,
}

/// What the request head asked for.
enum Head {
    Upgrade,
    Plain(Plain),
    /// Not HTTP, or too large: answered with this status.
    Bad(u16),
}

impl StaticFiles {
    pub(super) fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Read the request head within `deadline`. An upgrade comes back as
    /// a stream that replays what was read; anything else is answered here
    /// and `None` is returned.
    pub(super) async fn intercept<S>(&self, mut stream: S, deadline: Instant) -> Option<Replay<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut read = Vec::with_capacity(1024);
        let head = loop {
            match parse(&read) {
                Some(head) => break head,
                None if read.len() >= MAX_HEAD => break Head::Bad(431),
                None => {}
            }
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut read)).await {
                Ok(Ok(n)) if n > 0 => {}
                // Closed, failed or too slow: nothing to answer.
                _ => return None,
            }
        };
        let response = match head {
            Head::Upgrade => return Some(Replay::new(read, stream)),
            Head::Bad(status) => Response::status(status),
            Head::Plain(request) => self.respond(&request).await,
        };
        if let Err(error) = response.write_to(&mut stream).await {
            tracing::debug!("static file response failed: {error}");
        }
        let _ = stream.shutdown().await;
        None
    }

    async fn respond(&self, request: &Plain) -> Response {
        let head_only = match request.method.as_str() {
            "GET" => false,
            "HEAD" => true,
            _ => return Response::status(405),
        };
        let Some(path) = self.resolve(&request.path) else {
            return Response::status(404);
        };
        match tokio::fs::read(&path).await {
            Ok(body) => Response {
                status: 200,
                content_type: content_type(&path),
                body,
                head_only,
            },
            Err(_) => Response::status(404),
        }
    }

    /// The file `target` names inside the directory, if there is one.
    fn resolve(&self, target: &str) -> Option<PathBuf> {
        let path = target.split(['?', '#']).next()?;
        let mut file = self.root.clone();
        for segment in path.strip_prefix('/')?.split('/') {
            let segment = percent_decode(segment, false)?;
            if segment.is_empty() {
                continue;
            }
            // `..`, hidden files, and separators smuggled in encoded.
            if segment.starts_with('.') || segment.contains(['/', '\\', '\0']) {
                return None;
            }
            file.push(segment);
        }
        if file.is_dir() {
            file.push("index.html");
        }
        // Symbolic links may point anywhere: the file must still be inside.
        let file = std::fs::canonicalize(file).ok()?;
        (file.starts_with(&self.root) && file.is_file()).then_some(file)
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
            Some(if upgrade {
                Head::Upgrade
            } else {
                Head::Plain(Plain {
                    method: request.method.unwrap_or_default().to_owned(),
                    path: request.path.unwrap_or_default().to_owned(),
                })
            })
        }
    }
}

/// The content type for a file, by its extension.
fn content_type(path: &Path) -> &'static str {
    let extension = path
        .extension()
        .and_then(|extension| extension.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("wasm") => "application/wasm",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        _ => "application/octet-stream",
    }
}

/// An HTTP/1.1 response; the connection closes after it.
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    head_only: bool,
}

impl Response {
    /// A status with its reason as a plain-text body.
    fn status(status: u16) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{}\n", reason(status)).into_bytes(),
            head_only: false,
        }
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
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// A stream that first yields bytes already read from it, then reads on.
pub(super) struct Replay<S> {
    /// Emptied (and its memory freed) once replayed.
    read: Vec<u8>,
    replayed: usize,
    inner: S,
}

impl<S> Replay<S> {
    fn new(read: Vec<u8>, inner: S) -> Self {
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

    fn site() -> (tempfile::TempDir, StaticFiles) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("site");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("index.html"), "home").unwrap();
        std::fs::write(root.join("sub/a.txt"), "a").unwrap();
        std::fs::write(root.join(".env"), "secret").unwrap();
        std::fs::write(dir.path().join("outside.txt"), "secret").unwrap();
        let files = StaticFiles::new(std::fs::canonicalize(&root).unwrap());
        (dir, files)
    }

    #[test]
    fn paths_resolve_inside_the_directory_only() {
        let (dir, files) = site();
        let root = &files.root;
        assert_eq!(files.resolve("/"), Some(root.join("index.html")));
        assert_eq!(files.resolve("/?x=1"), Some(root.join("index.html")));
        assert_eq!(files.resolve("/sub/a.txt"), Some(root.join("sub/a.txt")));
        assert_eq!(files.resolve("/sub/%61.txt"), Some(root.join("sub/a.txt")));
        for bad in [
            "/../outside.txt",
            "/sub/../../outside.txt",
            "/%2e%2e/outside.txt",
            "/sub%2f..%2f..%2foutside.txt",
            "/..%5coutside.txt",
            "/.env",
            "/missing",
            "/sub",
            "relative",
            "/bad%zz",
        ] {
            assert_eq!(files.resolve(bad), None, "{bad}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("outside.txt"), root.join("link.txt"))
                .unwrap();
            assert_eq!(
                files.resolve("/link.txt"),
                None,
                "a link out of the directory"
            );
        }
    }

    #[test]
    fn upgrade_requests_are_told_from_plain_ones() {
        let upgrade =
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert!(matches!(parse(upgrade), Some(Head::Upgrade)));
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
    async fn a_replay_yields_what_was_read_then_the_rest() {
        let rest: &[u8] = b" world";
        let mut replay = Replay::new(b"hello".to_vec(), rest);
        let mut all = String::new();
        replay.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
