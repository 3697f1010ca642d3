//! Limits and lifecycle: message size, connection count, origins, idle
//! timeout, server pings, handshake timeout, and a bounded outbound queue.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;
use toml::{Table, toml};
use wsflow_tests::{
    Manifest, Refused, TIMEOUT, TestServer, Trigger, connect, local_addr, next_close, next_message,
    next_text, programs, request, send_text, try_connect,
};

/// App `echo` serving the echo example at `/echo`, on a trigger with
/// `trigger_settings`.
fn echo_with(trigger_settings: Table) -> Manifest {
    Manifest::app("echo")
        .flow("main", programs::EXAMPLE_ECHO)
        .trigger(
            Trigger::on_port(0)
                .with(trigger_settings)
                .handler(toml! { path = "/echo" flow = "main" }),
        )
}

#[tokio::test]
async fn a_message_over_the_size_limit_closes_with_1009() {
    let server = TestServer::start(&echo_with(toml! { max_message_size = 1024 })).await;
    let mut client = connect(&server.url("/echo")).await;
    send_text(&mut client, &"a".repeat(1024)).await;
    assert_eq!(next_text(&mut client).await.len(), 1024);
    send_text(&mut client, &"a".repeat(1025)).await;
    let close = next_close(&mut client).await;
    assert_eq!(u16::from(close.code), 1009);
}

#[tokio::test]
async fn connections_over_the_limit_get_503_before_the_upgrade() {
    let server = TestServer::start(&echo_with(toml! { max_connections = 2 })).await;
    let url = server.url("/echo");
    let first = connect(&url).await;
    let mut second = connect(&url).await;
    let refused = try_connect(request(&url, &[]))
        .await
        .expect_err("third is refused");
    assert_eq!(
        refused,
        Refused {
            status: 503,
            body: "the server is at its limit of 2 connections; try again later".into()
        }
    );
    drop(first);
    // The slot frees once the server has seen the first connection end.
    server
        .wait_for_stats("echo", "down to one open connection", |stats| {
            stats.connections_open == 1
        })
        .await;
    let mut third = try_connect(request(&url, &[]))
        .await
        .expect("the freed slot takes a third connection");
    send_text(&mut third, "three").await;
    assert_eq!(next_text(&mut third).await, "three");
    send_text(&mut second, "two").await;
    assert_eq!(next_text(&mut second).await, "two");
}

#[tokio::test]
async fn only_allowed_origins_may_connect() {
    let server = TestServer::start(&echo_with(
        toml! { allowed_origins = ["https://good.example"] },
    ))
    .await;
    let url = server.url("/echo");
    let missing = try_connect(request(&url, &[])).await.err().unwrap();
    assert_eq!(
        missing,
        Refused {
            status: 403,
            body: "an Origin header is required".into()
        }
    );
    let evil = try_connect(request(&url, &[("Origin", "https://evil.example")]))
        .await
        .err()
        .unwrap();
    assert_eq!(
        evil,
        Refused {
            status: 403,
            body: "origin `https://evil.example` is not allowed".into()
        }
    );
    let mut good = try_connect(request(&url, &[("Origin", "https://good.example")]))
        .await
        .unwrap();
    send_text(&mut good, "ok").await;
    assert_eq!(next_text(&mut good).await, "ok");
}

#[tokio::test]
async fn an_idle_connection_is_closed_with_1001() {
    let server = TestServer::start(&echo_with(toml! { idle_timeout = "300ms" })).await;
    let mut client = connect(&server.url("/echo")).await;
    send_text(&mut client, "hi").await;
    assert_eq!(next_text(&mut client).await, "hi");
    let close = next_close(&mut client).await;
    assert_eq!(u16::from(close.code), 1001);
    assert_eq!(close.reason.as_str(), "idle timeout");
}

