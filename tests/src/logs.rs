//! What the host logged in this process. There is one subscriber per
//! process, so every test's lines land in one buffer; a [`LogView`] sees
//! only the lines logged since it was made that carry one of its apps'
//! names, which the harness keeps unique per process.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use tokio::sync::Notify;

use crate::TIMEOUT;

/// The captured output of the subscriber, and a wakeup for every write.
#[derive(Default)]
struct Captured {
    text: Mutex<Vec<u8>>,
    written: Notify,
}

fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(Captured::default)
}

struct CaptureWriter;

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let captured = captured();
        captured.text.lock().unwrap().extend_from_slice(buf);
        captured.written.notify_waiters();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Install the capturing subscriber, once per process.
pub(crate) fn init() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,wsflow=debug")
            .with_ansi(false)
            .with_writer(|| CaptureWriter)
            .try_init();
    });
}

/// The log lines of some apps, from the moment the view was made.
#[derive(Debug)]
pub(crate) struct LogView {
    /// Where the buffer ended when the view was made. The subscriber writes
    /// whole lines, so this is the start of a line.
    start: usize,
}

impl LogView {
    pub(crate) fn new() -> Self {
        Self {
            start: captured().text.lock().unwrap().len(),
        }
    }

    /// The lines logged since the view was made that carry the field
    /// `app="NAME"` for one of `apps` (real names).
    pub(crate) fn lines(&self, apps: &[&str]) -> Vec<String> {
        let fields: Vec<String> = apps.iter().map(|app| format!("app=\"{app}\"")).collect();
        self.lines_with(&fields)
    }

    /// The lines logged since the view was made that carry one of
    /// `fields`, each as the subscriber renders it (`app="x"`,
    /// `cluster_host=7`).
    fn lines_with(&self, fields: &[String]) -> Vec<String> {
        let text = captured().text.lock().unwrap();
        String::from_utf8_lossy(&text[self.start..])
            .lines()
            .filter(|line| fields.iter().any(|field| carries(line, field)))
            .map(str::to_owned)
            .collect()
    }

    /// Wait until one of `apps` logged a line containing `needle`; panics
    /// after [`TIMEOUT`].
    pub(crate) async fn wait_for(&self, apps: &[&str], needle: &str) -> String {
        let fields: Vec<String> = apps.iter().map(|app| format!("app=\"{app}\"")).collect();
        self.wait_for_field(&fields, needle).await
    }

    /// Wait until a line that carries one of `fields` contains `needle`;
    /// panics after [`TIMEOUT`].
    pub(crate) async fn wait_for_field(&self, fields: &[String], needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            // Registered before looking, so a line written in between
            // still wakes us.
            let written = captured().written.notified();
            if let Some(line) = self
                .lines_with(fields)
                .into_iter()
                .find(|line| line.contains(needle))
            {
                return line;
            }
            if tokio::time::timeout_at(deadline, written).await.is_err() {
                let lines = self.lines_with(fields);
                let last = &lines[lines.len().saturating_sub(20)..];
                panic!(
                    "no log line with {fields:?} contains {needle:?} after {TIMEOUT:?}; \
                     the last {} of {} such lines:\n{}",
                    last.len(),
                    lines.len(),
                    last.join("\n")
                );
            }
        }
    }
}

/// Whether `line` has `field` (`app="x"`, `cluster_host=7`), whole, as the
/// fmt subscriber renders a field of an event (`... app="x" flow="main"`)
/// or of a span (`conn{app="x" conn=3}:`).
fn carries(line: &str, field: &str) -> bool {
    line.match_indices(field).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + field.len()..].chars().next();
        before.is_none_or(|c| c == ' ' || c == '{')
            && after.is_none_or(|c| c == ' ' || c == '}' || c == ':')
    })
}

/// Whether `line` has the field `app="APP"`.
#[cfg(test)]
fn carries_app(line: &str, app: &str) -> bool {
    carries(line, &format!("app=\"{app}\""))
}

#[cfg(test)]
mod tests {
    use super::{carries, carries_app};

    #[test]
    fn an_app_field_is_matched_whole() {
        let event = "WARN wsflow::trigger: flow returned an error: x app=\"echo-3\" flow=\"main\"";
        assert!(carries_app(event, "echo-3"));
        assert!(!carries_app(event, "echo-31"));
        assert!(!carries_app(event, "echo"));
        let span = "conn{app=\"echo-3\" conn=3}: wsflow::trigger: connected";
        assert!(carries_app(span, "echo-3"));
        assert!(!carries_app("x myapp=\"echo-3\"", "echo-3"));
        let host = "INFO wsflow::cluster: joined cluster_host=7";
        assert!(carries(host, "cluster_host=7"));
        assert!(!carries(host, "cluster_host=71"));
        assert!(!carries("x cluster_host=71 y", "cluster_host=7"));
    }
}
