//! Replies with the event it was given, as one JSON message: mode, content,
//! path and query parameters, `x-` headers, properties and mapped inputs.

use serde_json::{Map, Value, json};
use wsflow_sdk::{Connection, Content, Event, Flow, Mode, ParamValue};

struct Params;

fn to_json(value: &ParamValue) -> Value {
    match value {
        ParamValue::Text(text) => json!(text),
        ParamValue::Number(n) => json!(n),
        ParamValue::Integer(n) => json!(n),
        ParamValue::Boolean(b) => json!(b),
        ParamValue::TextList(list) => json!(list),
        ParamValue::NumberList(list) => json!(list),
        ParamValue::IntegerList(list) => json!(list),
        ParamValue::BooleanList(list) => json!(list),
    }
}

fn object<'a>(params: impl Iterator<Item = (&'a str, &'a ParamValue)>) -> Value {
    Value::Object(
        params
            .map(|(name, value)| (name.to_owned(), to_json(value)))
            .collect::<Map<_, _>>(),
    )
}

impl Flow for Params {
    fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
        let content = match event.content() {
            Content::None => json!(null),
            Content::Text(text) => json!({ "text": text }),
            Content::Json(text) => json!({ "json": serde_json::from_str::<Value>(text)? }),
            Content::Binary(bytes) => json!({ "binary": bytes.len() }),
        };
        let headers = object(event.headers().filter(|(name, _)| name.starts_with("x-")));
        let properties: Map<String, Value> = wsflow_sdk::properties()
            .into_iter()
            .map(|(name, value)| (name, json!(value)))
            .collect();
        let inputs = event
            .inputs()
            .map(|(name, json)| Ok((name.to_owned(), serde_json::from_str::<Value>(json)?)))
            .collect::<Result<Map<String, Value>, serde_json::Error>>()?;
        let reply = json!({
            "mode": match event.mode() { Mode::Data => "data", Mode::Connection => "connection" },
            "content": content,
            "path": object(event.path_params()),
            "query": object(event.query_params()),
            "headers": headers,
            "properties": properties,
            "inputs": inputs,
        });
        conn.send_json(&reply)?;
        Ok(())
    }
}

wsflow_sdk::export!(Params);
