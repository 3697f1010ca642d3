//! How connections end: everything a flow was told was queued reaches a
//! client that keeps reading, and a client's close is answered at once,
//! whatever the flow is doing.

use std::time::Duration;

use futures_util::StreamExt as _;
use tokio_tungstenite::tungstenite::Message;
use toml::toml;
use wsflow_tests::{
    Client, Manifest, TIMEOUT, TestServer, connect, local_addr, next_close, next_message,
    next_text, programs, send_text,
};

use crate::backpressure::{connect_with_small_window, puppet};

/// Close from the client side and wait until the server has answered the
/// close and closed the TCP connection.
async fn close_and_wait_for_the_end(client: &mut Client) {
    client.close(None).await.unwrap();
    let answered = tokio::time::timeout(TIMEOUT, async {
        let mut answered = false;
        while let Some(frame) = client.next().await {
            match frame {
                Ok(Message::Close(_)) => answered = true,
                Ok(_) => {}
                Err(error) => panic!("the connection failed instead of closing: {error}"),
            }
        }
        answered
    })
    .await
    .expect("the server did not end the connection while the flow was busy");
    assert!(answered, "the server answered the close");
}

#[tokio::test]
async fn a_slow_reader_gets_everything_the_flow_queued_then_1000() {
    let handler = toml! { path = "/flood" mode = "connection" };
    let manifest = Manifest::one_flow("slow-reader", programs::FLOOD, handler)
        .limits(toml! { cpu_time = "60s" });
    let server = TestServer::start(&manifest).await;
    let mut client = connect_with_small_window(&server.url("/flood")).await;
    const COUNT: usize = 32;
    send_text(&mut client, &format!("{COUNT} 1048576")).await;
    // A client that reads, slowly: the flow returns long before the client
    // has read everything, and the close waits for it.
    let mut received = 0;
    loop {
        match next_message(&mut client).await {
            Message::Binary(bytes) => {
                assert_eq!(bytes.len(), 1 << 20);
                received += 1;
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            Message::Text(text) => {
                assert_eq!(text.as_str(), "done");
                break;
            }
            other => panic!("after {received} messages: unexpected {other:?}"),
        }
    }
    assert_eq!(received, COUNT);
    assert_eq!(u16::from(next_close(&mut client).await.code), 1000);
}

#[tokio::test]
async fn a_client_close_is_answered_while_the_flow_sleeps_and_the_flow_is_stopped() {
    // One session slot: the next client is served only once the sleeping
    // flow has been stopped, `wall_time` after its client closed, and its
    // connection has ended.
    let app = "close-while-sleeping";
    let server = TestServer::start(&puppet(
        app,
        toml! { max_reused_instances = 1 wall_time = "1s" cpu_time = "600s" },
    ))
    .await;
    let url = server.url("/puppet");
    let mut client = connect(&url).await;
    let peer = local_addr(&client).to_string();
    assert_eq!(next_text(&mut client).await, "ready");
    send_text(&mut client, "sleep 600000").await;
    server
        .wait_for_log(&format!("puppet: sleeping on {peer}"))
        .await;
    close_and_wait_for_the_end(&mut client).await;
    let line = server.wait_for_app_log(app, "execution stopped").await;
    assert!(line.contains("after its client closed"), "{line}");
    server
        .wait_for_stats(app, "without open connections", |stats| {
            stats.connections_open == 0
        })
        .await;
    let mut next = connect(&url).await;
    assert_eq!(next_text(&mut next).await, "ready");
    assert_eq!(server.app_stats(app).executions_limit_exceeded, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_answered_while_the_flow_computes() {
    let app = "close-while-computing";
    let server =
        TestServer::start(&puppet(app, toml! { cpu_time = "600s" wall_time = "1s" })).await;
    let mut client = connect(&server.url("/puppet")).await;
    let peer = local_addr(&client).to_string();
    assert_eq!(next_text(&mut client).await, "ready");
    send_text(&mut client, "spin 600000").await;
    server
        .wait_for_log(&format!("puppet: spinning on {peer}"))
        .await;
    close_and_wait_for_the_end(&mut client).await;
    let line = server.wait_for_app_log(app, "execution stopped").await;
    assert!(line.contains("after its client closed"), "{line}");
}

#[tokio::test]
async fn after_its_client_closed_a_flow_is_told_at_once() {
    let app = "told-at-once";
    let server = TestServer::start(&puppet(app, toml! { cpu_time = "600s" })).await;
    let mut client = connect(&server.url("/puppet")).await;
    let peer = local_addr(&client).to_string();
    assert_eq!(next_text(&mut client).await, "ready");
    send_text(&mut client, "sleep 5000").await;
    server
        .wait_for_log(&format!("puppet: sleeping on {peer}"))
        .await;
    close_and_wait_for_the_end(&mut client).await;
    let line = server
        .wait_for_log(&format!("puppet: woke on {peer}"))
        .await;
    assert!(line.contains("receive -> closed, send -> closed"), "{line}");
    server
        .wait_for_log(&format!("puppet: client closed on {peer}"))
        .await;
    server
        .wait_for_stats(app, "one execution done", |stats| stats.executions_ok == 1)
        .await;
}
