//! The server API (`wsflow up --api ADDR`): backends reach an app's
//! connections and groups over HTTP, through the app's hub, so with
//! `--cluster` every operation spans every host.
//!
//! An app is on the API only if its manifest sets `[api] token`; a request
//! carries `Authorization: Bearer TOKEN`, compared in constant time. A
//! missing or wrong token, another app's token, or an app that does not
//! exist or is not on the API, all get the same 401: nothing tells them
//! apart.
//!
//! | request | does |
//! | --- | --- |
//! | `POST /v1/apps/{app}/groups/{group}/publish[?except=ID]` | publish the body to the group |
//! | `POST /v1/apps/{app}/connections/{id}/send` | send the body to one connection |
//! | `POST /v1/apps/{app}/connections/{id}/close` | close one connection: `{"code": 4000, "reason": "..."}` (both optional: 1000, no reason) |
//! | `GET /v1/apps/{app}/groups/{group}` | the group's member count, and its members with their attachments (up to 1,000) |
//! | `POST /v1/apps/{app}/batch` | several publishes: `[{"group": G, "text": T}` or `"binary": BASE64`, optional `"except": ID}, ...]` |
//!
//! A body is a text message for `text/*` and JSON content types (it must
//! be UTF-8), binary otherwise. Per app: a body is at most the app's
//! largest `max_message_size` (413), requests come at most
//! `requests_per_second` with bursts of `burst`, and at most
//! `max_in_flight` are answered at once (429 with `Retry-After`). Errors
//! are JSON `{"error": ..., "detail": ...}`, `error` from the vocabulary of
//! the WIT `group-error` where a hub operation failed.

mod auth;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::app::{AppInfo, AppStats};
use crate::close::{Close, InvalidClose, MAX_CLOSE_REASON};
use crate::http_endpoint::{self, Limits};
use crate::hub::{Fanout, GroupName, HubError, MAX_LISTED_MEMBERS};
use crate::manifest::spec::ApiSpec;
use crate::server::StatsHandle;

/// How the API serves its clients: backends keep connections open.
const LIMITS: Limits = Limits {
    name: "api",
    places: 256,
    header_read: Duration::from_secs(10),
    connection: Duration::from_secs(300),
    keep_alive: true,
};

/// What the API serves: the apps on it, once they are loaded.
#[derive(Default)]
pub(crate) struct ApiState {
    apps: OnceLock<HashMap<String, ApiApp>>,
}

/// An app on the API, with what limits its requests.
struct ApiApp {
    info: Arc<AppInfo>,
    spec: ApiSpec,
    rate: Mutex<TokenBucket>,
    in_flight: Arc<Semaphore>,
}

impl ApiState {
    /// Serve the apps of `stats` that have an `[api]` token.
    pub(crate) fn serving(&self, stats: &StatsHandle) {
        let apps = stats
            .apps()
            .iter()
            .filter_map(|info| {
                let spec = info.api.clone()?;
                let app = ApiApp {
                    info: Arc::clone(info),
                    rate: Mutex::new(TokenBucket::new(spec.requests_per_second, spec.burst)),
                    in_flight: Arc::new(Semaphore::new(spec.max_in_flight)),
                    spec,
                };
                Some((info.name.to_string(), app))
            })
            .collect();
        let _ = self.apps.set(apps);
    }
}

/// Serve the API on `listener` until `stop`.
pub(crate) async fn serve(listener: TcpListener, state: Arc<ApiState>, stop: CancellationToken) {
    http_endpoint::serve(listener, stop, LIMITS, move |request| {
        let state = Arc::clone(&state);
        async move { respond(&state, request).await }
    })
    .await;
}

/// An answer that is not a success.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    error: &'static str,
    detail: String,
    retry_after: Option<u64>,
}

