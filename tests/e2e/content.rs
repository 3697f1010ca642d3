//! JSON content: invalid JSON and schema violations close with 1007 (or get
//! an error reply, when the handler says so) and never reach the flow; the
//! schema can be inline, a file or app-level; inputs map trigger outputs.

use serde_json::json;
use toml::{Table, toml};
use wsflow_tests::{
    Manifest, TestServer, connect, merged, next_close, next_json, programs, request, send_text,
    table, try_connect,
};

const ORDER_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "item": { "type": "string", "minLength": 1 },
    "qty": { "type": "integer", "minimum": 1 }
  },
  "required": ["item", "qty"]
}"#;

/// App `content` with the app-level schema `order`, serving the params
/// program at `path` as JSON, with more handler `settings`.
fn manifest(path: &str, settings: Table) -> Manifest {
    let handler = table([("path", path.into()), ("format", "json".into())]);
    Manifest::one_flow("content", programs::PARAMS, merged(handler, settings))
        .schema("order", table([("inline", ORDER_SCHEMA.into())]))
}

#[tokio::test]
async fn valid_json_reaches_the_flow_parsed() {
    let server =
        TestServer::start(&manifest("/orders", toml! { schema = { app = "order" } })).await;
    let mut client = connect(&server.url("/orders")).await;
    send_text(&mut client, r#"{"item": "tea", "qty": 2}"#).await;
    let reply = next_json(&mut client).await;
    assert_eq!(
        reply["content"],
        json!({ "json": { "item": "tea", "qty": 2 } })
    );
}

#[tokio::test]
async fn invalid_json_closes_with_1007_without_running_the_flow() {
    let server = TestServer::start(&manifest("/orders", Table::new())).await;
    let mut client = connect(&server.url("/orders")).await;
    send_text(&mut client, "{not json").await;
    // The flow would have replied; the next frame is the close.
    let close = next_close(&mut client).await;
    assert_eq!(u16::from(close.code), 1007);
    assert_eq!(
        close.reason.as_str(),
        "invalid JSON: key must be a string at line 1 column 2"
    );
}

#[tokio::test]
async fn schema_violations_close_with_1007_naming_the_pointer() {
    for schema in [
        toml! { schema = { app = "order" } },
        table([("schema", table([("inline", ORDER_SCHEMA.into())]).into())]),
    ] {
        let server = TestServer::start(&manifest("/orders", schema)).await;
        let mut client = connect(&server.url("/orders")).await;
        send_text(&mut client, r#"{"item": "tea", "qty": 0}"#).await;
        let close = next_close(&mut client).await;
        assert_eq!(u16::from(close.code), 1007);
        assert_eq!(
            close.reason.as_str(),
            "schema violation at /qty: 0 is less than the minimum of 1"
        );
    }
}

#[tokio::test]
async fn schema_from_a_file_is_enforced_and_long_reasons_fit_a_close_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("order.schema.json");
    std::fs::write(&path, ORDER_SCHEMA).unwrap();
    let schema = table([(
        "schema",
        table([("file", path.display().to_string().into())]).into(),
    )]);
    let server = TestServer::start(&manifest("/orders", schema)).await;
    let mut client = connect(&server.url("/orders")).await;
    let long_item = "x".repeat(300);
    send_text(
        &mut client,
        &format!(r#"{{"item": "{long_item}", "qty": "many"}}"#),
    )
    .await;
    let close = next_close(&mut client).await;
    assert_eq!(u16::from(close.code), 1007);
    assert!(close.reason.len() <= 123, "{}", close.reason.len());
    assert!(
        close.reason.starts_with("schema violation at /qty: "),
        "{}",
        close.reason
    );
}

#[tokio::test]
async fn on_invalid_reply_answers_with_an_error_and_keeps_the_connection() {
    let server = TestServer::start(&manifest(
        "/orders",
        toml! { schema = { app = "order" } on_invalid = "reply" },
    ))
    .await;
    let mut client = connect(&server.url("/orders")).await;
    send_text(&mut client, r#"{"item": ""}"#).await;
    let error = next_json(&mut client).await;
    assert_eq!(error["error"], "schema violation");
    assert!(error["detail"].is_string());
    send_text(&mut client, "nope").await;
    let error = next_json(&mut client).await;
    assert_eq!(error["error"], "invalid JSON");
    send_text(&mut client, r#"{"item": "tea", "qty": 1}"#).await;
    let reply = next_json(&mut client).await;
    assert_eq!(reply["content"]["json"]["item"], "tea");
}

#[tokio::test]
async fn inputs_are_mapped_from_trigger_outputs() {
    let inputs = toml! {
        query_params = [{ name = "priority", type = "number" }]

        [inputs]
        region = "$.pathParams.region"
        priority = "$.queryParams.priority"
        missing = "$.queryParams.nothing"
        client = "$.headers.X-Client"
        order = "$.content"
        item = "$.content.item"
        first_tag = "$.content.tags[0]"
    };
    let manifest = manifest("/orders/{region}", inputs);
    let server = TestServer::start(&manifest).await;
    let url = server.url("/orders/eu?priority=3");
    let mut client = try_connect(request(&url, &[("x-client", "cli")]))
        .await
        .unwrap();
    send_text(&mut client, r#"{"item": "tea", "tags": ["hot", "green"]}"#).await;
    let reply = next_json(&mut client).await;
    assert_eq!(
        reply["inputs"],
        json!({
            "region": "eu",
            "priority": 3.0,
            "missing": null,
            "client": "cli",
            "order": { "item": "tea", "tags": ["hot", "green"] },
            "item": "tea",
            "first_tag": "hot",
        })
    );
}

#[tokio::test]
async fn properties_fill_settings_and_reach_the_flow() {
    let manifest =
        manifest("${BASE}/orders", Table::new()).properties(toml! { BASE = "/v1" GREETING = "hi" });
    let server = TestServer::start(&manifest).await;
    let mut client = connect(&server.url("/v1/orders")).await;
    send_text(&mut client, "{}").await;
    let reply = next_json(&mut client).await;
    assert_eq!(
        reply["properties"],
        json!({ "BASE": "/v1", "GREETING": "hi" })
    );
}
