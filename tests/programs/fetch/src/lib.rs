//! Makes the outbound HTTP requests each message asks for, and replies with
//! what happened as JSON:
//!
//! - `{"get": URL, "timeout_ms": N?}`: one `GET` through the SDK helper
//!   (redirects followed); replies `{"status", "body"}` or
//!   `{"error": KIND, "message"}`.
//! - `{"post": URL, "json": VALUE}`: one JSON `POST`, answered likewise.
//! - `{"burst": URL, "count": N, "read": BOOL}`: N requests started at once
//!   through the raw interface before waiting for any, their bodies read
//!   or never touched; replies `{"ok": N, "errors": {CODE: N}}`.
//! - `{"loop": URL, "count": N}`: N requests one after another.
//! - `{"header": URL, "size": N}`: one request with an N-byte header.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use wsflow_sdk::bindings::wasi::http::outgoing_handler;
use wsflow_sdk::bindings::wasi::http::types::{ErrorCode, Fields, OutgoingRequest, Scheme};
use wsflow_sdk::http::{self, HttpError, Request};
use wsflow_sdk::{Connection, Event, Flow};

struct Fetch;

fn answer(result: Result<http::Response, HttpError>) -> Value {
    match result {
        Ok(response) => json!({ "status": response.status, "body": response.text() }),
        Err(error) => json!({
            "error": format!("{:?}", error.kind()),
            "message": error.to_string(),
        }),
    }
}

/// A request for `url` (`http://authority/path`) through the raw interface.
fn raw_request(url: &str, headers: &[(String, Vec<u8>)]) -> OutgoingRequest {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let request = OutgoingRequest::new(Fields::from_list(headers).expect("valid headers"));
    request.set_scheme(Some(&Scheme::Http)).unwrap();
    request.set_authority(Some(authority)).unwrap();
    request
        .set_path_with_query(Some(if path.is_empty() { "/" } else { path }))
        .unwrap();
    request
}

fn code_name(code: &ErrorCode) -> String {
    let name = format!("{code:?}");
    let name = name.strip_prefix("ErrorCode::").unwrap_or(&name);
    name.split(['(', ' ', '{'])
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Start `count` requests, then wait for each; count the outcomes.
fn burst(url: &str, count: usize, read: bool) -> Value {
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut pending = Vec::new();
    for _ in 0..count {
        match outgoing_handler::handle(raw_request(url, &[]), None) {
            Ok(future) => pending.push(future),
            Err(code) => *errors.entry(code_name(&code)).or_default() += 1,
        }
    }
    let mut ok = 0;
    let mut kept = Vec::new();
    for future in pending {
        future.subscribe().block();
        match future.get() {
            Some(Ok(Ok(response))) => {
                ok += 1;
                if read {
                    let body = response.consume().unwrap();
                    let stream = body.stream().unwrap();
                    while stream.blocking_read(65536).is_ok() {}
                } else {
                    // Held, never read, until the execution ends.
                    kept.push(response);
                }
            }
            Some(Ok(Err(code))) => *errors.entry(code_name(&code)).or_default() += 1,
            _ => *errors.entry("none".to_owned()).or_default() += 1,
        }
    }
    json!({ "ok": ok, "errors": errors })
}

impl Flow for Fetch {
    fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
        let command: Value = serde_json::from_str(event.text().unwrap_or_default())?;
        let url = |key: &str| command[key].as_str().map(str::to_owned);
        let count = command["count"].as_u64().unwrap_or(1) as usize;
        let reply = if let Some(target) = url("get") {
            let mut request = Request::get(&target);
            if let Some(ms) = command["timeout_ms"].as_u64() {
                request = request.timeout(std::time::Duration::from_millis(ms));
            }
            answer(request.send())
        } else if let Some(target) = url("post") {
            answer(http::post_json(&target, &command["json"]))
        } else if let Some(target) = url("burst") {
            burst(&target, count, command["read"].as_bool().unwrap_or(true))
        } else if let Some(target) = url("loop") {
            let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
            for _ in 0..count {
                let outcome = match http::get(&target) {
                    Ok(_) => "ok".to_owned(),
                    Err(error) => format!("{:?}", error.kind()),
                };
                *outcomes.entry(outcome).or_default() += 1;
            }
            json!(outcomes)
        } else if let Some(target) = url("header") {
            let size = command["size"].as_u64().unwrap_or(0) as usize;
            let headers = [("x-big".to_owned(), vec![b'a'; size])];
            match Fields::from_list(&headers) {
                Err(error) => json!({ "error": format!("{error:?}") }),
                Ok(_) => {
                    let request = raw_request(&target, &headers);
                    match outgoing_handler::handle(request, None) {
                        Err(code) => json!({ "error": code_name(&code) }),
                        Ok(future) => {
                            future.subscribe().block();
                            match future.get() {
                                Some(Ok(Ok(response))) => json!({ "status": response.status() }),
                                Some(Ok(Err(code))) => json!({ "error": code_name(&code) }),
                                _ => json!({ "error": "none" }),
                            }
                        }
                    }
                }
            }
        } else {
            json!({ "error": "unknown command" })
        };
        conn.send_json(&reply)
    }
}

wsflow_sdk::export!(Fetch);
