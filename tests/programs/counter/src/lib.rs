//! Replies with how many messages this instance has handled, counting this
//! one: always 1 with a fresh instance per message.

use std::sync::atomic::{AtomicU32, Ordering};

use wsflow_sdk::{Connection, Event, Flow};

static HANDLED: AtomicU32 = AtomicU32::new(0);

struct Counter;

impl Flow for Counter {
    fn handle(_event: Event, conn: &Connection) -> wsflow_sdk::Result {
        let count = HANDLED.fetch_add(1, Ordering::Relaxed) + 1;
        conn.send_text(&count.to_string())?;
        Ok(())
    }
}

wsflow_sdk::export!(Counter);
