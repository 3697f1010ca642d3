//! Rooms chat. A client connects to `/chat/{room}?name=NAME`; `on_connect`
//! checks the name (and that nobody in the room has it), announces the
//! newcomer and starts the connection in the room with its name as the
//! attachment. Every text message is broadcast to the room, except to its
//! sender; `/who` lists the room. `on_close` announces who left.
//!
//! Everything the server sends is one JSON object:
//!
//! ```text
//! {"type":"joined","name":"ann"}            someone came in
//! {"type":"left","name":"ann"}              someone went
//! {"type":"message","from":"ann","text":…}  someone said something
//! {"type":"who","names":["ann","bob"]}      the answer to /who
//! {"type":"error","text":…}                 the answer to a bad command
//! ```
//!
//! Run it (from the repository root) and open http://127.0.0.1:9990/:
//!
//! ```text
//! cargo run --release -p wsflow -- up examples/chat/wsflow.toml
//! ```

use serde_json::json;
use wsflow_sdk::lifecycle::{Closed, ConnectRequest, Decision};
use wsflow_sdk::{Connection, Event, Flow, groups};

struct Chat;

/// The longest name, in characters.
const MAX_NAME: usize = 24;

/// The longest room name, in characters.
const MAX_ROOM: usize = 32;

/// The group of a room.
fn group(room: &str) -> String {
    format!("room:{room}")
}

/// The name a connection keeps as its attachment.
fn name_of(attachment: &[u8]) -> String {
    String::from_utf8_lossy(attachment).into_owned()
}

/// Why `name` cannot be used, if it cannot.
fn check_name(name: &str) -> Option<String> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME || name.trim() != name {
        return Some(format!(
            "a name has 1 to {MAX_NAME} characters and no spaces around it"
        ));
    }
    if name.chars().any(char::is_control) {
        return Some("a name has no control characters".to_owned());
    }
    None
}

/// Why `room` cannot be used, if it cannot.
fn check_room(room: &str) -> Option<String> {
    let fine = !room.is_empty()
        && room.len() <= MAX_ROOM
        && room
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    (!fine).then(|| format!("a room name has 1 to {MAX_ROOM} letters, digits, `-` or `_`"))
}

impl Flow for Chat {
    fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
        let room: String = event.path_param("room")?;
        let group = group(&room);
        let text = event.text().unwrap_or_default().trim();
        if text.is_empty() {
            return Ok(());
        }
        if text == "/who" {
            let mut names: Vec<String> = groups::members(&group)?
                .iter()
                .map(|member| name_of(&member.attachment))
                .collect();
            names.sort();
            return conn.send_json(&json!({ "type": "who", "names": names }));
        }
        if text.starts_with('/') {
            let reply =
                json!({ "type": "error", "text": format!("unknown command {text}; try /who") });
            return conn.send_json(&reply);
        }
        let from = name_of(&conn.attachment());
        let message = json!({ "type": "message", "from": from, "text": text }).to_string();
        groups::publish_except(&group, message, conn.id())?;
        Ok(())
    }

    fn on_connect(request: ConnectRequest) -> Decision {
        let room: String = request.path_param("room").unwrap_or_default();
        let name: String = request.query_param("name").unwrap_or_default();
        if let Some(problem) = check_room(&room).or_else(|| check_name(&name)) {
            return Decision::reject(400, problem);
        }
        let group = group(&room);
        match groups::members(&group) {
            Ok(members)
                if members
                    .iter()
                    .any(|member| name_of(&member.attachment) == name) =>
            {
                return Decision::reject(409, format!("{name} is already in {room}"));
            }
            Ok(_) => {}
            // A crowded room: names are not checked, the room still works.
            Err(groups::GroupError::TooManyToList) => {}
            Err(error) => {
                return Decision::reject(503, format!("the room is unavailable: {error:?}"));
            }
        }
        let _ = groups::publish(
            &group,
            json!({ "type": "joined", "name": name }).to_string(),
        );
        Decision::accept().attachment(name.into_bytes()).join(group)
    }

    fn on_close(closed: Closed) -> wsflow_sdk::Result {
        let name = name_of(closed.attachment());
        let left = json!({ "type": "left", "name": name }).to_string();
        for group in closed.groups() {
            groups::publish(group, left.as_str())?;
        }
        Ok(())
    }
}

wsflow_sdk::export!(Chat);
