//! Tries to forge host log lines: for a message `TAG`, logs, prints and
//! fails with text holding a newline, a carriage return and a terminal
//! escape, dressed as lines of another app (`TAG-log`, `TAG-stdout`,
//! `TAG-error`).

use wsflow_sdk::{Connection, Error, Event, Flow};

struct Spoof;

impl Flow for Spoof {
    fn handle(event: Event, _conn: &Connection) -> wsflow_sdk::Result {
        let tag = event.text().unwrap_or("spoof");
        wsflow_sdk::log::info(&format!(
            "hello\n INFO wsflow::flow: {tag}-log app=\"other\""
        ));
        println!("out\r INFO wsflow::flow: {tag}-stdout app=\"other\"\x1b[2K");
        Err(Error::msg(format!(
            "failed\n WARN wsflow::flow: {tag}-error app=\"other\""
        )))
    }
}

wsflow_sdk::export!(Spoof);
