//! Chat session: a connection-mode flow that holds a conversation. The host
//! runs it once per connection; it asks for the client's name, then answers
//! each message until the client says `bye`, goes quiet for a minute, or
//! closes. When the flow returns, the host closes the connection (1000).
//!
//! Build and run (from the repository root):
//!
//! ```text
//! cargo run --release -p wsflow -- up examples/chat-session/wsflow.toml
//! ```
//!
//! Then connect to `ws://127.0.0.1:9998/chat/{room}`, e.g. `/chat/lobby`.
//! A message `{"shout": "hi"}` is answered in capitals; any other text is
//! answered as it is; a binary message is answered with a request for text.

use std::time::Duration;

use wsflow_sdk::{Connection, Event, Flow, ReceiveTextError};

/// A client silent for this long is said goodbye to.
const IDLE: Duration = Duration::from_secs(60);

/// The answer to a binary message: this chat speaks text.
const PLEASE_TEXT: &str = "please send text; binary messages are not read here";

#[derive(serde::Deserialize)]
struct Shout {
    shout: String,
}

struct ChatSession;

impl Flow for ChatSession {
    fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
        let room: String = event.path_param("room")?;
        let greeting = wsflow_sdk::property("GREETING").unwrap_or_else(|| "welcome".into());
        conn.send_text(&format!("{greeting} to #{room}! what is your name?"))?;

        let name = loop {
            match conn.receive_text(Some(IDLE)) {
                Ok(Some(name)) => break name.trim().to_owned(),
                Ok(None) => return Ok(()),
                Err(ReceiveTextError::Binary(_)) => conn.send_text(PLEASE_TEXT)?,
                Err(error) => return Err(error.into()),
            }
        };
        wsflow_sdk::info!("{name} joined #{room} (connection {})", conn.id());
        conn.send_text(&format!("hello, {name}. say `bye` to leave."))?;

        let mut count = 0u32;
        loop {
            let text = match conn.receive_text(Some(IDLE)) {
                Ok(Some(text)) => text,
                Ok(None) => {
                    wsflow_sdk::info!("{name} left #{room}");
                    return Ok(());
                }
                Err(ReceiveTextError::Binary(_)) => {
                    conn.send_text(PLEASE_TEXT)?;
                    continue;
                }
                Err(ReceiveTextError::Timeout) => {
                    conn.send_text("you were quiet for a while; goodbye")?;
                    return Ok(());
                }
                Err(error) => return Err(error.into()),
            };
            if text.trim() == "bye" {
                conn.send_text(&format!("goodbye, {name}: {count} message(s)"))?;
                return Ok(());
            }
            count += 1;
            let reply = match serde_json::from_str::<Shout>(&text) {
                Ok(shout) => shout.shout.to_uppercase(),
                Err(_) => text,
            };
            conn.send_text(&format!("{name}: {reply}"))?;
        }
    }
}

wsflow_sdk::export!(ChatSession);
