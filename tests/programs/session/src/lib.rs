//! Connection mode: says `ready`, then echoes each message with its number
//! until `bye` (answered with `bye`, then the flow returns). When the client
//! closes, logs `client closed connection N after M message(s) from PEER`
//! and returns.

use wsflow_sdk::{Connection, Event, Flow, Message};

struct Session;

impl Flow for Session {
    fn handle(_event: Event, conn: &Connection) -> wsflow_sdk::Result {
        conn.send_text("ready")?;
        let mut count = 0u32;
        loop {
            match conn.receive(None)? {
                None => {
                    wsflow_sdk::info!(
                        "client closed connection {} after {count} message(s) from {}",
                        conn.id(),
                        conn.peer_addr()
                    );
                    return Ok(());
                }
                Some(Message::Text(text)) if text == "bye" => {
                    conn.send_text("bye")?;
                    return Ok(());
                }
                Some(Message::Text(text)) => {
                    count += 1;
                    conn.send_text(&format!("{count}:{text}"))?;
                }
                Some(Message::Binary(bytes)) => {
                    count += 1;
                    conn.send_binary(&bytes)?;
                }
            }
        }
    }
}

wsflow_sdk::export!(Session);
