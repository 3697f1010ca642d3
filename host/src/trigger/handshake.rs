//! The HTTP upgrade: route the request path to a handler and collect the
//! parameters the flow will see. Everything that can be refused is refused
//! here, before the upgrade, with an HTTP status and a plain-text body.

use std::collections::HashMap;
use std::sync::Arc;

use http::StatusCode;
use tokio_tungstenite::tungstenite::handshake::server::Request;

use super::{Handler, params};
use crate::manifest::spec::ParamSpec;
use crate::runtime::bindings::{Param, ParamValue};

/// A request accepted for upgrade.
pub(super) struct Routed {
    pub(super) handler: Arc<Handler>,
    pub(super) path_params: Vec<Param>,
    pub(super) query_params: Vec<Param>,
    pub(super) headers: Vec<Param>,
}

/// Why an upgrade request is refused: an HTTP status and a plain-text body
/// that names the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) status: StatusCode,
    pub(super) body: String,
}

/// Route a handshake request, or say why it is refused.
pub(super) fn route(handlers: &[Arc<Handler>], request: &Request) -> Result<Routed, Refusal> {
    let path = request.uri().path();
    let (handler, raw_params) = handlers
        .iter()
        .filter_map(|handler| {
            handler
                .spec
                .path
                .matches(path)
                .map(|params| (handler, params))
        })
        .max_by_key(|(handler, _)| handler.spec.path.specificity())
        .ok_or_else(|| refuse(StatusCode::NOT_FOUND, format!("no handler for path {path}")))?;
    let spec = &handler.spec;

    let mut path_values = Vec::with_capacity(raw_params.len());
    for (name, raw) in raw_params {
        let value = percent_decode(raw, false).ok_or_else(|| {
            bad_request(format!(
                "path parameter `{name}`: `{raw}` is not valid percent-encoded UTF-8"
            ))
        })?;
        path_values.push((name.to_owned(), vec![value]));
    }
    let path_params = typed(&spec.path_params, "path parameter", path_values)?;

    let query_values = parse_query(request.uri().query().unwrap_or(""))?;
    let query_params = typed(&spec.query_params, "query parameter", query_values)?;

    let headers = typed(
        &spec.headers,
        "header",
        header_values(request, &spec.headers)?,
    )?;

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

fn bad_request(body: String) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, body)
}

/// Declared parameters converted to their types (in declaration order),
/// then the undeclared ones as text (a list when given several times).
fn typed(
    declared: &[ParamSpec],
    kind: &str,
    mut raw: Vec<(String, Vec<String>)>,
) -> Result<Vec<Param>, Refusal> {
    let mut params = Vec::with_capacity(raw.len());
    for spec in declared {
        let values = raw
            .iter()
            .position(|(name, _)| *name == spec.name)
            .map(|at| raw.remove(at).1)
            .unwrap_or_default();
        if let Some(value) = params::convert(spec, kind, values).map_err(bad_request)? {
            params.push(Param {
                name: spec.name.clone(),
                value,
            });
        }
    }
    params.extend(
        raw.into_iter()
            .map(|(name, values)| text_param(name, values)),
    );
    Ok(params)
}

/// Query pairs a request may carry: far more than a handler declares or a
/// client needs, few enough that a hostile query costs little to refuse.
const MAX_QUERY_PARAMS: usize = 256;

/// Header values a request may carry, each value of a declared repeating
/// header counted (`a, b` is two): as many as query pairs, for the same
/// reason.
const MAX_HEADER_VALUES: usize = 256;

/// Group `a=1&b=2&a=3` by name, keeping first-seen order. More than
/// [`MAX_QUERY_PARAMS`] pairs are refused.
fn parse_query(query: &str) -> Result<Vec<(String, Vec<String>)>, Refusal> {
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    let mut index = HashMap::new();
    for (count, pair) in query.split('&').filter(|pair| !pair.is_empty()).enumerate() {
        if count == MAX_QUERY_PARAMS {
            return Err(bad_request(format!(
                "the query has more than {MAX_QUERY_PARAMS} parameters; send at most {MAX_QUERY_PARAMS}"
            )));
        }
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |raw: &str| {
            percent_decode(raw, true).ok_or_else(|| {
                bad_request(format!(
                    "query parameter `{raw_name}`: `{raw}` is not valid percent-encoded UTF-8"
                ))
            })
        };
        let name = decode(raw_name)?;
        let value = decode(raw_value)?;
        push_grouped(&mut grouped, &mut index, name, value);
    }
    Ok(grouped)
}

/// Request headers grouped by (lower-case) name. A declared repeating
/// header's comma-separated values count as separate values. More than
/// [`MAX_HEADER_VALUES`] values are refused.
fn header_values(
    request: &Request,
    declared: &[ParamSpec],
) -> Result<Vec<(String, Vec<String>)>, Refusal> {
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    let mut index = HashMap::new();
    let mut count = 0;
    let mut push = |name: &str, value: String| {
        count += 1;
        if count > MAX_HEADER_VALUES {
            return Err(bad_request(format!(
                "the request has more than {MAX_HEADER_VALUES} header values; send at most {MAX_HEADER_VALUES}"
            )));
        }
        push_grouped(&mut grouped, &mut index, name.to_owned(), value);
        Ok(())
    };
    for (name, value) in request.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        let repeating = declared
            .iter()
            .any(|spec| spec.repeating && spec.name == name.as_str());
        if repeating {
            for part in value
                .split(',')
                .map(str::trim)
                .filter(|part| !part.is_empty())
            {
                push(name.as_str(), part.to_owned())?;
            }
        } else {
            push(name.as_str(), value.into_owned())?;
        }
    }
    Ok(grouped)
}

