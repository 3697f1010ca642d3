//! `fail` makes the flow return an error, `panic` makes it trap; anything
//! else is echoed.

use wsflow_sdk::{Connection, Error, Event, Flow};

struct Flaky;

impl Flow for Flaky {
    fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
        match event.text() {
            Some("fail") => Err(Error::msg("asked to fail")),
            Some("panic") => panic!("asked to panic"),
            _ => {
                if let Some(message) = event.message() {
                    conn.send(message)?;
                }
                Ok(())
            }
        }
    }
}

wsflow_sdk::export!(Flaky);
