//! Connection mode: one execution per connection that receives and sends
//! through its handle.

use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use toml::toml;
use wsflow_tests::{
    Manifest, Refused, TestServer, Trigger, connect, next_close, next_message, next_text, programs,
    request, send_text, try_connect,
};

fn session_manifest() -> Manifest {
    Manifest::one_flow(
        "session",
        programs::SESSION,
        toml! { path = "/session" mode = "connection" },
    )
}

#[tokio::test]
async fn receive_send_loop_then_close_1000_when_the_flow_returns() {
    let server = TestServer::start(&session_manifest()).await;
    let mut client = connect(&server.url("/session")).await;
    assert_eq!(next_text(&mut client).await, "ready");
    send_text(&mut client, "a").await;
    assert_eq!(next_text(&mut client).await, "1:a");
    futures_util::SinkExt::send(&mut client, Message::binary(vec![7u8, 8]))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut client).await,
        Message::binary(vec![7u8, 8])
    );
    send_text(&mut client, "b").await;
    assert_eq!(next_text(&mut client).await, "3:b");
    send_text(&mut client, "bye").await;
    assert_eq!(next_text(&mut client).await, "bye");
    let close = next_close(&mut client).await;
    assert_eq!(u16::from(close.code), 1000);
}

#[tokio::test]
async fn a_client_close_is_seen_by_receive() {
    let server = TestServer::start(&session_manifest()).await;
    let mut client = connect(&server.url("/session")).await;
    assert_eq!(next_text(&mut client).await, "ready");
    for text in ["x", "y", "z", "w"] {
        send_text(&mut client, text).await;
        next_text(&mut client).await;
    }
    let MaybeTlsStream::Plain(tcp) = client.get_ref() else {
        unreachable!("plain ws:// connection")
    };
    let local = tcp.local_addr().unwrap();
    client.close(None).await.unwrap();
    let line = server
        .wait_for_log(&format!("after 4 message(s) from {local}"))
        .await;
    assert!(line.contains("client closed connection"), "{line}");
}

/// An app with `max_executions = 2` and `max_reused_instances = 4`: the
/// session flow in connection mode at `/session` and the echo example in
/// data mode at `/echo`. Small enough that the host pools its instances:
/// the pool must hold one per session as well as the execution slots.
fn sessions_and_echo_manifest() -> Manifest {
    Manifest::app("sessions-and-echo")
        .flow("session", programs::SESSION)
        .flow("echo", programs::EXAMPLE_ECHO)
        .trigger(
            Trigger::on_port(0)
                .handler(toml! { path = "/session" mode = "connection" flow = "session" })
                .handler(toml! { path = "/echo" mode = "data" flow = "echo" }),
        )
        .limits(toml! {
            max_executions = 2
            max_reused_instances = 4
        })
}

#[tokio::test]
async fn idle_sessions_do_not_hold_the_execution_slots_of_their_app() {
    let server = TestServer::start(&sessions_and_echo_manifest()).await;
    // More sessions than the app has execution slots, all waiting in
    // `receive`: each still starts.
    let url = server.url("/session");
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let mut session = connect(&url).await;
        assert_eq!(next_text(&mut session).await, "ready");
        sessions.push(session);
    }
    // Each keeps its instance: one more is over the app's cap, refused
    // before the upgrade.
    let refused = try_connect(request(&url, &[]))
        .await
        .expect_err("a fifth session is over the cap");
    assert_eq!(
        refused,
        Refused {
            status: 503,
            body: "the app is at its limit of 4 connections in connection mode; try again later"
                .into()
        }
    );
    // The app's data-mode handler still answers.
    let mut echo = connect(&server.url("/echo")).await;
    send_text(&mut echo, "still served").await;
    assert_eq!(next_text(&mut echo).await, "still served");
    for session in &mut sessions {
        send_text(session, "x").await;
        assert_eq!(next_text(session).await, "1:x");
    }
}
