//! On a message `N`: writes N lines each to stdout, stderr and the log,
//! then replies `done`.

use std::io::Write as _;

use wsflow_sdk::{Connection, Event, Flow};

struct Chatter;

impl Flow for Chatter {
    fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
        let lines: u32 = event.text().unwrap_or("0").trim().parse()?;
        let mut stdout = std::io::stdout().lock();
        let mut stderr = std::io::stderr().lock();
        for i in 0..lines {
            writeln!(stdout, "chatter stdout line {i}")?;
            writeln!(stderr, "chatter stderr line {i}")?;
            wsflow_sdk::info!("chatter log line {i}");
        }
        stdout.flush()?;
        conn.send_text("done")?;
        Ok(())
    }
}

wsflow_sdk::export!(Chatter);
