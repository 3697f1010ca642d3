//! A connection-mode flow that speaks JSON: the host runs `handle` once per
//! connection, and the flow receives and sends until it returns (the host
//! then closes with 1000) or the client closes. In connection mode the flow
//! parses what it receives itself. This one keeps a running total: each
//! `{"add": 5}` is answered with `{"total": ...}` for this connection.
//!
//! Build and run: `wsflow up` in this directory.

use serde::{Deserialize, Serialize};
use wsflow_sdk::{Connection, Event, Flow, ReceiveTextError};

/// What a client sends.
#[derive(Deserialize)]
struct Add {
    add: i64,
}

/// What it gets back.
#[derive(Serialize)]
struct Total {
    total: i64,
}

struct Session;

impl Flow for Session {
    fn handle(_event: Event, conn: &Connection) -> wsflow_sdk::Result {
        let mut total = 0i64;
        loop {
            // `None`: wait as long as the client stays connected.
            let text = match conn.receive_text(None) {
                Ok(Some(text)) => text,
                // The client closed.
                Ok(None) => return Ok(()),
                Err(ReceiveTextError::Binary(_)) => {
                    conn.send_json(&serde_json::json!({ "error": "send JSON text" }))?;
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            match serde_json::from_str::<Add>(&text) {
                Ok(Add { add }) => {
                    total = total.saturating_add(add);
                    conn.send_json(&Total { total })?;
                }
                Err(error) => conn.send_json(&serde_json::json!({
                    "error": format!("expected {{\"add\": <integer>}}: {error}"),
                }))?,
            }
        }
    }
}

wsflow_sdk::export!(Session);
