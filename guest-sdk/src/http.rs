//! Outbound HTTP, blocking: [`get`], [`post`], [`post_json`] and a
//! [`Request`] builder, over `wasi:http/outgoing-handler`.
//!
//! A flow reaches only the hosts its manifest grants:
//!
//! ```toml
//! [flows.main]
//! component = "..."
//! allowed_outbound_hosts = ["https://api.example.com", "http://127.0.0.1:8080"]
//! ```
//!
//! Anything else is an [`HttpError`] of kind [`HttpErrorKind::Denied`]
//! naming the URL and the grant that would allow it. Redirects (up to
//! [`MAX_REDIRECTS`]) are followed for `GET` and `HEAD`; the host checks
//! every hop like the first request.
//!
//! ```no_run
//! # fn run() -> wsflow_sdk::Result {
//! let answer: serde_json::Value = wsflow_sdk::http::get("https://api.example.com/v1/price")?
//!     .error_for_status()?
//!     .json()?;
//! # Ok(()) }
//! ```
//!
//! This module talks to the WIT directly rather than wrapping a client
//! crate: flows run one request at a time and block on it, which is a few
//! dozen lines over the interface, and the SDK then carries no HTTP
//! client's own copy of the WASI bindings (whose version must match the
//! host's) nor an async runtime. Flows that want concurrency or streaming
//! can use any wasip2 client; the host checks their requests the same way.

use std::fmt;
use std::time::Duration;

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, IncomingResponse, Method, OutgoingBody, OutgoingRequest, RequestOptions,
    Scheme,
};
use crate::bindings::wasi::io::streams::StreamError;

/// Redirects followed at most for one [`Request::send`].
pub const MAX_REDIRECTS: usize = 5;

/// The largest write the output stream takes at once.
const WRITE_CHUNK: usize = 4096;

/// What went wrong with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpErrorKind {
    /// No `allowed_outbound_hosts` entry of the flow grants the URL.
    Denied,
    /// The host name resolves to a loopback, private, link-local or
    /// metadata address, which only a grant naming that address (or
    /// `localhost`) may reach.
    Prohibited,
    /// Over the app's outbound limits: requests in flight, or requests
    /// per execution.
    Limited,
    /// Connecting, waiting for the response, or between two chunks of its
    /// body took too long.
    Timeout,
    /// The response body is larger than the app's
    /// `max_outbound_response_size`.
    TooLarge,
    /// The URL cannot be requested (no scheme, no host, ...).
    InvalidUrl,
    /// A status that [`Response::error_for_status`] refuses.
    Status,
    /// The body is not the JSON expected.
    Json,
    /// Anything else: name lookup, connection, TLS, protocol.
    Failed,
}

/// A failed request, naming its URL.
#[derive(Debug, Clone)]
pub struct HttpError {
    kind: HttpErrorKind,
    url: String,
    detail: String,
}

impl HttpError {
    fn new(kind: HttpErrorKind, url: &str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            url: url.to_owned(),
            detail: detail.into(),
        }
    }

    fn from_code(url: &str, code: &ErrorCode) -> Self {
        let kind = match code {
            ErrorCode::HttpRequestDenied => HttpErrorKind::Denied,
            ErrorCode::DestinationIpProhibited => HttpErrorKind::Prohibited,
            ErrorCode::ConnectionLimitReached => HttpErrorKind::Limited,
            ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::HttpResponseTimeout
            | ErrorCode::DnsTimeout => HttpErrorKind::Timeout,
            ErrorCode::HttpResponseBodySize(_) => HttpErrorKind::TooLarge,
            ErrorCode::HttpRequestUriInvalid => HttpErrorKind::InvalidUrl,
            _ => HttpErrorKind::Failed,
        };
        let detail = match kind {
            HttpErrorKind::Denied => match grant_for(url) {
                Some(grant) => format!(
                    "no allowed_outbound_hosts entry of this flow grants {grant}; add \
                     \"{grant}\" to the flow's allowed_outbound_hosts to allow it"
                ),
                None => "not granted by the flow's allowed_outbound_hosts".to_owned(),
            },
            _ => format!("{code:?}"),
        };
        Self::new(kind, url, detail)
    }

    /// What went wrong.
    pub fn kind(&self) -> HttpErrorKind {
        self.kind
    }

    /// The URL of the request that failed (after redirects, the hop that
    /// failed).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?}: {}", self.url, self.kind, self.detail)
    }
}

