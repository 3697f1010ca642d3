//! A connection-mode flow: the host runs `handle` once per connection, and
//! the flow receives and sends until it returns (the host then closes with
//! 1000) or the client closes. State lives as long as the connection: this
//! one numbers the messages it answers, and says goodbye on `bye`.
//!
//! Build and run: `wsflow up` in this directory.

use wsflow_sdk::{Connection, Event, Flow, ReceiveTextError};

struct Session;

impl Flow for Session {
    fn handle(_event: Event, conn: &Connection) -> wsflow_sdk::Result {
        conn.send_text("hello! every message you send comes back numbered; `bye` ends the session")?;
        let mut count = 0u64;
        loop {
            // `None`: wait as long as the client stays connected.
            match conn.receive_text(None) {
                Ok(Some(text)) if text.trim() == "bye" => {
                    conn.send_text(&format!("goodbye after {count} message(s)"))?;
                    return Ok(());
                }
                Ok(Some(text)) => {
                    count += 1;
                    conn.send_text(&format!("{count}: {text}"))?;
                }
                // The client closed.
                Ok(None) => return Ok(()),
                Err(ReceiveTextError::Binary(_)) => conn.send_text("please send text")?,
                Err(error) => return Err(error.into()),
            }
        }
    }
}

wsflow_sdk::export!(Session);
