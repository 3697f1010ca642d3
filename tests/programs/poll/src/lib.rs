//! Connection mode: says `ready`, then on `receive` calls `receive` with a
//! zero timeout in a loop forever, and on `send` sends `tick` in a loop
//! until a send fails. Either way it spends its time in host calls, never
//! waiting for the client.

use std::time::Duration;

use wsflow_sdk::{Connection, Event, Flow};

struct Poll;

impl Flow for Poll {
    fn handle(_event: Event, conn: &Connection) -> wsflow_sdk::Result {
        conn.send_text("ready")?;
        match conn.receive_text(None)?.as_deref() {
            Some("receive") => loop {
                let _ = conn.receive(Some(Duration::ZERO));
            },
            Some("send") => loop {
                conn.send_text("tick")?;
            },
            _ => Ok(()),
        }
    }
}

wsflow_sdk::export!(Poll);
