//! On any message: allocates and touches 1 MiB blocks until allocation
//! fails (the guest then aborts).

use wsflow_sdk::{Connection, Event, Flow};

struct Bomb;

impl Flow for Bomb {
    fn handle(_event: Event, _conn: &Connection) -> wsflow_sdk::Result {
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        loop {
            blocks.push(vec![0x5a; 1 << 20]);
            std::hint::black_box(&blocks);
        }
    }
}

wsflow_sdk::export!(Bomb);
