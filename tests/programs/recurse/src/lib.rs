//! On any message: recurses without end until the stack is exhausted.

use wsflow_sdk::{Connection, Event, Flow};

struct Recurse;

fn descend(depth: u64, pad: [u64; 16]) -> u64 {
    // Never true: the stack runs out long before.
    if depth == u64::MAX {
        return 0;
    }
    let next = std::hint::black_box(pad);
    descend(depth + 1, next) + next[(depth % 16) as usize]
}

impl Flow for Recurse {
    fn handle(_event: Event, _conn: &Connection) -> wsflow_sdk::Result {
        std::hint::black_box(descend(0, [1; 16]));
        Ok(())
    }
}

wsflow_sdk::export!(Recurse);
