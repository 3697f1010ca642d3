//! The example apps, served from their own manifests (with the component
//! the harness built and a free port).

use serde_json::json;
use wsflow_tests::{
    Refused, TestServer, connect, next_close, next_json, next_text, programs, request, send_text,
    try_connect,
};

/// An example's manifest, pointed at the harness-built component and port 0.
fn example_manifest(example: &str, component: &str) -> String {
    let path = format!("../examples/{example}/wsflow.toml");
    let manifest = std::fs::read_to_string(&path).unwrap();
    let original = manifest
        .lines()
        .find(|line| line.starts_with("component = "))
        .unwrap_or_else(|| panic!("{path} names a component"));
    let schema_dir = std::fs::canonicalize(format!("../examples/{example}")).unwrap();
    manifest
        .replace(original, &format!("component = \"{component}\""))
        .replace("port = 9998", "port = 0")
        .replace("file = \"", &format!("file = \"{}/", schema_dir.display()))
}

#[tokio::test]
async fn orders_replies_with_the_typed_order() {
    let server = TestServer::start(&example_manifest("orders", programs::EXAMPLE_ORDERS)).await;
    let url = server.url("/orders/eu?user=ann&priority=2&tag=gift&tag=rush");
    let mut client = try_connect(request(&url, &[("X-Client", "tests")]))
        .await
        .unwrap();
    send_text(&mut client, r#"{"item": "tea", "qty": 2}"#).await;
    assert_eq!(
        next_json(&mut client).await,
        json!({ "region": "eu", "user": "ann", "priority": 2.0, "tags": ["gift", "rush"], "item": "tea", "qty": 2 })
    );

    let mut minimal = connect(&server.url("/orders/us?user=bo")).await;
    send_text(&mut minimal, r#"{"item": "cake", "qty": 1}"#).await;
    assert_eq!(
        next_json(&mut minimal).await,
        json!({ "region": "us", "user": "bo", "priority": null, "tags": [], "item": "cake", "qty": 1 })
    );
    send_text(&mut minimal, r#"{"item": "", "qty": 1}"#).await;
    let close = next_close(&mut minimal).await;
    assert_eq!(u16::from(close.code), 1007);
    assert!(
        close.reason.starts_with("schema violation at /item"),
        "{}",
        close.reason
    );

    let refused = try_connect(request(&server.url("/orders/eu"), &[]))
        .await
        .unwrap_err();
    assert_eq!(
        refused,
        Refused {
            status: 400,
            body: "query parameter `user` is required but missing".into()
        }
    );
    let refused = try_connect(request(&server.url("/orders/eu?user=a&priority=high"), &[]))
        .await
        .unwrap_err();
    assert_eq!(refused.status, 400);
}

#[tokio::test]
async fn echo_example_echoes() {
    let server = TestServer::start(&example_manifest("echo", programs::EXAMPLE_ECHO)).await;
    let mut client = connect(&server.url("/echo")).await;
    send_text(&mut client, "hello").await;
    assert_eq!(next_text(&mut client).await, "hello");
}

#[tokio::test]
async fn chat_session_example_holds_a_conversation() {
    let server = TestServer::start(&example_manifest(
        "chat-session",
        programs::EXAMPLE_CHAT_SESSION,
    ))
    .await;
    let mut client = connect(&server.url("/chat/lobby")).await;
    assert_eq!(
        next_text(&mut client).await,
        "welcome to #lobby! what is your name?"
    );
    send_text(&mut client, "ann").await;
    assert_eq!(
        next_text(&mut client).await,
        "hello, ann. say `bye` to leave."
    );
    send_text(&mut client, r#"{"shout": "hi"}"#).await;
    assert_eq!(next_text(&mut client).await, "ann: HI");
    send_text(&mut client, "bye").await;
    assert_eq!(next_text(&mut client).await, "goodbye, ann: 1 message(s)");
    assert_eq!(u16::from(next_close(&mut client).await.code), 1000);
}
