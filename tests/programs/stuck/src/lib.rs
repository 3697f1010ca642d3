//! Connection mode: says `ready`, then receives forever, ignoring that the
//! client has closed — it never returns.

use std::time::Duration;

use wsflow_sdk::{Connection, Event, Flow};

struct Stuck;

impl Flow for Stuck {
    fn handle(_event: Event, conn: &Connection) -> wsflow_sdk::Result {
        conn.send_text("ready")?;
        loop {
            let _ = conn.receive(Some(Duration::from_millis(100)));
        }
    }
}

wsflow_sdk::export!(Stuck);
