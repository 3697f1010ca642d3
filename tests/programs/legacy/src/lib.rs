//! Echoes every message, and says which connection it came from, with
//! bindings generated from a frozen copy of the WIT as it was first
//! released (`tests/fixtures/wit-0.1.0-base`, before the `groups`
//! interface), not through the SDK: a component built against that
//! contract must keep loading and working in later hosts.
#![expect(
    unsafe_code,
    reason = "wit-bindgen's generated glue, invoked here directly instead of through the SDK"
)]

#[expect(
    clippy::too_many_arguments,
    reason = "generated code lowers a whole `event` record into flat arguments"
)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../fixtures/wit-0.1.0-base",
        world: "flow",
    });
}

use bindings::wsflow::flow::connection::Connection;
use bindings::wsflow::flow::types::{Content, Event, Message};

struct Legacy;

impl bindings::Guest for Legacy {
    fn handle(event: Event, conn: &Connection) -> Result<(), String> {
        let echo = match event.content {
            Content::Text(text) | Content::Json(text) => Message::Text(text),
            Content::Binary(bytes) => Message::Binary(bytes),
            Content::None => return Ok(()),
        };
        conn.send(&echo).map_err(|error| error.to_string())?;
        let from = format!("from connection {}", conn.id());
        conn.send(&Message::Text(from))
            .map_err(|error| error.to_string())
    }
}

bindings::export!(Legacy with_types_in bindings);
