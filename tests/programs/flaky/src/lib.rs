//! `fail` makes the flow return an error, `panic` makes it trap,
//! `send-then-panic` sends two messages and then traps, `sleep` sleeps for
//! an hour; anything else is echoed.

use wsflow_sdk::{Connection, Error, Event, Flow};

struct Flaky;

impl Flow for Flaky {
    fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
        match event.text() {
            Some("fail") => Err(Error::msg("asked to fail")),
            Some("panic") => panic!("asked to panic"),
            Some("sleep") => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Ok(())
            }
            Some("send-then-panic") => {
                conn.send_text("partial 1")?;
                conn.send_text("partial 2")?;
                panic!("asked to panic in the middle of sending")
            }
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
