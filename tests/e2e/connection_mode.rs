//! Connection mode: one execution per connection that receives and sends
//! through its handle.

use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use toml::toml;
use wsflow_tests::{
    Manifest, TestServer, connect, next_close, next_message, next_text, programs, send_text,
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
