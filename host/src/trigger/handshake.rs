//! The HTTP upgrade: route the request path to a handler and collect the
//! parameters the flow will see. Everything that can be refused is refused
//! here, before the upgrade, with an HTTP status and a plain-text body.

use std::sync::Arc;

use http::StatusCode;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request};

use super::Handler;
use crate::runtime::bindings::{Param, ParamValue};

/// A request accepted for upgrade.
pub struct Routed {
    pub handler: Arc<Handler>,
    pub path_params: Vec<Param>,
    pub query_params: Vec<Param>,
    pub headers: Vec<Param>,
}

/// Why an upgrade request is refused: an HTTP status and a plain-text body
/// that names the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub body: String,
}

impl Refusal {
    pub fn into_response(self) -> ErrorResponse {
        let mut response = ErrorResponse::new(Some(self.body));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

/// Route a handshake request, or say why it is refused.
pub fn route(handlers: &[Arc<Handler>], request: &Request) -> Result<Routed, Refusal> {
    let path = request.uri().path();
    let (handler, raw_params) = handlers
        .iter()
        .filter_map(|handler| handler.path.matches(path).map(|params| (handler, params)))
        .max_by_key(|(handler, _)| handler.path.specificity())
        .ok_or_else(|| {
            refuse(
                StatusCode::NOT_FOUND,
                format!("no handler for path {path}\n"),
            )
        })?;

    let mut path_params = Vec::with_capacity(raw_params.len());
    for (name, raw) in raw_params {
        let value = percent_decode(raw, false).ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                format!("path parameter `{name}`: `{raw}` is not valid percent-encoded UTF-8\n"),
            )
        })?;
        path_params.push(Param {
            name: name.to_owned(),
            value: ParamValue::Text(value),
        });
    }

    let query_params = parse_query(request.uri().query().unwrap_or(""))?;
    let headers = collect_headers(request);

    Ok(Routed {
        handler: Arc::clone(handler),
        path_params,
        query_params,
        headers,
    })
}

fn refuse(status: StatusCode, body: String) -> Refusal {
    Refusal { status, body }
}

/// Group `a=1&b=2&a=3` by name, keeping first-seen order; a name given more
/// than once becomes a list.
fn parse_query(query: &str) -> Result<Vec<Param>, Refusal> {
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |raw: &str| {
            percent_decode(raw, true).ok_or_else(|| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "query parameter `{raw_name}`: `{raw}` is not valid percent-encoded UTF-8\n"
                    ),
                )
            })
        };
        let name = decode(raw_name)?;
        let value = decode(raw_value)?;
        match grouped.iter_mut().find(|(existing, _)| *existing == name) {
            Some((_, values)) => values.push(value),
            None => grouped.push((name, vec![value])),
        }
    }
    Ok(grouped
        .into_iter()
        .map(|(name, values)| text_param(name, values))
        .collect())
}

fn collect_headers(request: &Request) -> Vec<Param> {
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    for (name, value) in request.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        // `HeaderName`s are already lower case.
        match grouped
            .iter_mut()
            .find(|(existing, _)| existing == name.as_str())
        {
            Some((_, values)) => values.push(value),
            None => grouped.push((name.as_str().to_owned(), vec![value])),
        }
    }
    grouped
        .into_iter()
        .map(|(name, values)| text_param(name, values))
        .collect()
}

fn text_param(name: String, mut values: Vec<String>) -> Param {
    let value = if values.len() == 1 {
        ParamValue::Text(values.remove(0))
    } else {
        ParamValue::TextList(values)
    };
    Param { name, value }
}

/// Decode `%XX` escapes (and `+` as space in query strings). `None` if an
/// escape is malformed or the result is not UTF-8.
pub fn percent_decode(raw: &str, plus_is_space: bool) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b", false).as_deref(), Some("a b"));
        assert_eq!(percent_decode("a+b", true).as_deref(), Some("a b"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%e2%82%ac", false).as_deref(), Some("€"));
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%4", false), None);
        assert_eq!(percent_decode("%ff", false), None);
    }

    #[test]
    fn query_groups_repeated_names() {
        let params = parse_query("tag=a&user=bo&tag=b&empty").unwrap();
        assert_eq!(params.len(), 3);
        assert_eq!(params[0].name, "tag");
        assert!(matches!(&params[0].value, ParamValue::TextList(v) if v == &["a", "b"]));
        assert!(matches!(&params[1].value, ParamValue::Text(v) if v == "bo"));
        assert!(matches!(&params[2].value, ParamValue::Text(v) if v.is_empty()));
    }
}
