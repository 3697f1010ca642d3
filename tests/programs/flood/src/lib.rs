//! Connection mode: on a message `N SIZE`, sends N binary messages of SIZE
//! bytes as fast as `send` lets it, logging `flood sent I` every 100
//! messages, then `flood done` and a final text message `done`.

use wsflow_sdk::{Connection, Event, Flow};

struct Flood;

impl Flow for Flood {
    fn handle(_event: Event, conn: &Connection) -> wsflow_sdk::Result {
        let Some(request) = conn.receive_text(None)? else {
            return Ok(());
        };
        let mut parts = request.split_whitespace().map(str::parse::<usize>);
        let (Some(Ok(count)), Some(Ok(size))) = (parts.next(), parts.next()) else {
            return Err(wsflow_sdk::Error::msg("expected `COUNT SIZE`"));
        };
        let payload = vec![0xabu8; size];
        for i in 1..=count {
            conn.send_binary(&payload)?;
            if i % 100 == 0 {
                wsflow_sdk::info!("flood sent {i} on {}", conn.peer_addr());
            }
        }
        wsflow_sdk::info!("flood done on {}", conn.peer_addr());
        conn.send_text("done")?;
        Ok(())
    }
}

wsflow_sdk::export!(Flood);