impl std::error::Error for HttpError {}

/// A response, with its body read.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names are lower case.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, at most the app's `max_outbound_response_size` bytes.
    pub body: Vec<u8>,
    url: String,
}

impl Response {
    /// The first value of header `name` (lower case), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body)
            .map_err(|error| HttpError::new(HttpErrorKind::Json, &self.url, error.to_string()))
    }

    /// The response if its status is below 400, else an error of kind
    /// [`HttpErrorKind::Status`].
    pub fn error_for_status(self) -> Result<Self, HttpError> {
        if self.status < 400 {
            Ok(self)
        } else {
            Err(HttpError::new(
                HttpErrorKind::Status,
                &self.url,
                format!("status {}", self.status),
            ))
        }
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, HttpError> {
    Request::get(url).send()
}

/// `POST url` with `body`.
pub fn post(url: &str, body: impl Into<Vec<u8>>) -> Result<Response, HttpError> {
    Request::post(url).body(body).send()
}

/// `POST url` with `value` as a JSON body.
pub fn post_json<T: serde::Serialize + ?Sized>(
    url: &str,
    value: &T,
) -> Result<Response, HttpError> {
    Request::post(url).json(value).send()
}

/// A request being built.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
    timeout: Option<Duration>,
}

impl Request {
    /// A request with `method` (`GET`, `POST`, ...).
    pub fn new(method: &str, url: &str) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            url: url.to_owned(),
            headers: Vec::new(),
            body: None,
            timeout: None,
        }
    }

    /// A `GET` request.
    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }

    /// A `POST` request.
    pub fn post(url: &str) -> Self {
        Self::new("POST", url)
    }

    /// Add a header.
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Send `body`.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Send `value` as JSON, with `content-type: application/json`.
    pub fn json<T: serde::Serialize + ?Sized>(self, value: &T) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_default();
        self.header("content-type", "application/json").body(body)
    }

    /// Give up connecting, waiting for the response, or between two chunks
    /// of its body after `timeout` (the app's limits apply when shorter).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Send the request and read the whole response, following redirects
    /// of `GET` and `HEAD` requests.
    pub fn send(self) -> Result<Response, HttpError> {
        let follows = matches!(self.method.as_str(), "GET" | "HEAD");
        let mut url = self.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let response = self.send_once(&url)?;
            let location = response.header("location").map(str::to_owned);
            match (follows, response.status, location) {
                (true, 301 | 302 | 303 | 307 | 308, Some(location)) => {
                    url = resolve(&url, &location);
                }
                _ => return Ok(response),
            }
        }
        Err(HttpError::new(
            HttpErrorKind::Failed,
            &url,
            format!("more than {MAX_REDIRECTS} redirects"),
        ))
    }

    fn send_once(&self, url: &str) -> Result<Response, HttpError> {
        let invalid = |detail: &str| HttpError::new(HttpErrorKind::InvalidUrl, url, detail);
        let parts = Url::parse(url).ok_or_else(|| invalid("not scheme://host/path"))?;
        let mut headers = self.headers.clone();
        if let Some(body) = &self.body {
            headers.push(("content-length".to_owned(), body.len().to_string().into()));
        }
        let headers = Fields::from_list(&headers)
            .map_err(|error| invalid(&format!("bad header: {error:?}")))?;
        let request = OutgoingRequest::new(headers);
        let method = match self.method.as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_owned()),
        };
        let scheme = match parts.scheme.as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => Scheme::Other(other.to_owned()),
        };
        request
            .set_method(&method)
            .and_then(|()| request.set_scheme(Some(&scheme)))
            .and_then(|()| request.set_authority(Some(&parts.authority)))
            .and_then(|()| request.set_path_with_query(Some(&parts.path)))
            .map_err(|()| invalid("the host refused the method, scheme, host or path"))?;
        let body = request.body().map_err(|()| invalid("no body"))?;
        let options = self.timeout.map(|timeout| {
            let options = RequestOptions::new();
            let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
            let _ = options.set_connect_timeout(Some(nanos));
            let _ = options.set_first_byte_timeout(Some(nanos));
            let _ = options.set_between_bytes_timeout(Some(nanos));
            options
        });
        let pending = outgoing_handler::handle(request, options)
            .map_err(|code| HttpError::from_code(url, &code))?;
        if let Some(bytes) = &self.body {
            let failed = |_| HttpError::new(HttpErrorKind::Failed, url, "writing the body");
            let stream = body.write().map_err(|()| {
                HttpError::new(HttpErrorKind::Failed, url, "the body cannot be written")
            })?;
            for chunk in bytes.chunks(WRITE_CHUNK) {
                stream.blocking_write_and_flush(chunk).map_err(failed)?;
            }
            drop(stream);
        }
        OutgoingBody::finish(body, None).map_err(|code| HttpError::from_code(url, &code))?;

        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(HttpError::from_code(url, &code)),
            _ => return Err(HttpError::new(HttpErrorKind::Failed, url, "no response")),
        };
        read(url, response)
    }
}

