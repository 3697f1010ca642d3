//! Drives group history (`history`, `opening`) from the request's query
//! and from text commands.
//!
//! `on_connect` (path `/recall/{room}`, group `room:ROOM`):
//! - `first=TEXT`: sends TEXT first;
//! - `since=EPOCH:OFFSET`: sends first what the room kept after it, then
//!   `recovered complete=BOOL`, and joins from the last position read;
//! - `since=new`: as `since`, from the newest (nothing kept is sent);
//! - `from=EPOCH:OFFSET`: joins from there, the host sending what was kept
//!   after it (nothing read in `on_connect`);
//! - `flood=N`: calls `send_first` N times with 1 KiB, then sends first
//!   `flood ok=K error=NAME` (how many it took, the first refusal);
//! - `unkept`: `join_from` a group no `[[history]]` names; sends first
//!   `unkept error=NAME`;
//! - otherwise joins the room as the decision's group.
//!
//! `handle` (data mode), one command per message, answered `ok ...` or
//! `error NAME`; what the room delivers arrives as published:
//!
//! ```text
//! pub TEXT           -> ok pos EPOCH:OFFSET            (to the room, me included)
//! plain G TEXT       -> ok pos none                    (groups.publish-less: history.publish to G)
//! read SINCE LIMIT   -> ok read complete=B head=P N=COUNT TEXT|TEXT...   (SINCE `-`: newest)
//! join-from G POS    -> ok complete=B
//! opening            -> error NAME                     (opening outside on_connect)
//! hostile            -> ok hostile ...                 (extreme arguments, in loops)
//! ```

use wsflow_sdk::history::{self, HistoryError, Position};
use wsflow_sdk::lifecycle::{ConnectRequest, Decision};
use wsflow_sdk::{Connection, Event, Flow, Message, opening};

struct Recall;

fn text(message: &Message) -> String {
    match message {
        Message::Text(text) => text.clone(),
        Message::Binary(bytes) => format!("<{} bytes>", bytes.len()),
    }
}

fn name(error: HistoryError) -> &'static str {
    error.name()
}

impl Flow for Recall {
    fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
        let room: String = event.path_param("room")?;
        let group = format!("room:{room}");
        let command = event.text().unwrap_or_default().to_owned();
        let answer = match run(conn, &group, &command) {
            Ok(answer) => format!("ok {answer}"),
            Err(error) => format!("error {}", name(error)),
        };
        conn.send_text(&answer)?;
        Ok(())
    }

    fn on_connect(request: ConnectRequest) -> Decision {
        let room: String = request.path_param("room").unwrap_or_default();
        let group = format!("room:{room}");
        let query = |name: &str| request.query_param::<Option<String>>(name).ok().flatten();
        if let Some(first) = query("first") {
            let _ = opening::send_first(first);
        }
        if let Some(count) = query("flood") {
            let count: usize = count.parse().unwrap_or(0);
            let chunk = "f".repeat(1024);
            let mut took = 0;
            let mut refused = "none";
            for _ in 0..count {
                match opening::send_first(chunk.as_str()) {
                    Ok(()) => took += 1,
                    Err(error) => {
                        refused = name(error);
                        break;
                    }
                }
            }
            // The summary is refused too once the queue is full: it says
            // so through the decision instead.
            if opening::send_first(format!("flood ok={took} error={refused}")).is_err() {
                return Decision::reject(507, format!("flood ok={took} error={refused}"));
            }
            return Decision::accept().join(group);
        }
        if let Some(from) = query("from") {
            let Ok(from) = from.parse::<Position>() else {
                return Decision::reject(400, "bad position");
            };
            if let Err(error) = opening::join_from(&group, from) {
                return Decision::reject(503, name(error));
            }
            return Decision::accept();
        }
        if query("unkept").is_some() {
            let error = opening::join_from("lobby", Position::default())
                .err()
                .map_or("none", name);
            let _ = opening::send_first(format!("unkept error={error}"));
            return Decision::accept();
        }
        if let Some(since) = query("since") {
            let since = if since == "new" {
                None
            } else {
                match since.parse::<Position>() {
                    Ok(since) => Some(since),
                    Err(error) => return Decision::reject(400, error.to_string()),
                }
            };
            let page = match history::read(&group, since, 1000) {
                Ok(page) => page,
                Err(error) => return Decision::reject(503, name(error)),
            };
            let mut from = page.head;
            if since.is_some() {
                for entry in &page.entries {
                    let _ = opening::send_first(entry.message.clone());
                }
                from = page.entries.last().map_or(page.head, |e| e.position);
                if page.complete && page.entries.is_empty() {
                    from = since.unwrap_or(page.head);
                }
            }
            let _ = opening::send_first(format!("recovered complete={}", page.complete));
            if let Err(error) = opening::join_from(&group, from) {
                return Decision::reject(503, name(error));
            }
            return Decision::accept();
        }
        Decision::accept().join(group)
    }
}

fn run(conn: &Connection, group: &str, command: &str) -> Result<String, HistoryError> {
    let mut words = command.splitn(3, ' ');
    let verb = words.next().unwrap_or_default();
    let first = words.next().unwrap_or_default();
    let rest = words.next().unwrap_or_default();
    Ok(match verb {
        "pub" => {
            let text = [first, rest].join(" ").trim().to_owned();
            let position = history::publish(group, text, None)?;
            format!("pos {}", position.map_or("none".into(), |p| p.to_string()))
        }
        "plain" => {
            let position = history::publish(first, rest, None)?;
            format!("pos {}", position.map_or("none".into(), |p| p.to_string()))
        }
        "read" => {
            let since = (first != "-").then(|| first.parse().unwrap_or_default());
            let limit = rest.parse().unwrap_or(u32::MAX);
            let page = history::read(group, since, limit)?;
            let texts: Vec<String> = page.entries.iter().map(|e| text(&e.message)).collect();
            format!(
                "read complete={} head={} N={} {}",
                page.complete,
                page.head,
                texts.len(),
                texts.join("|")
            )
        }
        "join-from" => {
            let since = rest.parse().unwrap_or_default();
            format!("complete={}", conn.join_from(first, since)?)
        }
        "opening" => {
            opening::send_first("never")?;
            "sent first".into()
        }
        "hostile" => hostile(conn, group),
        _ => format!("unknown command {verb}"),
    })
}

/// Each call with extreme arguments, many times: every answer must be a
/// value, never a trap.
fn hostile(conn: &Connection, group: &str) -> String {
    let mut errors = std::collections::BTreeMap::<&str, usize>::new();
    let mut note = |result: Result<(), HistoryError>| {
        let key = result.err().map_or("ok", name);
        *errors.entry(key).or_default() += 1;
    };
    let huge_name = "g".repeat(1 << 20);
    let far = Position {
        epoch: u64::MAX,
        offset: u64::MAX,
    };
    for _ in 0..200 {
        note(history::read(&huge_name, None, u32::MAX).map(drop));
        note(history::read(group, Some(far), u32::MAX).map(drop));
        note(history::read("lobby", None, 0).map(drop));
        note(history::publish("", "x", Some(u64::MAX)).map(drop));
        note(conn.join_from(&huge_name, far).map(drop));
        note(conn.join_from("lobby", far).map(drop));
        note(opening::join_from(group, far));
    }
    let listed: Vec<String> = errors.iter().map(|(k, n)| format!("{k}={n}")).collect();
    format!("hostile {}", listed.join(" "))
}

wsflow_sdk::export!(Recall);
