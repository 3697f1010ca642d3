//! An outbound HTTP call per message (`bench/run.sh work`): each message is
//! posted to the URL of the app property `SERVICE` and the reply is the
//! service's answer body. Data mode; the manifest grants the service in the
//! flow's `allowed_outbound_hosts`.
//!
//! `native-work --work http` does the same work in a plain tokio server,
//! for comparison.

use wsflow_sdk::{Connection, Event, Flow, http};

struct HttpRelay;

impl Flow for HttpRelay {
    fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
        let Some(body) = event.text().map(str::as_bytes).or(event.binary()) else {
            return Ok(());
        };
        let service = wsflow_sdk::property("SERVICE")
            .ok_or_else(|| wsflow_sdk::Error::msg("the app property SERVICE (a URL) is not set"))?;
        let answer = http::post(&service, body)?.error_for_status()?;
        conn.send_text(&answer.text())?;
        Ok(())
    }
}

wsflow_sdk::export!(HttpRelay);