/// The status, headers and whole body of `response`.
fn read(url: &str, response: IncomingResponse) -> Result<Response, HttpError> {
    let failed = |detail: &str| HttpError::new(HttpErrorKind::Failed, url, detail);
    let status = response.status();
    let headers = response.headers().entries();
    let incoming = response.consume().map_err(|()| failed("no body"))?;
    let stream = incoming.stream().map_err(|()| failed("no body stream"))?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(error)) => {
                return Err(
                    match crate::bindings::wasi::http::types::http_error_code(&error) {
                        Some(code) => HttpError::from_code(url, &code),
                        None => body_error(url, &error.to_debug_string()),
                    },
                );
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body,
        url: url.to_owned(),
    })
}

/// An error while reading a body that came as text, not as an
/// `error-code` (wasmtime-wasi-http 48 passes body errors so): classified
/// by the host's wording of its limits.
fn body_error(url: &str, text: &str) -> HttpError {
    let kind = if text.contains("body size exceeds limit") {
        HttpErrorKind::TooLarge
    } else if text.contains("timeout") {
        HttpErrorKind::Timeout
    } else {
        HttpErrorKind::Failed
    };
    HttpError::new(kind, url, text)
}

/// A URL in the parts a request is made of.
struct Url {
    scheme: String,
    authority: String,
    /// The path and query, `/` at least.
    path: String,
}

impl Url {
    fn parse(url: &str) -> Option<Self> {
        let (scheme, rest) = url.split_once("://")?;
        let rest = rest.split('#').next().unwrap_or_default();
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        Some(Self {
            scheme: scheme.to_ascii_lowercase(),
            authority: authority.to_owned(),
            path,
        })
    }
}

/// The grant that would allow `url`, as `allowed_outbound_hosts` writes it.
fn grant_for(url: &str) -> Option<String> {
    let parts = Url::parse(url)?;
    let default = match parts.scheme.as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => "",
    };
    let authority = parts.authority.to_ascii_lowercase();
    let authority = authority.strip_suffix(default).unwrap_or(&authority);
    Some(format!("{}://{authority}", parts.scheme))
}

/// `location` of a redirect from `base`: absolute, or relative to it.
fn resolve(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    let Some(parts) = Url::parse(base) else {
        return location.to_owned();
    };
    let origin = format!("{}://{}", parts.scheme, parts.authority);
    if location.starts_with('/') {
        format!("{origin}{location}")
    } else {
        let dir = parts.path.rsplit_once('/').map_or("", |(dir, _)| dir);
        format!("{origin}{dir}/{location}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_their_parts() {
        let url = Url::parse("https://api.example.com:8443/v1/x?y=1#frag").unwrap();
        assert_eq!(url.scheme, "https");
        assert_eq!(url.authority, "api.example.com:8443");
        assert_eq!(url.path, "/v1/x?y=1");
        assert_eq!(Url::parse("http://h").unwrap().path, "/");
        assert!(Url::parse("no-scheme").is_none());
        assert!(Url::parse("http://user@h/").is_none());
    }

    #[test]
    fn grants_and_redirects_are_spelled_as_the_manifest_and_the_server_do() {
        assert_eq!(
            grant_for("https://API.example.com:443/x").unwrap(),
            "https://api.example.com"
        );
        assert_eq!(
            grant_for("http://127.0.0.1:8080/x").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(resolve("http://a/b/c", "/d"), "http://a/d");
        assert_eq!(resolve("http://a/b/c", "d"), "http://a/b/d");
        assert_eq!(resolve("http://a/b/c", "https://e/f"), "https://e/f");
    }
}
