//! Guest output — stdout, stderr and `log` calls — into the host log, line
//! by line, within the app's log budget. App, connection and flow come from
//! the spans the output is written in.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::app::{AppInfo, AppStats, LogPermit};

/// A line longer than this is cut, so a guest cannot make the host buffer
/// or log without bound by never writing a newline.
const MAX_LINE: usize = 4096;

/// Log one line of guest output if the app's budget allows; otherwise count
/// it as dropped. The first line after a drop says how many were dropped.
pub(super) fn emit(app: &AppInfo, level: tracing::Level, stream: &str, line: &str) {
    let dropped_before = match app.log_budget.take() {
        LogPermit::Drop => {
            AppStats::add(&app.stats.log_lines_dropped, 1);
            return;
        }
        LogPermit::Log { dropped_before } => dropped_before,
    };
    if dropped_before > 0 {
        tracing::warn!(
            target: "wsflow::flow",
            "dropped {dropped_before} line(s) of guest output over the app's log budget of {}/s",
            app.limits.log_lines_per_second
        );
    }
    let line = truncate(line);
    macro_rules! at {
        ($level:expr) => {
            tracing::event!(target: "wsflow::flow", $level, stream, "{line}")
        };
    }
    match level {
        tracing::Level::TRACE => at!(tracing::Level::TRACE),
        tracing::Level::DEBUG => at!(tracing::Level::DEBUG),
        tracing::Level::INFO => at!(tracing::Level::INFO),
        tracing::Level::WARN => at!(tracing::Level::WARN),
        _ => at!(tracing::Level::ERROR),
    }
}

fn truncate(line: &str) -> &str {
    if line.len() <= MAX_LINE {
        return line;
    }
    let mut end = MAX_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

/// A guest output stream whose lines go to [`emit`].
#[derive(Clone)]
pub(super) struct LogOutput {
    tags: Arc<Tags>,
}

struct Tags {
    app: Arc<AppInfo>,
    stream: &'static str,
    /// The execution's span: WASI writes the stream from a task of its own,
    /// outside the execution, so the span is carried here.
    span: tracing::Span,
}

impl LogOutput {
    /// A stream whose lines are logged in the current span.
    pub(super) fn new(app: &Arc<AppInfo>, stream: &'static str) -> Self {
        Self {
            tags: Arc::new(Tags {
                app: Arc::clone(app),
                stream,
                span: tracing::Span::current(),
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
    fn flush_line(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches(['\n', '\r']);
        let tags = &self.tags;
        tags.span
            .in_scope(|| emit(&tags.app, tracing::Level::INFO, tags.stream, text));
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
                    self.flush_line();
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
        self.flush_line();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.flush_line();
    }
}