#[tokio::test]
async fn the_server_pings_at_the_configured_interval() {
    let server = TestServer::start(&echo_with(toml! { ping_interval = "100ms" })).await;
    let mut client = connect(&server.url("/echo")).await;
    let mut pings = 0;
    while pings < 3 {
        let frame = tokio::time::timeout(TIMEOUT, client.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Ping(_) = frame {
            pings += 1;
        }
    }
    // Answered pongs keep the connection usable.
    send_text(&mut client, "still here").await;
    assert_eq!(next_text(&mut client).await, "still here");
}

#[tokio::test]
async fn a_client_that_never_upgrades_is_dropped_after_the_handshake_timeout() {
    // The server's clock starts at its accept, after ours: the client is
    // dropped no sooner than the timeout, and well within the timeout plus
    // slack that a slow machine does not use up.
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
    const LATEST: Duration = Duration::from_secs(10);
    let server = TestServer::start(&echo_with(toml! { handshake_timeout = "1s" })).await;
    let addr = server.endpoints()[0].addr;
    let started = std::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(LATEST, tcp.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("still connected {LATEST:?} after connecting"));
    let dropped_after = started.elapsed();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the server closes the socket: {read:?}"
    );
    assert!(
        (HANDSHAKE_TIMEOUT..LATEST).contains(&dropped_after),
        "dropped {dropped_after:?} after connecting (handshake timeout {HANDSHAKE_TIMEOUT:?})"
    );
}

/// The highest `flood sent N on PEER` that app `flood` logged for `peer`.
fn flood_progress(server: &TestServer, peer: &str) -> u64 {
    server
        .app_log_lines("flood")
        .iter()
        .filter(|line| line.contains(&format!("on {peer}")))
        .filter_map(|line| {
            let rest = &line[line.find("flood sent ")? + "flood sent ".len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_client_that_does_not_read_holds_up_the_sender_instead_of_host_memory() {
    // Copying 128 MiB out of the guest is real work: give it the CPU time.
    let manifest = Manifest::one_flow(
        "flood",
        programs::FLOOD,
        toml! { path = "/flood" mode = "connection" },
    )
    .limits(toml! { cpu_time = "60s" });
    let server = TestServer::start(&manifest).await;
    let mut client = connect(&server.url("/flood")).await;
    let peer = local_addr(&client).to_string();
    const COUNT: u64 = 2000;
    send_text(&mut client, &format!("{COUNT} 65536")).await;
    // Not reading: the flow fills the bounded queue and the socket, then
    // waits in `send`. Once it is sending, only time shows that it gets no
    // further: there is no event for "still waiting".
    server
        .wait_for_stats("flood", "sending", |stats| stats.messages_out > 0)
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stalled_at = flood_progress(&server, &peer);
    assert!(
        stalled_at < 1000,
        "{stalled_at} messages of 64 KiB were accepted while the client read nothing"
    );
    let mut received = 0;
    loop {
        match next_message(&mut client).await {
            Message::Binary(bytes) => {
                assert_eq!(bytes.len(), 65536);
                received += 1;
            }
            Message::Text(text) => {
                assert_eq!(text.as_str(), "done");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(received, COUNT);
    assert_eq!(u16::from(next_close(&mut client).await.code), 1000);
}

#[tokio::test]
async fn handshakes_beyond_the_listener_cap_wait_for_a_free_slot() {
    let server = TestServer::start(&echo_with(
        toml! { max_pending_handshakes = 2 handshake_timeout = "60s" },
    ))
    .await;
    let addr = server.endpoints()[0].addr;
    // Two sockets that never send a request hold both handshake slots.
    let first_idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _second_idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let url = server.url("/echo");
    let mut third = tokio::spawn(async move { connect(&url).await });
    // The third waits in the listen backlog, neither refused nor served.
    let waited = tokio::time::timeout(Duration::from_secs(1), &mut third).await;
    assert!(
        waited.is_err(),
        "a third handshake was served while two were pending"
    );
    drop(first_idle);
    let mut third = tokio::time::timeout(TIMEOUT, third)
        .await
        .expect("the third handshake is served once a slot frees")
        .unwrap();
    send_text(&mut third, "in").await;
    assert_eq!(next_text(&mut third).await, "in");
}
