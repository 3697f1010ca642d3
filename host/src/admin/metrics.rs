//! `GET /metrics`: every app's counters, gauges and histograms in the
//! Prometheus text exposition format (version 0.0.4), one series per app
//! (label `app`).

use std::fmt::Write as _;

use crate::metrics::{ExecutionKind, HistogramSnapshot, Limit};
use crate::server::StatsHandle;
use crate::stats::{COUNTERS, FAMILIES};

/// The content type of the text exposition format.
pub(super) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exposition of `stats` (none while the apps load).
pub(super) fn render(stats: Option<&StatsHandle>, ready: bool) -> String {
    let apps = stats.map(StatsHandle::apps).unwrap_or_default();
    let mut out = Exposition::default();
    out.family(
        "wsflow_ready",
        "gauge",
        "1 once every app listens and until shutdown begins, else 0.",
    );
    out.sample("wsflow_ready", &[], u64::from(ready));

    let snapshots: Vec<_> = apps
        .iter()
        .map(|app| (app.as_ref(), app.snapshot()))
        .collect();
    let mut shown: Vec<&str> = Vec::new();
    for counter in COUNTERS {
        if shown.contains(&counter.series) {
            continue;
        }
        shown.push(counter.series);
        let family = COUNTERS
            .iter()
            .filter(|other| other.series == counter.series);
        let help = FAMILIES
            .iter()
            .find(|(series, _)| *series == counter.series)
            .map_or(counter.help, |(_, help)| help);
        out.family(counter.series, counter.kind.label(), help);
        for (app, snapshot) in &snapshots {
            for member in family.clone() {
                let mut labels = vec![("app", &*app.name)];
                labels.extend(member.label);
                out.sample(counter.series, &labels, (member.read)(snapshot));
            }
        }
    }

    out.family(
        "wsflow_limit_hits_total",
        "counter",
        "Executions stopped by a limit, by limit.",
    );
    for (app, _) in &snapshots {
        for limit in Limit::ALL {
            let labels = [("app", &*app.name), ("limit", limit.label())];
            let hits = app.stats.metrics.limit_hits(limit);
            out.sample("wsflow_limit_hits_total", &labels, hits);
        }
    }

    let name = "wsflow_execution_duration_seconds";
    out.family(
        name,
        "histogram",
        "Execution time by kind: message (data mode), session (connection mode), hook.",
    );
    for (app, _) in &snapshots {
        for kind in ExecutionKind::ALL {
            let snapshot = app.stats.metrics.execution_time(kind).snapshot();
            out.histogram(
                name,
                &[("app", &app.name), ("kind", kind.label())],
                &snapshot,
            );
        }
    }

    let name = "wsflow_outbound_request_duration_seconds";
    out.family(
        name,
        "histogram",
        "Time outbound HTTP requests took to their response's headers or their failure.",
    );
    for (app, _) in &snapshots {
        let snapshot = app.stats.metrics.outbound_request_time.snapshot();
        out.histogram(name, &[("app", &app.name)], &snapshot);
    }

    let name = "wsflow_message_size_bytes";
    out.family(
        name,
        "histogram",
        "Data message size by direction: in (read from clients), out (sent by flows).",
    );
    for (app, _) in &snapshots {
        let metrics = &app.stats.metrics;
        for (direction, histogram) in [
            ("in", &metrics.message_size_in),
            ("out", &metrics.message_size_out),
        ] {
            let labels = [("app", &*app.name), ("direction", direction)];
            out.histogram(name, &labels, &histogram.snapshot());
        }
    }

    let name = "wsflow_kv_operation_duration_seconds";
    out.family(
        name,
        "histogram",
        "Time of key-value operations, from the flow's call to the store's answer.",
    );
    for (app, _) in &snapshots {
        let snapshot = app.stats.metrics.kv_operation_time.snapshot();
        out.histogram(name, &[("app", &app.name)], &snapshot);
    }
    out.text
}

/// Text exposition being written.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// The `# HELP` and `# TYPE` lines of a metric family.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {value}");
    }

    /// `_bucket` lines (cumulative, `+Inf` last), `_sum` and `_count`.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], snapshot: &HistogramSnapshot) {
        for (bound, count) in &snapshot.cumulative {
            let le = bound.map_or_else(|| "+Inf".to_owned(), |bound| bound.to_string());
            let _ = write!(self.text, "{name}_bucket");
            write_labels(&mut self.text, labels, Some(&le));
            let _ = writeln!(self.text, " {count}");
        }
        self.sample(&format!("{name}_sum"), labels, snapshot.sum);
        self.sample(&format!("{name}_count"), labels, snapshot.count);
    }
}

/// `{a="x",b="y"}` (and `le`, for a bucket), or nothing without labels.
fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    let le = le.map(|le| ("le", le));
    let mut all = labels.iter().copied().chain(le).peekable();
    if all.peek().is_none() {
        return;
    }
    out.push('{');
    for (i, (key, value)) in all.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{key}=\"{}\"", escape_label(value));
    }
    out.push('}');
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Help text with `\` and newlines escaped.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        write_labels(&mut out, &[("app", "a\"b\\c\nd")], Some("+Inf"));
        assert_eq!(out, r#"{app="a\"b\\c\nd",le="+Inf"}"#);
    }

    #[test]
    fn without_apps_only_readiness_and_the_families_are_shown() {
        let text = render(None, false);
        assert!(text.contains("\nwsflow_ready 0\n"), "{text}");
        assert!(text.contains("# TYPE wsflow_execution_duration_seconds histogram\n"));
        assert!(
            text.lines()
                .filter(|line| !line.starts_with('#'))
                .all(|line| line.starts_with("wsflow_ready ")),
            "{text}"
        );
    }
}
