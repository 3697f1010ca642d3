//! Map to flow inputs: each configured input takes its value from a trigger
//! output (a parameter, a header, the content or a field of it).

use serde_json::{Value, json};

use crate::manifest::spec::{InputSource, JsonStep};
use crate::runtime::bindings::{Event, Input, Param, ParamValue};

/// Evaluate `inputs` against an event whose params are filled in, with the
/// message's parsed JSON (JSON format) when there is one. Outputs that are
/// absent map to `null`.
pub(super) fn evaluate(
    inputs: &[(String, InputSource)],
    event: &Event,
    json: Option<&Value>,
) -> Vec<Input> {
    inputs
        .iter()
        .map(|(name, source)| {
            let value = match source {
                InputSource::PathParam(param) => param_json(&event.path_params, param),
                InputSource::QueryParam(param) => param_json(&event.query_params, param),
                InputSource::Header(param) => param_json(&event.headers, param),
                InputSource::Content(steps) => content_json(event, json, steps),
            };
            Input {
                name: name.clone(),
                json: value.to_string(),
            }
        })
        .collect()
}

fn param_json(params: &[Param], name: &str) -> Value {
    let Some(param) = params.iter().find(|param| param.name == name) else {
        return Value::Null;
    };
    match &param.value {
        ParamValue::Text(v) => json!(v),
        ParamValue::Number(v) => json!(v),
        ParamValue::Integer(v) => json!(v),
        ParamValue::Boolean(v) => json!(v),
        ParamValue::TextList(v) => json!(v),
        ParamValue::NumberList(v) => json!(v),
        ParamValue::IntegerList(v) => json!(v),
        ParamValue::BooleanList(v) => json!(v),
    }
}

fn content_json(event: &Event, json: Option<&Value>, steps: &[JsonStep]) -> Value {
    use crate::runtime::bindings::Content;
    let Some(root) = json else {
        // String format: only `$.content` itself has a value.
        return match (&event.content, steps.is_empty()) {
            (Content::Text(text), true) => json!(text),
            _ => Value::Null,
        };
    };
    let mut value = root;
    for step in steps {
        let next = match step {
            JsonStep::Key(key) => value.get(key),
            JsonStep::Index(index) => value.get(index),
        };
        match next {
            Some(next) => value = next,
            None => return Value::Null,
        }
    }
    value.clone()
}
