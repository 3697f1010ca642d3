//! Drives the `groups` interface from text commands, one per message, in
//! data mode (each in a fresh instance) or connection mode (one execution
//! reading them all). Every command is answered with one line that starts
//! with `ok` or `error NAME` (the WIT error's name); what the room delivers
//! from others arrives as the published text itself.
//!
//! ```text
//! id                 -> ok id N
//! join G | leave G   -> ok joined G | ok left G
//! groups             -> ok groups G1,G2
//! name X | me        -> ok named X | ok me X        (the attachment)
//! pub G TEXT         -> ok published                 (everyone in G but me)
//! all G TEXT         -> ok published                 (everyone in G)
//! big G SIZE TEXT    -> ok published                 (TEXT and SIZE bytes of padding, but me)
//! bin G TEXT         -> ok published                 (TEXT as a binary message, but me)
//! burst G N SIZE     -> ok burst N                   (`b-I` and SIZE bytes of padding, I = 0..N, but me)
//! to ID TEXT         -> ok sent
//! count G            -> ok count G N
//! who G              -> ok who G ID=NAME ID=NAME ...
//! ```

use wsflow_sdk::groups::{self, GroupError};
use wsflow_sdk::{Connection, Event, Flow, Mode};

struct Room;

impl Flow for Room {
    fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
        if event.mode() == Mode::Connection {
            while let Some(command) = conn.receive_text(None)? {
                reply(conn, &command)?;
            }
            return Ok(());
        }
        let command = event.text().unwrap_or_default().to_owned();
        reply(conn, &command)
    }
}

fn reply(conn: &Connection, command: &str) -> wsflow_sdk::Result {
    let answer = match run(conn, command) {
        Ok(answer) => format!("ok {answer}"),
        Err(error) => format!("error {}", error.name()),
    };
    conn.send_text(&answer)?;
    Ok(())
}

fn run(conn: &Connection, command: &str) -> Result<String, GroupError> {
    let mut words = command.splitn(3, ' ');
    let verb = words.next().unwrap_or_default();
    let first = words.next().unwrap_or_default();
    let rest = words.next().unwrap_or_default();
    Ok(match verb {
        "id" => format!("id {}", conn.id()),
        "join" => {
            conn.join(first)?;
            format!("joined {first}")
        }
        "leave" => {
            conn.leave(first)?;
            format!("left {first}")
        }
        "groups" => format!("groups {}", conn.groups().join(",")),
        "name" => {
            conn.set_attachment(first.as_bytes())?;
            format!("named {first}")
        }
        "me" => format!("me {}", String::from_utf8_lossy(&conn.attachment())),
        "pub" => {
            groups::publish_except(first, rest, conn.id())?;
            "published".into()
        }
        "all" => {
            groups::publish(first, rest)?;
            "published".into()
        }
        "big" => {
            let (size, text) = rest.split_once(' ').unwrap_or((rest, ""));
            let size: usize = size.parse().unwrap_or(0);
            let padded = format!("{text} {}", "x".repeat(size));
            groups::publish_except(first, padded, conn.id())?;
            "published".into()
        }
        "burst" => {
            let (count, size) = rest.split_once(' ').unwrap_or((rest, "0"));
            let count: usize = count.parse().unwrap_or(0);
            let padding = "x".repeat(size.parse().unwrap_or(0));
            for i in 0..count {
                groups::publish_except(first, format!("b-{i} {padding}"), conn.id())?;
            }
            format!("burst {count}")
        }
        "bin" => {
            groups::publish_except(first, rest.as_bytes(), conn.id())?;
            "published".into()
        }
        "to" => {
            let id = first.parse().unwrap_or(u64::MAX);
            groups::send_to(id, rest)?;
            "sent".into()
        }
        "count" => format!("count {first} {}", groups::member_count(first)?),
        "who" => {
            let listed: Vec<String> = groups::members(first)?
                .iter()
                .map(|m| format!("{}={}", m.id, m.attachment_text().unwrap_or("?")))
                .collect();
            format!("who {first} {}", listed.join(" "))
        }
        _ => format!("unknown command {verb}"),
    })
}

wsflow_sdk::export!(Room);
