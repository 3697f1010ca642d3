//! Graceful shutdown closes every connection with 1001.

use toml::toml;
use wsflow_tests::{
    Manifest, TestServer, Trigger, connect, next_close, next_text, programs, send_text,
};

#[tokio::test]
async fn shutdown_closes_data_and_connection_mode_clients_with_1001() {
    let manifest = Manifest::app("shutdown")
        .flow("main", programs::EXAMPLE_ECHO)
        .flow("session", programs::SESSION)
        .trigger(
            Trigger::on_port(0)
                .handler(toml! { flow = "main" path = "/echo" })
                .handler(toml! { flow = "session" path = "/session" mode = "connection" }),
        );
    let server = TestServer::start(&manifest).await;
    let mut data_client = connect(&server.url("/echo")).await;
    send_text(&mut data_client, "hi").await;
    assert_eq!(next_text(&mut data_client).await, "hi");
    let mut session_client = connect(&server.url("/session")).await;
    assert_eq!(next_text(&mut session_client).await, "ready");

    server.begin_shutdown();
    let data_close = next_close(&mut data_client).await;
    let session_close = next_close(&mut session_client).await;
    assert_eq!(u16::from(data_close.code), 1001);
    assert_eq!(u16::from(session_close.code), 1001);
    server.stop().await;
}
