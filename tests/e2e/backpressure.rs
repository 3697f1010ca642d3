//! Queues are budgeted in bytes, per connection and per app: a flow cannot
//! park more than its budget in the host for a client that does not read,
//! and a client that holds its budget without reading is closed.

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpSocket;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use toml::{Table, toml};
use wsflow_tests::{
    Client, Manifest, TIMEOUT, TestServer, local_addr, next_text, programs, send_text,
};

/// Connect with a receive buffer of a few KiB, so what the host writes
/// stays in the host rather than in this client's socket while the test
/// does not read.
pub(crate) async fn connect_with_small_window(url: &str) -> Client {
    let addr = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .expect("a ws:// URL")
        .parse()
        .expect("an IP address and port");
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let connect = async {
        let stream = socket.connect(addr).await.unwrap();
        tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .unwrap()
            .0
    };
    tokio::time::timeout(TIMEOUT, connect)
        .await
        .expect("connect timed out")
}

/// App `name` serving the puppet program in connection mode at `/puppet`.
pub(crate) fn puppet(name: &str, limits: Table) -> Manifest {
    let handler = toml! { path = "/puppet" mode = "connection" };
    Manifest::one_flow(name, programs::PUPPET, handler).limits(limits)
}

/// The highest `puppet: sent I of N` app `app` logged for `peer`.
fn sent_so_far(server: &TestServer, app: &str, peer: &str) -> u64 {
    server
        .app_log_lines(app)
        .iter()
        .filter(|line| line.contains(&format!("on {peer}")))
        .filter_map(|line| {
            let rest = &line[line.find("puppet: sent ")? + "puppet: sent ".len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_flow_cannot_park_more_than_the_connection_budget_in_the_host() {
    // 14 bytes asking for 64 MiB: counted in messages, 64 of 1 MiB would
    // wait in the host for a client that reads nothing.
    let app = "budget-per-connection";
    let server = TestServer::start(&puppet(
        app,
        toml! { slow_client_timeout = "1s" cpu_time = "60s" },
    ))
    .await;
    let mut client = connect_with_small_window(&server.url("/puppet")).await;
    let peer = local_addr(&client).to_string();
    assert_eq!(next_text(&mut client).await, "ready");
    send_text(&mut client, "burst 64 1048576").await;
    // Not reading: the flow queues up to the budget, waits in `send`, and
    // is stopped once it has waited `slow_client_timeout`.
    server
        .wait_for_app_log(app, "execution stopped: slow client")
        .await;
    // One MiB of budget, one message in the writer, and what the kernel
    // buffers (a few MiB at most).
    let sent = sent_so_far(&server, app, &peer);
    assert!(
        sent < 16,
        "{sent} messages of 1 MiB were accepted for a client that read nothing"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_even_when_no_send_waits() {
    let app = "budget-no-send-waits";
    let server = TestServer::start(&puppet(
        app,
        toml! {
            slow_client_timeout = "1s"
            cpu_time = "60s"
            queue_per_connection = "32MiB"
        },
    ))
    .await;
    let mut client = connect_with_small_window(&server.url("/puppet")).await;
    let peer = local_addr(&client).to_string();
    assert_eq!(next_text(&mut client).await, "ready");
    // 16 MiB fit the budget: no send waits for room, while the bytes wait
    // in the host. The client is closed by the writer's clock alone, after
    // the burst or (on a machine too busy to send 16 MiB in a second)
    // during it.
    send_text(&mut client, "burst 16 1048576").await;
    server
        .wait_for_log(&format!("puppet: sent 1 of 16 on {peer}"))
        .await;
    let line = server.wait_for_app_log(app, "client does not read").await;
    assert!(line.contains(&format!("peer={peer}")), "{line}");
    assert!(line.contains("messages waited for it"), "{line}");
    // The flow is told (its `receive` or a `send` fails) and ends.
    server
        .wait_for_stats(app, "the flow ended", |s| {
            s.executions_ok + s.executions_failed + s.executions_limit_exceeded == 1
        })
        .await;
}

#[tokio::test]
async fn an_apps_connections_share_its_queue_budget() {
    let app = "budget-per-app";
    let server = TestServer::start(&puppet(
        app,
        toml! {
            slow_client_timeout = "1s"
            cpu_time = "60s"
            queue_per_connection = "32MiB"
            queue_per_app = "4MiB"
        },
    ))
    .await;
    let url = server.url("/puppet");
    let mut first = connect_with_small_window(&url).await;
    let first_peer = local_addr(&first).to_string();
    assert_eq!(next_text(&mut first).await, "ready");
    // The first client reads nothing: its burst takes the app's 4 MiB (and
    // what its socket absorbs), then waits for more, far short of 16 MiB.
    send_text(&mut first, "burst 16 1048576").await;
    server
        .wait_for_log(&format!("puppet: sent 4 of 16 on {first_peer}"))
        .await;
    // The second client reads everything, yet its burst waits for the
    // app's budget until the first client is closed for not reading.
    let mut second = wsflow_tests::connect(&url).await;
    let second_peer = local_addr(&second).to_string();
    assert_eq!(next_text(&mut second).await, "ready");
    send_text(&mut second, "burst 16 1048576").await;
    let reader = tokio::spawn(async move {
        let mut received = 0;
        while received < 16 {
            match second.next().await {
                Some(Ok(Message::Binary(bytes))) if bytes.len() == 1 << 20 => received += 1,
                other => panic!("expected 1 MiB binary messages, got {other:?}"),
            }
        }
    });
    let second_done = server
        .wait_for_log(&format!("puppet: sent 16 of 16 on {second_peer}"))
        .await;
    tokio::time::timeout(TIMEOUT, reader)
        .await
        .expect("the second client received its 16 messages")
        .unwrap();
    let lines = server.app_log_lines(app);
    let first_closed = lines
        .iter()
        .position(|line| {
            line.contains("client does not read") && line.contains(&format!("peer={first_peer}"))
        })
        .expect("the first client was closed for not reading");
    let second_done = lines.iter().position(|line| *line == second_done).unwrap();
    assert!(
        first_closed < second_done,
        "the second burst completed before the first client's bytes were released"
    );
    assert!(sent_so_far(&server, app, &first_peer) < 16);
}

#[tokio::test]
async fn an_error_reply_to_a_client_that_does_not_read_cannot_wedge_the_connection() {
    // Each invalid message is answered with an error that quotes it: 64 KiB
    // of reply per message.
    let app = "reply-wedge";
    let handler = toml! {
        path = "/strict"
        format = "json"
        on_invalid = "reply"
        schema = { inline = "{\"type\": \"number\"}" }
    };
    let manifest = Manifest::one_flow(app, programs::EXAMPLE_ECHO, handler)
        .limits(toml! { slow_client_timeout = "1s" });
    let server = TestServer::start(&manifest).await;
    let mut client = connect_with_small_window(&server.url("/strict")).await;
    let peer = local_addr(&client).to_string();
    let invalid = format!("\"{}\"", "k".repeat(64 * 1024));
    // Sends go on in the background: once the host stops reading, they wait.
    let sender = tokio::spawn(async move {
        for _ in 0..256 {
            if client.send(Message::text(invalid.clone())).await.is_err() {
                break;
            }
        }
        client
    });
    let line = server.wait_for_app_log(app, "client does not read").await;
    assert!(line.contains(&format!("peer={peer}")), "{line}");
    sender.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_that_never_reads_is_closed_whether_its_bytes_wait_in_the_host_or_the_kernel()
{
    const CLIENTS: usize = 8;
    let app = "never-read";
    let server = TestServer::start(&puppet(
        app,
        toml! { slow_client_timeout = "1s" cpu_time = "60s" },
    ))
    .await;
    let url = server.url("/puppet");
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let mut client = wsflow_tests::connect(&url).await;
        assert_eq!(next_text(&mut client).await, "ready");
        // From what the socket buffers hold to far more.
        let count = 8 << (n % 4);
        send_text(&mut client, &format!("burst {count} 61440")).await;
        clients.push(client);
    }
    let started = std::time::Instant::now();
    server
        .wait_for_stats(app, "every client closed", |s| s.connections_open == 0)
        .await;
    eprintln!("closed within {:?}", started.elapsed());
    // Each as a client that does not read, once.
    let slow = server
        .app_log_lines(app)
        .iter()
        .filter(|line| line.contains("client does not read"))
        .count();
    assert_eq!(slow, CLIENTS);
}
