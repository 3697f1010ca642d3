//! Rooms chat. A client connects to `/chat/{room}?name=NAME[&since=POS]`;
//! `on_connect` checks the name (and that nobody in the room has it),
//! sends the room's topic first, then the room's recent messages, and
//! starts the connection in the room with its name as the attachment.
//! Every text message is broadcast to the room, except to its sender;
//! `/who` lists the room, `/topic` shows or sets its topic, `/stats` tells
//! how many messages it has had.
//!
//! Everything the server sends is one JSON object:
//!
//! ```text
//! {"type":"joined","name":"ann","pos":P}            someone came in
//! {"type":"left","name":"ann","pos":P}              someone went
//! {"type":"message","from":"ann","text":…,"pos":P}  someone said something
//! {"type":"topic","text":…,"by":"ann"}              first to a newcomer; /topic TEXT, to
//!                                                   the room (with "pos"); /topic alone
//!                                                   (null: none)
//! {"type":"recovered","complete":true}              after what a client back missed
//! {"type":"who","names":["ann","bob"]}              the answer to /who
//! {"type":"stats","messages":12}                    the answer to /stats
//! {"type":"error","text":…}                         a bad command, a message not sent
//! ```
//!
//! History and reconnecting: every room keeps its last 100 lines for 10
//! minutes (`[[history]]` in the manifest), and each line the room gets
//! carries its position `"pos":"EPOCH:OFFSET"`. A newcomer gets, after
//! the topic, the room's newest 50 lines, oldest first (the last is its own
//! `joined`), then the live ones. A page whose socket dropped reconnects
//! with `&since=POS`, the newest position it showed: it gets the topic,
//! every line it missed, in order, then `{"type":"recovered","complete":
//! true}`, then the live lines, none twice and none lost in between. When
//! the room no longer has everything after POS (more than 100 lines
//! missed, older than 10 minutes, the host restarted, or another host of a
//! cluster, each of which keeps its own history for now), it gets what the
//! room still has and `"complete":false`. What a connection gets of the
//! room as it opens is at most 512 KiB, the newest lines that fit (half
//! its outbound queue): beyond, `"complete":false` too. A `since` that is
//! not a position is refused with 400.
//!
//! Who is told what: a newcomer (no `since`) is announced with `joined`. A
//! client back with `since` is not: the room was not told it left. `left`
//! is announced when a page leaves (its Leave button, 1000; closing the
//! page, 1001; an error), not when its connection drops without a close
//! (1006) or the host closes it to restart (1012, or 1001 while shutting
//! down), since the page is then coming back; a page that drops and never
//! comes back is therefore not announced, and `/who` tells who is there.
//! While the old connection of a dropped page is still open on the host,
//! its name is taken and a reconnect gets 409; the page tries again.
//!
//! A backend announces through the server API (`wsflow up --api ADDR`,
//! with the property `API_TOKEN` set; empty, the default, keeps the app
//! off the API): what it publishes to `room:ROOM` reaches the room and is
//! kept like any line.
//!
//! The topic and the count live in the app's key-value store `chat`
//! (`topic:ROOM`, `messages:ROOM`), so they outlive the connections and a
//! restart of the host (SQLite under `--data-dir`), and every host of a
//! cluster sees the same ones (JetStream with `--cluster`). The count goes
//! up by one atomic increment per message published.
//!
//! Moderation: when the app property `MODERATION_URL` is set, every message
//! is first POSTed there as `{"room":…,"from":…,"text":…}`. `{"allow":
//! true}` publishes it, `{"allow": false}` keeps it from the room and the
//! sender gets an error. The service must answer within
//! `MODERATION_TIMEOUT_MS` (1,000 ms) to connect and again to answer; if it
//! is down, slow, or answers anything but a 2xx with `{"allow": BOOL}`,
//! the message is not sent (fail closed): the sender is told so and the
//! app logs one warning. Only the sender waits for the check; the room
//! and other senders go on (each connection's messages run as executions
//! of their own). The app has at most `max_outbound_requests_in_flight`
//! (32) checks waiting at once; a message beyond them is not sent either.
//!
//! Run it (from the repository root) and open http://127.0.0.1:9990/:
//!
//! ```text
//! cargo run --release -p wsflow -- up examples/chat/wsflow.toml
//! WSFLOW_PROP_API_TOKEN=$(openssl rand -hex 32) \
//!     cargo run --release -p wsflow -- up --api 127.0.0.1:9091 examples/chat/wsflow.toml
//! WSFLOW_PROP_MODERATION_URL=http://127.0.0.1:8080/check \
//!     cargo run --release -p wsflow -- up examples/chat/wsflow.toml
//! ```

