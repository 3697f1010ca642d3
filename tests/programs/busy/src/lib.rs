//! On a message `N`: runs N million rounds of a xorshift generator without
//! calling the host, then replies `done N`. A fixed amount of work, so its
//! CPU time does not depend on what else the host runs.

use wsflow_sdk::{Connection, Event, Flow};

struct Busy;

impl Flow for Busy {
    fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
        let millions: u64 = event.text().unwrap_or("0").trim().parse()?;
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..millions * 1_000_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state = std::hint::black_box(state);
        }
        conn.send_text(&format!("done {millions}"))?;
        Ok(())
    }
}

wsflow_sdk::export!(Busy);
