//! A data-mode flow: the host runs `handle` once per message, each time in
//! a fresh instance. This one sends every message back unchanged, text as
//! text and binary as binary.
//!
//! Build and run: `wsflow up` in this directory.

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
