//! Sends every message back unchanged.

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