/// Add `value` to `name`'s group, or start the group; `index` maps each
/// name to its group, so grouping takes time linear in the values.
fn push_grouped(
    grouped: &mut Vec<(String, Vec<String>)>,
    index: &mut HashMap<String, usize>,
    name: String,
    value: String,
) {
    match index.get(&name) {
        Some(&at) => grouped[at].1.push(value),
        None => {
            index.insert(name.clone(), grouped.len());
            grouped.push((name, vec![value]));
        }
    }
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
pub(super) fn percent_decode(raw: &str, plus_is_space: bool) -> Option<String> {
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
    use proptest::prelude::*;

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
    fn a_query_of_more_pairs_than_the_limit_is_refused_naming_it() {
        let query = |pairs: usize| {
            (0..pairs)
                .map(|i| format!("p{i}=v"))
                .collect::<Vec<_>>()
                .join("&")
        };
        assert_eq!(parse_query(&query(256)).unwrap().len(), 256);
        let refused = parse_query(&query(257)).unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            refused.body,
            "the query has more than 256 parameters; send at most 256"
        );
        // Repeating one name counts every pair.
        let repeated = vec!["tag=x"; 257].join("&");
        assert_eq!(parse_query(&repeated).unwrap_err(), refused);
    }

    #[test]
    fn many_distinct_names_keep_first_seen_order_and_group_their_values() {
        let mut pairs = Vec::new();
        for round in 0..2 {
            for i in (0..100).rev() {
                pairs.push(format!("n{i}={round}"));
            }
        }
        let grouped = parse_query(&pairs.join("&")).unwrap();
        let expected: Vec<(String, Vec<String>)> = (0..100)
            .rev()
            .map(|i| (format!("n{i}"), vec!["0".to_owned(), "1".to_owned()]))
            .collect();
        assert_eq!(grouped, expected);
    }

    fn request_with(headers: &[(&str, &str)]) -> Request {
        let mut request = Request::builder().uri("/x");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap()
    }

    fn spec(name: &str, repeating: bool) -> ParamSpec {
        ParamSpec {
            name: name.to_owned(),
            ty: crate::manifest::spec::ParamType::String,
            repeating,
            required: false,
        }
    }

    #[test]
    fn more_header_values_than_the_limit_are_refused_naming_it() {
        let declared = [spec("x-list", true)];
        let values = |n: usize| vec!["v"; n].join(",");
        let within = request_with(&[("X-List", &values(255)), ("X-Other", "o")]);
        let grouped = header_values(&within, &declared).unwrap();
        assert_eq!(grouped[0].1.len(), 255);
        assert_eq!(grouped[1], ("x-other".to_owned(), vec!["o".to_owned()]));
        let over = request_with(&[("X-List", &values(256)), ("X-Other", "o")]);
        let refused = header_values(&over, &declared).unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            refused.body,
            "the request has more than 256 header values; send at most 256"
        );
    }

    /// Percent-encode every byte outside the unreserved set; a space as `+`
    /// when `plus_is_space`.
    fn percent_encode(text: &str, plus_is_space: bool) -> String {
        let mut out = String::new();
        for byte in text.bytes() {
            match byte {
                b' ' if plus_is_space => out.push('+'),
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    out.push(char::from(byte))
                }
                _ => out.push_str(&format!("%{byte:02X}")),
            }
        }
        out
    }

    /// Names and values grouped the simple, quadratic way, as a model.
    fn grouped_by_search(pairs: &[(String, String)]) -> Vec<(String, Vec<String>)> {
        let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
        for (name, value) in pairs {
            match grouped.iter_mut().find(|(existing, _)| existing == name) {
                Some((_, values)) => values.push(value.clone()),
                None => grouped.push((name.clone(), vec![value.clone()])),
            }
        }
        grouped
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn decoding_and_query_parsing_never_panic(text in "\\PC{0,64}", plus in any::<bool>()) {
            let _ = percent_decode(&text, plus);
            if let Ok(grouped) = parse_query(&text) {
                let values: usize = grouped.iter().map(|(_, values)| values.len()).sum();
                prop_assert!(values <= MAX_QUERY_PARAMS);
            }
        }

        #[test]
        fn decoding_escape_like_text_never_panics(text in "[%0-9a-fA-F+zé]{0,24}", plus in any::<bool>()) {
            let _ = percent_decode(&text, plus);
            let _ = parse_query(&text);
        }

        #[test]
        fn percent_encoded_text_decodes_to_itself(text in "\\PC{0,32}", plus in any::<bool>()) {
            let encoded = percent_encode(&text, plus);
            prop_assert_eq!(percent_decode(&encoded, plus), Some(text));
        }

        #[test]
        fn a_query_groups_like_the_simple_model(
            pairs in prop::collection::vec(("[a-c]{1,2}", "\\PC{0,6}"), 0..40),
        ) {
            let query: Vec<String> = pairs
                .iter()
                .map(|(name, value)| format!("{}={}", percent_encode(name, true), percent_encode(value, true)))
                .collect();
            let grouped = parse_query(&query.join("&")).unwrap();
            prop_assert_eq!(grouped, grouped_by_search(&pairs));
        }
    }

    #[test]
    fn query_groups_repeated_names() {
        let params = parse_query("tag=a&user=bo&tag=b&empty").unwrap();
        assert_eq!(
            params,
            vec![
                ("tag".to_owned(), vec!["a".to_owned(), "b".to_owned()]),
                ("user".to_owned(), vec!["bo".to_owned()]),
                ("empty".to_owned(), vec![String::new()]),
            ]
        );
    }
}
