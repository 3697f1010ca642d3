//! Checks that the memory a fresh instance starts with is what the
//! component says (zero-initialised statics all zero, an initialised one at
//! its initial value), then writes every byte of it and replies `clean` or
//! `dirty: WHAT`. With an instance per message, every reply must be
//! `clean`, however the host recycles the memory of earlier instances.
//!
//! `SMALL` sits in the first pages of linear memory; `LARGE` (1 MiB)
//! reaches well past what the host's pool keeps resident per slot.

use std::sync::atomic::{AtomicU8, Ordering};

use wsflow_sdk::{Connection, Event, Flow};

static SMALL: [AtomicU8; 4096] = [const { AtomicU8::new(0) }; 4096];
static LARGE: [AtomicU8; 1 << 20] = [const { AtomicU8::new(0) }; 1 << 20];
static INITIALISED: [AtomicU8; 64] = [const { AtomicU8::new(7) }; 64];

/// The first byte of `bytes` that is not `expected`, then every byte set to
/// `0x5a`.
fn check_and_scribble(bytes: &[AtomicU8], expected: u8) -> Option<usize> {
    let found = bytes
        .iter()
        .position(|byte| byte.load(Ordering::Relaxed) != expected);
    for byte in bytes {
        byte.store(0x5a, Ordering::Relaxed);
    }
    found
}

struct Scribble;

impl Flow for Scribble {
    fn handle(_event: Event, conn: &Connection) -> wsflow_sdk::Result {
        let mut dirty = Vec::new();
        for (name, bytes, expected) in [
            ("small", &SMALL[..], 0),
            ("large", &LARGE[..], 0),
            ("initialised", &INITIALISED[..], 7),
        ] {
            if let Some(at) = check_and_scribble(bytes, expected) {
                dirty.push(format!("{name} at {at}"));
            }
        }
        if dirty.is_empty() {
            conn.send_text("clean")?;
        } else {
            conn.send_text(&format!("dirty: {}", dirty.join(", ")))?;
        }
        Ok(())
    }
}

wsflow_sdk::export!(Scribble);
