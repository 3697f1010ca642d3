//! A data-mode flow for JSON messages: the host parses each message before
//! `handle` runs (a message that is not JSON gets an error reply, as
//! `on_invalid = "reply"` in wsflow.toml asks) and runs the flow once per
//! message, each time in a fresh instance. This one answers
//! `{"name": "ann"}` with `{"greeting": "hello, ann"}`.
//!
//! Build and run: `wsflow up` in this directory.

use serde::{Deserialize, Serialize};
use wsflow_sdk::{Connection, Event, Flow};

/// What a client sends.
#[derive(Deserialize)]
struct Request {
    name: String,
}

/// What it gets back.
#[derive(Serialize)]
struct Reply {
    greeting: String,
}

struct Greeter;

impl Flow for Greeter {
    fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
        match event.json::<Request>() {
            Ok(request) => conn.send_json(&Reply {
                greeting: format!("hello, {}", request.name),
            }),
            // Valid JSON of another shape: tell the client what was expected.
            Err(error) => conn.send_json(&serde_json::json!({
                "error": format!("expected {{\"name\": \"...\"}}: {error}"),
            })),
        }
    }
}

wsflow_sdk::export!(Greeter);