impl Failure {
    fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            error,
            detail: detail.into(),
            retry_after: None,
        }
    }

    fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer TOKEN` with the token of the app's [api] section",
        )
    }

    fn hub(error: HubError) -> Self {
        let (status, name) = match error {
            HubError::InvalidName => (StatusCode::BAD_REQUEST, "invalid-name"),
            HubError::NotFound => (StatusCode::NOT_FOUND, "not-found"),
            HubError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
            HubError::TooManyGroups => (StatusCode::CONFLICT, "too-many-groups"),
            HubError::GroupFull => (StatusCode::CONFLICT, "group-full"),
            HubError::TooManyToList => (StatusCode::CONFLICT, "too-many-to-list"),
            HubError::Closed => (StatusCode::GONE, "closed"),
            HubError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        Self::new(status, name, error.to_string())
    }

    fn response(self) -> Response<Full<Bytes>> {
        let mut response = json_response(
            self.status,
            &json!({ "error": self.error, "detail": self.detail }),
        );
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Operation {
    Publish { group: String },
    Send { id: String },
    Close { id: String },
    Group { group: String },
    Batch,
}

impl Operation {
    fn label(&self) -> &'static str {
        match self {
            Operation::Publish { .. } => "publish",
            Operation::Send { .. } => "send",
            Operation::Close { .. } => "close",
            Operation::Group { .. } => "group",
            Operation::Batch => "batch",
        }
    }
}

/// The app and operation a request's method and path name.
fn route(method: &Method, path: &str) -> Result<(String, Operation), Failure> {
    let not_found = || {
        Failure::new(
            StatusCode::NOT_FOUND,
            "no-such-path",
            format!(
                "{method} {path} is not an API request; see \
                 POST /v1/apps/APP/groups/GROUP/publish, POST /v1/apps/APP/connections/ID/send, \
                 POST /v1/apps/APP/connections/ID/close, GET /v1/apps/APP/groups/GROUP, POST /v1/apps/APP/batch"
            ),
        )
    };
    let segments: Vec<&str> = path
        .strip_prefix("/v1/apps/")
        .ok_or_else(not_found)?
        .split('/')
        .collect();
    let decode = |segment: &str| {
        crate::trigger::percent_decode(segment).ok_or_else(|| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                "bad-path",
                format!("`{segment}` is not valid percent-encoded UTF-8"),
            )
        })
    };
    let operation = match (method, segments.as_slice()) {
        (&Method::POST, [_, "groups", group, "publish"]) => Operation::Publish {
            group: decode(group)?,
        },
        (&Method::POST, [_, "connections", id, "send"]) => Operation::Send { id: decode(id)? },
        (&Method::POST, [_, "connections", id, "close"]) => Operation::Close { id: decode(id)? },
        (&Method::GET, [_, "groups", group]) => Operation::Group {
            group: decode(group)?,
        },
        (&Method::POST, [_, "batch"]) => Operation::Batch,
        _ => return Err(not_found()),
    };
    Ok((decode(segments[0])?, operation))
}

/// The answer to one request.
async fn respond(state: &ApiState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    match answer(state, request).await {
        Ok(response) => response,
        Err(failure) => failure.response(),
    }
}

async fn answer(
    state: &ApiState,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Failure> {
    let (app_name, operation) = route(request.method(), request.uri().path())?;
    // Who asks is settled before anything else is said about the app.
    let app = state
        .apps
        .get()
        .and_then(|apps| apps.get(&app_name))
        .filter(|app| auth::bearer_matches(request.headers(), &app.spec.token))
        .ok_or_else(Failure::unauthorized)?;
    let stats = &app.info.stats;
    let refused = |failure: Failure| {
        AppStats::add(&stats.api_refused, 1);
        failure
    };
    if !app.rate.lock().expect("not poisoned").take(Instant::now()) {
        let mut failure = Failure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            format!(
                "the app takes {} requests per second (bursts of {})",
                app.spec.requests_per_second, app.spec.burst
            ),
        );
        failure.retry_after = Some(1);
        return Err(refused(failure));
    }
    let Ok(_in_flight) = Arc::clone(&app.in_flight).try_acquire_owned() else {
        let mut failure = Failure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-in-flight",
            format!(
                "the app answers {} requests at once",
                app.spec.max_in_flight
            ),
        );
        failure.retry_after = Some(1);
        return Err(refused(failure));
    };
    counter(stats, &operation).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(app = %app_name, operation = operation.label(), "server API request");
    let query = request.uri().query().map(str::to_owned);
    match operation {
        Operation::Group { group } => group_info(&app.info, &group).await,
        Operation::Publish { group } => {
            let message = body_message(&app.info, request).await.map_err(refused)?;
            let except = except(query.as_deref())?;
            let fanout = publish(&app.info, &group, message, except).await?;
            Ok(json_response(StatusCode::OK, &fanout_json(fanout)))
        }
        Operation::Close { id } => {
            let id = connection_id(&id)?;
            let body = body_bytes(&app.info, request).await.map_err(refused)?;
            let close = close_of(&body)?;
            app.info.hub.close(id, close).await.map_err(Failure::hub)?;
            Ok(json_response(StatusCode::OK, &json!({ "closing": true })))
        }
        Operation::Send { id } => {
            let id = connection_id(&id)?;
            let message = body_message(&app.info, request).await.map_err(refused)?;
            let fanout = app
                .info
                .hub
                .send_to(id, message)
                .await
                .map_err(Failure::hub)?;
            app.info.count_fanout(fanout);
            Ok(json_response(StatusCode::OK, &fanout_json(fanout)))
        }
        Operation::Batch => {
            let body = body_bytes(&app.info, request).await.map_err(refused)?;
            batch(&app.info, &body).await
        }
    }
}

fn counter<'a>(stats: &'a AppStats, operation: &Operation) -> &'a std::sync::atomic::AtomicU64 {
    match operation {
        Operation::Publish { .. } => &stats.api_publish,
        Operation::Send { .. } => &stats.api_send,
        Operation::Close { .. } => &stats.api_close,
        Operation::Group { .. } => &stats.api_group,
        Operation::Batch => &stats.api_batch,
    }
}

fn connection_id(id: &str) -> Result<u64, Failure> {
    id.parse().map_err(|_| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "bad-id",
            format!("`{id}` is not a connection id (a number)"),
        )
    })
}

/// How to close, from a close request's body: `{"code": N, "reason": R}`,
/// both optional; an empty body is 1000 with no reason.
fn close_of(body: &[u8]) -> Result<Close, Failure> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Request {
        code: Option<u16>,
        reason: Option<String>,
    }
    let bad = |detail: String| Failure::new(StatusCode::BAD_REQUEST, "bad-body", detail);
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        Request {
            code: None,
            reason: None,
        }
    } else {
        serde_json::from_slice(body).map_err(|error| {
            bad(format!(
                "a close is {{\"code\": N, \"reason\": TEXT}}, both optional: {error}"
            ))
        })?
    };
    let code = request.code.unwrap_or(1000);
    Close::requested(code, request.reason.unwrap_or_default()).map_err(|invalid| match invalid {
        InvalidClose::Code => bad(format!(
            "{code} is not a close code an endpoint may send: use 1000, 1001, 1003, 1007-1014 or 3000-4999"
        )),
        InvalidClose::ReasonTooLong => bad(format!(
            "a close reason is at most {MAX_CLOSE_REASON} bytes"
        )),
    })
}

/// The connection `except=ID` names, if any.
fn except(query: Option<&str>) -> Result<Option<u64>, Failure> {
    let Some(query) = query else {
        return Ok(None);
    };
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name == "except" {
            return value.parse().map(Some).map_err(|_| {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    "bad-id",
                    format!("except=`{value}` is not a connection id (a number)"),
                )
            });
        }
    }
    Ok(None)
}

/// The request's body, at most the app's largest message.
async fn body_bytes(app: &AppInfo, request: Request<Incoming>) -> Result<Bytes, Failure> {
    let max = app.largest_message.get();
    let too_large = || {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("a request body is at most {max} bytes, the app's largest max_message_size"),
        )
    };
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if announced.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    Limited::new(request.into_body(), max)
        .collect()
        .await
        .map(|body| body.to_bytes())
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                Failure::new(StatusCode::BAD_REQUEST, "bad-body", error.to_string())
            }
        })
}

/// The request's body as a WebSocket message: text for `text/*` and JSON
/// content types, binary otherwise.
async fn body_message(app: &AppInfo, request: Request<Incoming>) -> Result<Message, Failure> {
    let is_text = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            let essence = value
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            essence.starts_with("text/")
                || essence == "application/json"
                || essence.ends_with("+json")
        })
        .unwrap_or(false);
    let body = body_bytes(app, request).await?;
    if !is_text {
        return Ok(Message::Binary(body));
    }
    let text = String::from_utf8(body.to_vec()).map_err(|_| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "bad-body",
            "a text or JSON body must be UTF-8; send other bytes as application/octet-stream",
        )
    })?;
    Ok(Message::text(text))
}

fn group_name(group: &str) -> Result<GroupName, Failure> {
    GroupName::parse(group).map_err(Failure::hub)
}

async fn publish(
    app: &AppInfo,
    group: &str,
    message: Message,
    except: Option<u64>,
) -> Result<Fanout, Failure> {
    let group = group_name(group)?;
    let fanout = app
        .hub
        .publish(&group, message, except)
        .await
        .map_err(Failure::hub)?;
    app.count_fanout(fanout);
    Ok(fanout)
}

fn fanout_json(fanout: Fanout) -> serde_json::Value {
    let mut answer = json!({
        "delivered": fanout.delivered,
        "dropped": fanout.dropped,
        "closed": fanout.closed,
        "too_large": fanout.too_large,
        "other_hosts_reached": !fanout.unreached,
    });
    if let Some(position) = fanout.position {
        answer["position"] = json!(position.to_string());
    }
    answer
}

async fn group_info(app: &AppInfo, group: &str) -> Result<Response<Full<Bytes>>, Failure> {
    let group = group_name(group)?;
    let count = app.hub.member_count(&group).await.map_err(Failure::hub)?;
    let members = match app.hub.members(&group, MAX_LISTED_MEMBERS).await {
        Ok(members) => Some(members),
        Err(HubError::TooManyToList) => None,
        Err(error) => return Err(Failure::hub(error)),
    };
    let members = members.map(|members| {
        members
            .into_iter()
            .map(|member| match std::str::from_utf8(&member.attachment) {
                Ok(text) => json!({ "id": member.id, "attachment": text }),
                Err(_) => json!({
                    "id": member.id,
                    "attachment_base64":
                        base64::engine::general_purpose::STANDARD.encode(&member.attachment),
                }),
            })
            .collect::<Vec<_>>()
    });
    Ok(json_response(
        StatusCode::OK,
        &json!({ "group": group.as_str(), "count": count, "members": members }),
    ))
}

/// One publish of a batch.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    group: String,
    text: Option<String>,
    binary: Option<String>,
    except: Option<u64>,
}

/// Publishes at most this many per batch.
const MAX_BATCH: usize = 100;

async fn batch(app: &AppInfo, body: &[u8]) -> Result<Response<Full<Bytes>>, Failure> {
    let bad = |detail: String| Failure::new(StatusCode::BAD_REQUEST, "bad-body", detail);
    let items: Vec<BatchItem> = serde_json::from_slice(body).map_err(|error| {
        bad(format!(
            "a batch is a JSON array of {{\"group\": G, \"text\": T or \"binary\": BASE64, \
             \"except\": ID (optional)}}: {error}"
        ))
    })?;
    if items.len() > MAX_BATCH {
        return Err(bad(format!(
            "a batch has at most {MAX_BATCH} publishes, this one {}",
            items.len()
        )));
    }
    // Every item is checked before any is published.
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let message = match (&item.text, &item.binary) {
            (Some(text), None) => Message::text(text.clone()),
            (None, Some(encoded)) => Message::Binary(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|error| bad(format!("[{i}].binary: not base64: {error}")))?
                    .into(),
            ),
            _ => {
                return Err(bad(format!(
                    "[{i}]: give exactly one of `text` and `binary`"
                )));
            }
        };
        group_name(&item.group).map_err(|failure| Failure {
            detail: format!("[{i}].group: {}", failure.detail),
            ..failure
        })?;
        messages.push(message);
    }
    let mut results: Vec<serde_json::Value> = Vec::with_capacity(items.len());
    for (item, message) in items.iter().zip(messages) {
        results.push(
            match publish(app, &item.group, message, item.except).await {
                Ok(fanout) => fanout_json(fanout),
                Err(failure) => json!({ "error": failure.error, "detail": failure.detail }),
            },
        );
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "results": results }),
    ))
}

/// Requests allowed per second with bursts: `burst` tokens, refilled at
/// `rate` per second.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: None,
        }
    }

    /// Take a token at `now`, if there is one.
    fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_app_and_operation() {
        let route = |method: Method, path: &str| route(&method, path).map_err(|f| f.status);
        assert_eq!(
            route(Method::POST, "/v1/apps/chat/groups/room%3A1/publish"),
            Ok((
                "chat".into(),
                Operation::Publish {
                    group: "room:1".into()
                }
            ))
        );
        assert_eq!(
            route(Method::POST, "/v1/apps/chat/connections/42/send"),
            Ok(("chat".into(), Operation::Send { id: "42".into() }))
        );
        assert_eq!(
            route(Method::GET, "/v1/apps/chat/groups/lobby"),
            Ok((
                "chat".into(),
                Operation::Group {
                    group: "lobby".into()
                }
            ))
        );
        assert_eq!(
            route(Method::POST, "/v1/apps/chat/batch"),
            Ok(("chat".into(), Operation::Batch))
        );
        for (method, path) in [
            (Method::GET, "/v1/apps/chat/groups/lobby/publish"),
            (Method::POST, "/v1/apps/chat"),
            (Method::DELETE, "/v1/apps/chat/groups/lobby"),
            (Method::POST, "/v2/apps/chat/batch"),
            (Method::POST, "/v1/apps/chat/batch/extra"),
        ] {
            assert_eq!(route(method, path), Err(StatusCode::NOT_FOUND), "{path}");
        }
        assert_eq!(
            route(Method::GET, "/v1/apps/chat/groups/%ff"),
            Err(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn the_bucket_allows_bursts_then_its_rate() {
        let mut bucket = TokenBucket::new(10, 3);
        let start = Instant::now();
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        // A tenth of a second brings one token back.
        assert!(bucket.take(start + Duration::from_millis(100)));
        assert!(!bucket.take(start + Duration::from_millis(100)));
        // A long pause refills no more than the burst.
        let later = start + Duration::from_secs(60);
        assert!((0..3).all(|_| bucket.take(later)));
        assert!(!bucket.take(later));
    }

    #[test]
    fn except_names_a_connection() {
        assert_eq!(except(None).unwrap(), None);
        assert_eq!(except(Some("a=1&except=7")).unwrap(), Some(7));
        assert_eq!(
            except(Some("except=me")).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }
}
