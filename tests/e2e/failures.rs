//! A flow that fails keeps its connection; a flow that traps loses only its
//! own connection.

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
