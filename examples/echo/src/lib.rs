//! Echo: every message a client sends comes back unchanged, text as text and
//! binary as binary. Data mode: the host runs this flow once per message.
//!
//! Build and run (from the repository root):
//!
//! ```text
//! cargo run --release -p wsflow -- up examples/echo/wsflow.toml
//! ```
//!
//! `wsflow up` builds the component first if it is missing or stale
//! (`cargo build --release --target wasm32-wasip2 -p wsflow-example-echo`).
//! Then connect a client to `ws://127.0.0.1:9998/echo`.

use wsflow_sdk::{Connection, Event, Flow};

struct Echo;

impl Flow for Echo {
    fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
        if let Some(message) = event.message() {
            conn.send(message)?;
        }
        Ok(())
    }
}

wsflow_sdk::export!(Echo);
