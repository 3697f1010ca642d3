//! On any message: logs `spinning`, then loops forever without calling the
//! host.

use wsflow_sdk::{Connection, Event, Flow};

struct Spin;

impl Flow for Spin {
    fn handle(_event: Event, _conn: &Connection) -> wsflow_sdk::Result {
        wsflow_sdk::info!("spinning");
        let mut counter = 0u64;
        loop {
            counter = std::hint::black_box(counter.wrapping_add(1));
        }
    }
}

wsflow_sdk::export!(Spin);
