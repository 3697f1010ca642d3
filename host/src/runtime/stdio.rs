//! Guest stdout and stderr, captured line by line into the host log.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// A line longer than this is logged in pieces, so a guest cannot make the
/// host buffer without bound by never writing a newline.
const MAX_LINE: usize = 4096;

/// An output stream whose lines become `tracing` events tagged with the app,
/// flow and connection that wrote them.
#[derive(Clone)]
pub struct LogOutput {
    tags: Arc<Tags>,
}

struct Tags {
    app: Arc<str>,
    flow: Arc<str>,
    connection: u64,
    stream: &'static str,
}

impl LogOutput {
    pub fn new(app: &Arc<str>, flow: &Arc<str>, connection: u64, stream: &'static str) -> Self {
        Self {
            tags: Arc::new(Tags {
                app: Arc::clone(app),
                flow: Arc::clone(flow),
                connection,
                stream,
            }),
        }
    }
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            tags: Arc::clone(&self.tags),
            line: Vec::new(),
        })
    }
}

struct LineWriter {
    tags: Arc<Tags>,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches(['\n', '\r']);
        let tags = &self.tags;
        tracing::info!(
            target: "wsflow::flow",
            app = &*tags.app,
            flow = &*tags.flow,
            conn = tags.connection,
            stream = tags.stream,
            "{text}"
        );
        self.line.clear();
    }

    fn push(&mut self, bytes: &[u8]) {
        for chunk in bytes.split_inclusive(|&b| b == b'\n') {
            let mut chunk = chunk;
            while !chunk.is_empty() {
                let room = MAX_LINE - self.line.len();
                let take = room.min(chunk.len());
                self.line.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                if self.line.len() == MAX_LINE || self.line.ends_with(b"\n") {
                    self.emit();
                }
            }
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.emit();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.emit();
    }
}
