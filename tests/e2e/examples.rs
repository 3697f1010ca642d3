//! The example apps, served from their own manifests (with the component
//! the harness built and a free port).

use futures_util::SinkExt as _;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use toml::Table;
use wsflow_tests::{
    Manifest, Refused, TestServer, connect, connect_at_once, next_close, next_json, next_text,
    programs, request, send_text, try_connect,
};

/// Example `example`'s manifest with its flow `flow` pointed at the
/// harness-built `component`, every trigger on a free port, and schema
/// files found in the example's folder. Each change is made by key, so a
/// key the example no longer has fails here.
fn example_manifest(example: &str, flow: &str, component: &str) -> Manifest {
    Manifest::from_table(example_table(example, flow, component))
}

/// What [`example_manifest`] makes, as TOML values a test may change
/// further.
pub(crate) fn example_table(example: &str, flow: &str, component: &str) -> Table {
    let dir = std::fs::canonicalize(format!("../examples/{example}")).unwrap();
    let path = dir.join("wsflow.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut manifest: Table = text
        .parse()
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));

    manifest["flows"][flow]["component"] = component.into();
    let triggers = manifest["triggers"].as_array_mut().expect("[[triggers]]");
    for trigger in triggers {
        trigger["port"] = 0.into();
        if let Some(static_dir) = trigger.get("static_dir").and_then(|dir| dir.as_str()) {
            let static_dir = dir.join(static_dir).display().to_string();
            trigger["static_dir"] = static_dir.into();
        }
    }
    if let Some(schemas) = manifest.get_mut("schemas") {
        let schemas = schemas.as_table_mut().expect("[schemas]");
        for (_, schema) in schemas.iter_mut() {
            let file = schema["file"].as_str().expect("a schema file");
            schema["file"] = dir.join(file).display().to_string().into();
        }
    }
    manifest
}

#[tokio::test]
async fn orders_replies_with_the_typed_order() {
    let server = TestServer::start(&example_manifest(
        "orders",
        "orders",
        programs::EXAMPLE_ORDERS,
    ))
    .await;
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
    let server = TestServer::start(&example_manifest("echo", "echo", programs::EXAMPLE_ECHO)).await;
    let mut client = connect(&server.url("/echo")).await;
    send_text(&mut client, "hello").await;
    assert_eq!(next_text(&mut client).await, "hello");
}

#[tokio::test]
async fn chat_session_example_holds_a_conversation() {
    let server = TestServer::start(&example_manifest(
        "chat-session",
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
    // A binary message is not silence: the session asks for text and goes on.
    client
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("sending a binary message");
    assert_eq!(
        next_text(&mut client).await,
        "please send text; binary messages are not read here"
    );
    send_text(&mut client, "bye").await;
    assert_eq!(next_text(&mut client).await, "goodbye, ann: 1 message(s)");
    assert_eq!(u16::from(next_close(&mut client).await.code), 1000);
}

#[tokio::test]
async fn chat_lets_one_of_many_clients_asking_for_one_name_at_once_in() {
    let server = TestServer::start(&example_manifest("chat", "chat", programs::EXAMPLE_CHAT)).await;
    let url = format!("{}?name=ann", server.url("/chat/lobby"));
    let admitted = connect_at_once(&url, 12, 409).await;
    assert_eq!(admitted.len(), 1, "one name, one connection");
    // The same name in another room is another matter.
    let elsewhere = format!("{}?name=ann", server.url("/chat/kitchen"));
    let _other = connect(&elsewhere).await;
}