use std::time::Duration;

use serde_json::{Value, json};
use wsflow_sdk::history::{self, Entry, HistoryError, Position};
use wsflow_sdk::kv::{KvError, Store};
use wsflow_sdk::lifecycle::{Closed, ConnectRequest, Decision};
use wsflow_sdk::{Connection, Event, Flow, Message, groups, http, log, opening};

struct Chat;

/// The longest name, in characters.
const MAX_NAME: usize = 24;

/// The longest room name, in characters.
const MAX_ROOM: usize = 32;

/// The longest topic, in characters: a line above the messages, not a
/// place to keep documents.
const MAX_TOPIC: usize = 200;

/// How many of the room's newest messages a newcomer gets first.
const RECENT: u32 = 50;

/// The most missed messages a client back after a drop gets first (the
/// room keeps 100: `[[history]] size`); the host sends it any newer ones
/// as it joins.
const MISSED: u32 = 100;

/// The most bytes of kept lines queued for a connection as it opens,
/// newest first: half its outbound queue (`queue_per_connection`, 1 MiB),
/// so that a room of large lines still lets everyone in.
const CATCH_UP_BYTES: usize = 512 * 1024;

/// The app's key-value store (`[key_value.stores]` in the manifest).
const STORE: &str = "chat";

/// How long the moderation service has to connect, and then to answer,
/// unless `MODERATION_TIMEOUT_MS` says otherwise: a sender waits at most
/// about this long to learn that a message was not sent.
const MODERATION_TIMEOUT: Duration = Duration::from_secs(1);

/// The group of a room.
fn group(room: &str) -> String {
    format!("room:{room}")
}

/// The key of a room's topic: `{"text":…,"by":…}`.
fn topic_key(room: &str) -> String {
    format!("topic:{room}")
}

