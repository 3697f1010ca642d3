//! The byte stream under a WebSocket connection, watched: it records when
//! the client last took bytes, so the writer can tell a client that reads
//! slowly (still making progress) from one that has stopped reading.
//!
//! The writer sees only what waits in the host. Bytes the kernel took
//! already but the client has not (a send buffer of up to 4 MiB on Linux)
//! wait too, and once the host has nothing left to write, no write can
//! stall on them: the kernel is told to give up on them instead
//! ([`give_up_after`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Have the kernel drop the connection once bytes it holds for the client
/// have gone unacknowledged, or waited for the client's receive window to
/// open, for `patience` (`slow_client_timeout`) and the close timeout
/// (`TCP_USER_TIMEOUT`): a client that stops reading after the host wrote
/// its last bytes is dropped as late as one that stops while more wait in
/// the host (closed with 1008 after `patience`, dropped once the close
/// frame has waited the close timeout). The host's own check comes first
/// whenever it can see the client stall, so it is the one that closes and
/// counts. A client that reads, however slowly, acknowledges what it takes
/// and opens its window.
pub(super) fn give_up_after(stream: &TcpStream, patience: Duration) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let patience = patience.saturating_add(super::pump::CLOSE_TIMEOUT);
        let millis = u32::try_from(patience.as_millis()).unwrap_or(u32::MAX);
        if let Err(error) = rustix::net::sockopt::set_tcp_user_timeout(stream, millis) {
            tracing::debug!("TCP_USER_TIMEOUT could not be set: {error}");
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (stream, patience);
}

/// When bytes were last written to a connection's socket.
#[derive(Debug)]
pub(super) struct WriteProgress {
    origin: Instant,
    /// Nanoseconds after `origin` of the last write that took bytes.
    last: AtomicU64,
}

impl WriteProgress {
    pub(super) fn new() -> Self {
        Self {
            origin: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn record(&self) {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
    }

    /// When the socket last took bytes (or when the connection was made).
    pub(super) fn last(&self) -> Instant {
        self.origin + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// A stream that records every write that takes bytes in a
/// [`WriteProgress`]; reads pass through.
#[derive(Debug)]
pub(super) struct Watched<S> {
    inner: S,
    progress: Arc<WriteProgress>,
}

impl<S> Watched<S> {
    pub(super) fn new(inner: S, progress: Arc<WriteProgress>) -> Self {
        Self { inner, progress }
    }

    fn took(&self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.progress.record();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.took(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.took(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
