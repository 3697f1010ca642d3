//! Data mode: on a message `GROUP SIZE MS`, publishes SIZE bytes to GROUP
//! as fast as `publish` returns, for MS milliseconds, then replies
//! `blasted N, U unavailable` (N publishes, U of them answered
//! `unavailable`). A tenant flooding its cluster link.

use std::time::{Duration, Instant};

use wsflow_sdk::groups::{self, GroupError};
use wsflow_sdk::{Connection, Event, Flow};

struct Blast;

impl Flow for Blast {
    fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
        let request = event.text().unwrap_or_default();
        let mut words = request.split_whitespace();
        let (Some(group), Some(Ok(size)), Some(Ok(ms))) = (
            words.next(),
            words.next().map(str::parse::<usize>),
            words.next().map(str::parse::<u64>),
        ) else {
            return Err(wsflow_sdk::Error::msg("expected `GROUP SIZE MS`"));
        };
        let payload = vec![0x42u8; size];
        let until = Instant::now() + Duration::from_millis(ms);
        let (mut published, mut unavailable) = (0u64, 0u64);
        while Instant::now() < until {
            match groups::publish(group, payload.as_slice()) {
                Ok(()) => {}
                Err(GroupError::Unavailable) => unavailable += 1,
                Err(error) => return Err(wsflow_sdk::Error::msg(error.name())),
            }
            published += 1;
        }
        conn.send_text(&format!("blasted {published}, {unavailable} unavailable"))?;
        Ok(())
    }
}

wsflow_sdk::export!(Blast);