/// The key of a room's message count.
fn count_key(room: &str) -> String {
    format!("messages:{room}")
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

/// Why `topic` cannot be used, if it cannot.
fn check_topic(topic: &str) -> Option<String> {
    if topic.chars().nth(MAX_TOPIC).is_some() {
        return Some(format!("a topic has at most {MAX_TOPIC} characters"));
    }
    if topic.chars().any(char::is_control) {
        return Some("a topic has no control characters (one line of text)".to_owned());
    }
    None
}

/// An error answer to the sender.
fn error(text: impl Into<String>) -> Value {
    json!({ "type": "error", "text": text.into() })
}

/// What the moderation service said about a message.
enum Verdict {
    Allow,
    Deny,
    /// No usable answer: why, for the log.
    Unavailable(String),
}

/// Ask the service at `url` about `text`, from `from` in `room`.
fn moderate(url: &str, room: &str, from: &str, text: &str) -> Verdict {
    let timeout = wsflow_sdk::property("MODERATION_TIMEOUT_MS")
        .and_then(|ms| ms.trim().parse().ok())
        .map_or(MODERATION_TIMEOUT, Duration::from_millis);
    let request = http::Request::post(url)
        .json(&json!({ "room": room, "from": from, "text": text }))
        .timeout(timeout);
    let response = match request.send().and_then(http::Response::error_for_status) {
        Ok(response) => response,
        Err(error) => return Verdict::Unavailable(error.to_string()),
    };
    match response
        .json::<Value>()
        .map(|answer| answer["allow"].as_bool())
    {
        Ok(Some(true)) => Verdict::Allow,
        Ok(Some(false)) => Verdict::Deny,
        _ => Verdict::Unavailable(format!(
            "the answer is not {{\"allow\": true|false}}: {:.80}",
            response.text()
        )),
    }
}

impl Chat {
    /// `{"type":"topic",…}` for the room's topic (text and by null: none).
    fn current_topic(room: &str) -> Result<Value, KvError> {
        let topic: Value = Store::open(STORE)?
            .get_json(&topic_key(room))?
            .unwrap_or_default();
        Ok(json!({ "type": "topic", "text": topic["text"], "by": topic["by"] }))
    }

    /// `/topic`: show the room's topic; `/topic TEXT`: set it and tell the
    /// room.
    fn topic(room: &str, from: &str, text: &str, conn: &Connection) -> wsflow_sdk::Result {
        if text.is_empty() {
            return conn.send_json(&Self::current_topic(room)?);
        }
        if let Some(problem) = check_topic(text) {
            return conn.send_json(&error(problem));
        }
        let topic = json!({ "text": text, "by": from });
        Store::open(STORE)?.set_json(&topic_key(room), &topic)?;
        let told = json!({ "type": "topic", "text": text, "by": from });
        groups::publish(&group(room), told.to_string())?;
        Ok(())
    }

    /// A message for the room: checked by the moderation service if there
    /// is one, published to everyone else in the room, counted.
    fn say(room: &str, from: &str, text: &str, conn: &Connection) -> wsflow_sdk::Result {
        let moderation = wsflow_sdk::property("MODERATION_URL").unwrap_or_default();
        let moderation = moderation.trim();
        if !moderation.is_empty() {
            match moderate(moderation, room, from, text) {
                Verdict::Allow => {}
                Verdict::Deny => {
                    let refused = "your message was not sent: the moderation service refused it";
                    return conn.send_json(&error(refused));
                }
                Verdict::Unavailable(why) => {
                    log::warn(&format!(
                        "moderation service {moderation} gave no verdict, a message from \
                         {from} in {room} was not sent: {why}"
                    ));
                    let unsent = "your message was not sent: the moderation service did not \
                                  answer; try again";
                    return conn.send_json(&error(unsent));
                }
            }
        }
        let message = json!({ "type": "message", "from": from, "text": text });
        groups::publish_except(&group(room), message.to_string(), conn.id())?;
        Store::open(STORE)?.increment(&count_key(room), 1)?;
        Ok(())
    }

    /// Queue what the connection gets of the room before the live
    /// messages, and join it from there: without `since`, the newest
    /// [`RECENT`] lines; with it, what came after it and then
    /// `{"type":"recovered","complete":…}`. Only the newest lines that fit
    /// in [`CATCH_UP_BYTES`] are sent (`complete` is then false). Joining
    /// from the last position read, nothing published meanwhile is lost or
    /// sent twice.
    fn catch_up(group: &str, since: Option<Position>) -> Result<(), HistoryError> {
        let limit = if since.is_some() { MISSED } else { RECENT };
        let page = history::read(group, since, limit)?;
        let fit = newest_that_fit(&page.entries, CATCH_UP_BYTES);
        for entry in fit {
            opening::send_first(entry.message.clone())?;
        }
        if since.is_some() {
            let complete = page.complete && fit.len() == page.entries.len();
            let recovered = json!({ "type": "recovered", "complete": complete });
            opening::send_first(recovered.to_string())?;
        }
        let from = match (page.entries.last(), since) {
            (Some(last), _) => last.position,
            // Nothing missed: from where the client was.
            (None, Some(since)) if page.complete => since,
            (None, _) => page.head,
        };
        opening::join_from(group, from)
    }
}

/// The newest of `entries` (oldest first) that hold at most `bytes`
/// together, oldest first: no gap between them and the live lines.
fn newest_that_fit(entries: &[Entry], bytes: usize) -> &[Entry] {
    let mut total = 0;
    let mut first = entries.len();
    while first > 0 {
        total += match &entries[first - 1].message {
            Message::Text(text) => text.len(),
            Message::Binary(data) => data.len(),
        };
        if total > bytes {
            break;
        }
        first -= 1;
    }
    &entries[first..]
}

/// Whether a connection that ended with `code` and `reason` is expected
/// back: it dropped without a close (1006), or the host closed it to
/// restart (1012, or 1001 as it shut down). The page reconnects by itself
/// then, so the room is not told that it left.
fn coming_back(code: u16, reason: &str) -> bool {
    matches!(code, 1006 | 1012) || (code == 1001 && reason == "server shutting down")
}

impl Flow for Chat {
    fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
        let room: String = event.path_param("room")?;
        let group = group(&room);
        let text = event.text().unwrap_or_default().trim();
        if text.is_empty() {
            return Ok(());
        }
        let from = name_of(&conn.attachment());
        if text == "/who" {
            let mut names: Vec<String> = groups::members(&group)?
                .iter()
                .map(|member| name_of(&member.attachment))
                .collect();
            names.sort();
            return conn.send_json(&json!({ "type": "who", "names": names }));
        }
        if text == "/stats" {
            let messages: u64 = Store::open(STORE)?
                .get_json(&count_key(&room))?
                .unwrap_or(0);
            return conn.send_json(&json!({ "type": "stats", "messages": messages }));
        }
        if let Some(topic) = text.strip_prefix("/topic")
            && (topic.is_empty() || topic.starts_with(' '))
        {
            return Self::topic(&room, &from, topic.trim(), conn);
        }
        if text.starts_with('/') {
            let unknown = format!("unknown command {text:.40}; try /who, /topic or /stats");
            return conn.send_json(&error(unknown));
        }
        Self::say(&room, &from, text, conn)
    }

    fn on_connect(request: ConnectRequest) -> Decision {
        let room: String = request.path_param("room").unwrap_or_default();
        let name: String = request.query_param("name").unwrap_or_default();
        if let Some(problem) = check_room(&room).or_else(|| check_name(&name)) {
            return Decision::reject(400, problem);
        }
        let since = match request.query_param::<Option<String>>("since") {
            Ok(None) => None,
            Ok(Some(since)) => match since.parse::<Position>() {
                Ok(since) => Some(since),
                Err(problem) => return Decision::reject(400, format!("since: {problem}")),
            },
            Err(problem) => return Decision::reject(400, format!("since: {problem}")),
        };
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
        // The room's topic is the newcomer's first message, before anything
        // the room says (opening messages go out before group messages).
        match Self::current_topic(&room) {
            Ok(topic) => {
                let _ = opening::send_first(topic.to_string());
            }
            Err(error) => log::warn(&format!("the topic of {room} is unavailable: {error}")),
        }
        // A newcomer is announced, and its own `joined` (with its position)
        // ends the history it gets; a client back after a drop is not.
        if since.is_none() {
            let _ = groups::publish(
                &group,
                json!({ "type": "joined", "name": name }).to_string(),
            );
        }
        if let Err(error) = Self::catch_up(&group, since) {
            return Decision::reject(503, format!("the room is unavailable: {}", error.name()));
        }
        Decision::accept().attachment(name.into_bytes())
    }

    fn on_close(closed: Closed) -> wsflow_sdk::Result {
        if coming_back(closed.code(), closed.reason()) {
            return Ok(());
        }
        let name = name_of(closed.attachment());
        let left = json!({ "type": "left", "name": name }).to_string();
        for group in closed.groups() {
            groups::publish(group, left.as_str())?;
        }
        Ok(())
    }
}

wsflow_sdk::export!(Chat);
