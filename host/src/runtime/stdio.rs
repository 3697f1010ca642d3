//! Guest output — stdout, stderr and `log` calls — into the host log, line
//! by line, within the app's log budget, cut and escaped so that a guest
//! writes only inside its own lines ([`guest_line`], which every
//! guest-controlled string logged goes through). App, connection and flow
//! come from the spans the output is written in.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use super::cpu::{CpuMeter, thread_cpu_nanos};
use crate::app::{AppInfo, AppStats, LogPermit};

/// A line longer than this is cut, so a guest cannot make the host buffer
/// or log without bound by never writing a newline.
const MAX_LINE: usize = 4096;

/// Log one line of guest output if the app's budget allows; otherwise count
/// it as dropped. The first line after a drop says how many were dropped.
pub(super) fn emit(app: &AppInfo, level: tracing::Level, stream: &str, line: &str) {
    let Some(line) = guest_line(app, line) else {
        return;
    };
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

/// Make text a guest controls — output, `log` records, the error a flow
/// returns, names in a trap's backtrace — fit to log as part of one line of
/// `app`: `None` if the app's log budget has no line left (the line is
/// counted as dropped, and the first line after a drop is preceded by a
/// warning saying how many), else the text cut at [`MAX_LINE`] bytes with
/// its control characters escaped, so it cannot start a line of its own,
/// pass for another app's or rewrite the operator's terminal.
pub(crate) fn guest_line(app: &AppInfo, text: &str) -> Option<String> {
    let dropped_before = match app.log_budget.take() {
        LogPermit::Drop => {
            AppStats::add(&app.stats.log_lines_dropped, 1);
            return None;
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
    Some(escape(text))
}

/// `text` with control characters escaped (`\n`, `\r`, `\t`, others as
/// `\u{..}`), cut at [`MAX_LINE`] bytes of the escaped form.
fn escape(text: &str) -> String {
    let mut line = String::with_capacity(text.len().min(MAX_LINE));
    for c in text.chars() {
        let before = line.len();
        match c {
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if needs_escape(c) => line.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => line.push(c),
        }
        if line.len() > MAX_LINE {
            line.truncate(before);
            break;
        }
    }
    line
}

/// Control characters, and the format characters that break a line or
/// reorder how it reads (line and paragraph separators, bidirectional
/// overrides and isolates).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
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
    /// The execution's CPU meter, for the same reason: logging its output
    /// is work done for it.
    cpu: Arc<CpuMeter>,
}

impl LogOutput {
    /// A stream whose lines are logged in the current span and whose
    /// handling is charged to `cpu`.
    pub(super) fn new(app: &Arc<AppInfo>, stream: &'static str, cpu: &Arc<CpuMeter>) -> Self {
        Self {
            tags: Arc::new(Tags {
                app: Arc::clone(app),
                stream,
                span: tracing::Span::current(),
                cpu: Arc::clone(cpu),
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
    /// Do `work`, charging it to the execution.
    fn charged<R>(&mut self, work: impl FnOnce(&mut Self) -> R) -> R {
        let started = thread_cpu_nanos();
        let result = work(self);
        let cpu = &self.tags.cpu;
        cpu.charge(thread_cpu_nanos().saturating_sub(started));
        result
    }

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
        self.charged(|writer| writer.push(buf));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.charged(LineWriter::flush_line);
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.charged(LineWriter::flush_line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::spec::{AppLimits, AppSpec};

    fn app(log_lines_per_second: u32) -> AppInfo {
        let limits = AppLimits {
            log_lines_per_second,
            ..AppLimits::default()
        };
        AppInfo::new(&AppSpec::bare("a", limits))
    }

    #[test]
    fn guest_text_stays_on_one_line() {
        let app = app(100);
        let line = |text: &str| guest_line(&app, text).unwrap();
        assert_eq!(line("plain text, é ✓"), "plain text, é ✓");
        assert_eq!(
            line("hello\nINFO app=\"other\" forged\r\n"),
            "hello\\nINFO app=\"other\" forged\\r\\n"
        );
        assert_eq!(
            line("a\tb\x1b[2K\x00\u{85}"),
            "a\\tb\\u{1b}[2K\\u{0}\\u{85}"
        );
        assert_eq!(line("x\u{2028}y\u{202e}z"), "x\\u{2028}y\\u{202e}z");
    }

    #[test]
    fn guest_text_is_cut_at_max_line_without_splitting_a_char_or_an_escape() {
        let app = app(100);
        let long = "é".repeat(MAX_LINE);
        let cut = guest_line(&app, &long).unwrap();
        assert_eq!(cut.len(), MAX_LINE);
        let newlines = "\n".repeat(MAX_LINE);
        let cut = guest_line(&app, &newlines).unwrap();
        assert_eq!(cut, "\\n".repeat(MAX_LINE / 2));
        let odd = format!("x{}", "\u{1b}".repeat(MAX_LINE));
        let cut = guest_line(&app, &odd).unwrap();
        assert!(cut.len() <= MAX_LINE && cut.ends_with("\\u{1b}"), "{cut}");
    }

    #[test]
    fn guest_text_takes_from_the_apps_log_budget() {
        let app = app(1);
        for _ in 0..10 {
            assert!(guest_line(&app, "line").is_some());
        }
        assert_eq!(guest_line(&app, "line"), None);
        assert_eq!(app.stats.snapshot().log_lines_dropped, 1);
    }
}
