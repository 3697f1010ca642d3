//! Lifecycle hooks, driven by the request's query.
//!
//! `on_connect` looks at `token`:
//! - `reject`: 401 `bad token`; `teapot`: status 200 (not allowed);
//! - `trap`: panics; `bad-proto`: chooses a subprotocol nobody offered;
//! - `bad-group`: chooses the group `no spaces`;
//! - `many-groups`: chooses 100,000 groups (10 MiB of names);
//! - anything else (or none): publishes `joined NAME` to the room, then
//!   accepts with the attachment NAME (`name`, default `anon`), in the
//!   group ROOM (`room`, default `lobby`), answering `gate.v1` if offered.
//!
//! `handle` (data mode): `trap` panics, `who` lists the room as
//! `who NAME,NAME`, `bye CODE REASON` closes with that code, anything else
//! is echoed as `echo TEXT`.
//!
//! `on_close` logs `gate: closed id=ID code=CODE reason=REASON
//! groups=G,G attachment=NAME` and publishes `left NAME` to each group.

use wsflow_sdk::lifecycle::{Closed, ConnectRequest, Decision};
use wsflow_sdk::{Connection, Event, Flow, groups};

struct Gate;

fn room(request: &ConnectRequest) -> String {
    request
        .query_param::<Option<String>>("room")
        .ok()
        .flatten()
        .unwrap_or_else(|| "lobby".to_owned())
}

impl Flow for Gate {
    fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
        let text = event.text().unwrap_or_default();
        if text == "trap" {
            panic!("asked to trap");
        }
        if text == "who" {
            let room = conn.groups().into_iter().next().unwrap_or_default();
            let names: Vec<String> = groups::members(&room)?
                .iter()
                .map(|member| member.attachment_text().unwrap_or("?").to_owned())
                .collect();
            return Ok(conn.send_text(&format!("who {}", names.join(",")))?);
        }
        if let Some(rest) = text.strip_prefix("bye ") {
            let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            conn.close(code.parse()?, reason)?;
            return Ok(());
        }
        conn.send_text(&format!("echo {text}"))?;
        Ok(())
    }

    fn on_connect(request: ConnectRequest) -> Decision {
        let token: Option<String> = request.query_param("token").ok().flatten();
        match token.as_deref() {
            Some("reject") => return Decision::reject(401, "bad token"),
            Some("teapot") => return Decision::reject(200, "fine"),
            Some("trap") => panic!("asked to trap in on_connect"),
            Some("bad-proto") => return Decision::accept().subprotocol("nobody.offered.this"),
            Some("bad-group") => return Decision::accept().join("no spaces"),
            Some("many-groups") => {
                // 100,000 valid names of 100 bytes: 10 MiB for the host to
                // copy out of the guest, far past any app's allowance.
                return (0..100_000).fold(Decision::accept(), |decision, i| {
                    decision.join(format!("{i:0>100}"))
                });
            }
            _ => {}
        }
        let name: String = request
            .query_param::<Option<String>>("name")
            .ok()
            .flatten()
            .unwrap_or_else(|| "anon".to_owned());
        let room = room(&request);
        let _ = groups::publish(&room, format!("joined {name}"));
        let mut decision = Decision::accept().attachment(name.into_bytes()).join(room);
        if request
            .subprotocols()
            .iter()
            .any(|offered| offered == "gate.v1")
        {
            decision = decision.subprotocol("gate.v1");
        }
        decision
    }

    fn on_close(closed: Closed) -> wsflow_sdk::Result {
        let name = String::from_utf8_lossy(closed.attachment()).into_owned();
        wsflow_sdk::info!(
            "gate: closed id={} code={} reason={} groups={} attachment={name}",
            closed.id(),
            closed.code(),
            closed.reason(),
            closed.groups().join(",")
        );
        for group in closed.groups() {
            groups::publish(group, format!("left {name}"))?;
        }
        Ok(())
    }
}

wsflow_sdk::export!(Gate);
