//! Connection mode, driven by the client's commands. Says `ready`, then:
//!
//! - `sleep MS` / `spin MS`: sleeps, or computes, that long outside
//!   `receive` (logging `puppet: sleeping on PEER` or `puppet: spinning on
//!   PEER` first), then logs `puppet: woke on PEER: receive -> R, send -> S`
//!   with what an immediate `receive` (`closed`, `a message`, `nothing
//!   yet`) and a `send` of `awake` (`sent`, `closed`) returned;
//! - `burst N SIZE`: sends N binary messages of SIZE bytes, logging
//!   `puppet: sent I of N on PEER` after each, then goes back to receiving;
//! - anything else is echoed.
//!
//! Returns once `receive` says the client has closed, logging
//! `puppet: client closed on PEER`.

use std::time::{Duration, Instant};

use wsflow_sdk::{Connection, Event, Flow, Message, SendError};

struct Puppet;

fn spin(duration: Duration) {
    let started = Instant::now();
    let mut counter = 0u64;
    while started.elapsed() < duration {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

fn numbers(args: &str) -> Option<Vec<u64>> {
    args.split_whitespace().map(|n| n.parse().ok()).collect()
}

fn burst(conn: &Connection, count: u64, size: u64) -> wsflow_sdk::Result {
    let payload = vec![0x5au8; usize::try_from(size)?];
    for i in 1..=count {
        conn.send_binary(&payload)?;
        wsflow_sdk::info!("puppet: sent {i} of {count} on {}", conn.peer_addr());
    }
    Ok(())
}

fn nap(conn: &Connection, verb: &str, duration: Duration) {
    if verb == "sleep" {
        wsflow_sdk::info!("puppet: sleeping on {}", conn.peer_addr());
        std::thread::sleep(duration);
    } else {
        wsflow_sdk::info!("puppet: spinning on {}", conn.peer_addr());
        spin(duration);
    }
    let received = match conn.receive(Some(Duration::ZERO)) {
        Ok(None) => "closed",
        Ok(Some(_)) => "a message",
        Err(_) => "nothing yet",
    };
    let sent = match conn.send_text("awake") {
        Ok(()) => "sent",
        Err(SendError::Closed) => "closed",
        Err(SendError::TooLarge) => "too large",
    };
    wsflow_sdk::info!(
        "puppet: woke on {}: receive -> {received}, send -> {sent}",
        conn.peer_addr()
    );
}

impl Flow for Puppet {
    fn handle(_event: Event, conn: &Connection) -> wsflow_sdk::Result {
        conn.send_text("ready")?;
        loop {
            let Some(message) = conn.receive(None)? else {
                wsflow_sdk::info!("puppet: client closed on {}", conn.peer_addr());
                return Ok(());
            };
            let command = match &message {
                Message::Text(text) => text.split_once(' '),
                Message::Binary(_) => None,
            };
            match command.and_then(|(verb, args)| Some((verb, numbers(args)?))) {
                Some((verb @ ("sleep" | "spin"), args)) if args.len() == 1 => {
                    nap(conn, verb, Duration::from_millis(args[0]));
                }
                Some(("burst", args)) if args.len() == 2 => burst(conn, args[0], args[1])?,
                _ => conn.send(message)?,
            }
        }
    }
}

wsflow_sdk::export!(Puppet);
