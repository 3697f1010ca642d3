//! A flow that fails keeps its connection; a flow that traps, or blocks past
//! `wall_time`, loses only its own connection; a client that breaks the
//! protocol loses its own.

use futures_util::SinkExt as _;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use toml::toml;
use wsflow_tests::{Manifest, TestServer, connect, next_close, next_text, programs, send_text};

fn flaky_manifest() -> Manifest {
    Manifest::one_flow(
        "flaky",
        programs::FLAKY,
        toml! { path = "/flaky" mode = "data" },
    )
}

#[tokio::test]
async fn a_failing_flow_is_logged_and_the_connection_stays_open() {
    let server = TestServer::start(&flaky_manifest()).await;
    let mut client = connect(&server.url("/flaky")).await;
    send_text(&mut client, "fail").await;
    send_text(&mut client, "still there?").await;
    assert_eq!(next_text(&mut client).await, "still there?");
    let line = server
        .wait_for_log("flow returned an error: asked to fail")
        .await;
    assert!(line.contains("WARN"), "{line}");
}

#[tokio::test]
async fn a_trapping_flow_closes_only_its_connection_with_1011() {
    let server = TestServer::start(&flaky_manifest()).await;
    let url = server.url("/flaky");
    let mut bystander = connect(&url).await;
    send_text(&mut bystander, "before").await;
    assert_eq!(next_text(&mut bystander).await, "before");

    let mut victim = connect(&url).await;
    send_text(&mut victim, "panic").await;
    let close = next_close(&mut victim).await;
    assert_eq!(u16::from(close.code), 1011);
    assert_eq!(close.reason.as_str(), "internal error");

    send_text(&mut bystander, "after").await;
    assert_eq!(next_text(&mut bystander).await, "after");
    let mut newcomer = connect(&url).await;
    send_text(&mut newcomer, "new").await;
    assert_eq!(next_text(&mut newcomer).await, "new");
    server.wait_for_log("flow trapped").await;
}

#[tokio::test]
async fn a_data_mode_flow_that_blocks_past_wall_time_is_stopped_with_1011() {
    let manifest = flaky_manifest().limits(toml! { wall_time = "1s" });
    let server = TestServer::start(&manifest).await;
    let url = server.url("/flaky");
    let mut victim = connect(&url).await;
    send_text(&mut victim, "sleep").await;
    let close = next_close(&mut victim).await;
    assert_eq!(u16::from(close.code), 1011);
    let line = server.wait_for_log("execution stopped").await;
    assert!(
        line.contains("wall-clock limit: still running after 1s"),
        "{line}"
    );
    assert_eq!(server.app_stats("flaky").executions_limit_exceeded, 1);
    // The app serves on: the slot the blocked execution held is free again.
    let mut next = connect(&url).await;
    send_text(&mut next, "hi").await;
    assert_eq!(next_text(&mut next).await, "hi");
}

#[tokio::test]
async fn invalid_utf8_and_malformed_frames_close_only_their_connection() {
    let server = TestServer::start(&flaky_manifest()).await;
    let url = server.url("/flaky");
    let mut bystander = connect(&url).await;

    let mut bad_text = connect(&url).await;
    let invalid = Frame::message(vec![0x68, 0xff, 0xfe], OpCode::Data(Data::Text), true);
    bad_text.send(Message::Frame(invalid)).await.unwrap();
    assert_eq!(u16::from(next_close(&mut bad_text).await.code), 1007);

    let mut bad_frame = connect(&url).await;
    let reserved = Frame::message(vec![1, 2, 3], OpCode::Data(Data::Reserved(3)), true);
    bad_frame.send(Message::Frame(reserved)).await.unwrap();
    assert_eq!(u16::from(next_close(&mut bad_frame).await.code), 1002);

    send_text(&mut bystander, "still here").await;
    assert_eq!(next_text(&mut bystander).await, "still here");
}
