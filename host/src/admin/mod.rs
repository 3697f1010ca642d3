//! The admin endpoint (`wsflow up --admin ADDR`), for the host's operator
//! and its monitoring; bind it to a loopback or private address. HTTP/1.1
//! on hyper:
//!
//! - `GET /stats`: every app's counters as JSON;
//! - `GET /metrics`: the same and more (histograms of execution time and
//!   message size, limit hits) in Prometheus text format ([`metrics`]);
//! - `GET /healthz`: 200 while the process serves HTTP at all;
//! - `GET /readyz`: 200 once every app listens, 503 while the apps load and
//!   once shutdown has begun.
//!
//! The endpoint is up while the apps load, so health checks answer during
//! a long build. It holds at most [`MAX_CONNECTIONS`] clients, each for at
//! most [`CONNECTION_TIMEOUT`], so a flood of admin clients cannot take the
//! descriptors the apps' clients need. Clients that hold every place
//! cannot keep a health check out either: a new client always gets in, in
//! the place of the oldest one (see [`http_endpoint`]).

mod metrics;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http_endpoint::{self, Limits};
use crate::server::StatsHandle;

/// Admin clients served at once: a scraper and a few people. They count
/// against the descriptors the host keeps for itself (`sockets.rs`: at
/// least 64), so this stays well below that.
const MAX_CONNECTIONS: usize = 16;

/// Time a client has to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Time one connection may take in all: request, answer, and the client
/// reading it. Rendering takes microseconds; a client slower than this is
/// stuck or hostile.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// What the endpoint reports: the apps' counters once they are loaded, and
/// whether the host is ready.
pub(crate) struct AdminState {
    stats: OnceLock<StatsHandle>,
    /// Cancelled when the host begins to shut down.
    shutdown: CancellationToken,
}

impl AdminState {
    /// State for a host that shuts down when `shutdown` is cancelled; not
    /// ready until [`AdminState::serving`].
    pub(crate) fn new(shutdown: CancellationToken) -> Self {
        Self {
            stats: OnceLock::new(),
            shutdown,
        }
    }

    /// Every app listens: report their counters, and ready.
    pub(crate) fn serving(&self, stats: StatsHandle) {
        let _ = self.stats.set(stats);
    }

    /// Every app listens and shutdown has not begun.
    pub(crate) fn is_ready(&self) -> bool {
        self.stats.get().is_some() && !self.shutdown.is_cancelled()
    }
}

/// How the admin endpoint serves its clients.
const LIMITS: Limits = Limits {
    name: "admin",
    places: MAX_CONNECTIONS,
    header_read: HEADER_READ_TIMEOUT,
    connection: CONNECTION_TIMEOUT,
    keep_alive: false,
};

/// Serve the admin endpoint on `listener` until `stop`. Connections
/// already accepted finish (each within [`CONNECTION_TIMEOUT`]).
pub(crate) async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    serve_with(listener, state, stop, LIMITS).await;
}

async fn serve_with(
    listener: TcpListener,
    state: Arc<AdminState>,
    stop: CancellationToken,
    limits: Limits,
) {
    http_endpoint::serve(listener, stop, limits, move |request| {
        let response = respond(&state, &request);
        async move { response }
    })
    .await;
}

/// The paths served, for the 404 answer.
const PATHS: &str = "/stats, /metrics, /healthz, /readyz";

/// The answer to one request.
fn respond(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/stats" | "/metrics" | "/healthz" | "/readyz") {
        return text(
            StatusCode::NOT_FOUND,
            format!("no such path: {path}; served here: {PATHS}\n"),
        );
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} answers GET only\n"),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
        "/readyz" if state.is_ready() => text(StatusCode::OK, "ready\n".to_owned()),
        "/readyz" if state.shutdown.is_cancelled() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_owned(),
        ),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "loading apps\n".to_owned()),
        "/stats" => match state.stats.get() {
            Some(stats) => body(
                StatusCode::OK,
                "application/json",
                format!("{:#}\n", stats.to_json()),
            ),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "loading apps; no counters yet\n".to_owned(),
            ),
        },
        _metrics => body(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            metrics::render(state.stats.get(), state.is_ready()),
        ),
    }
}

fn text(status: StatusCode, body_text: String) -> Response<Full<Bytes>> {
    body(status, "text/plain; charset=utf-8", body_text)
}

fn body(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// The endpoint on a port of its own, and a function that sends one
    /// request and returns the whole response.
    async fn start(state: Arc<AdminState>) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, state, stop.clone()));
        (addr, stop)
    }

    async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("{method} {path} HTTP/1.1\r\nhost: admin\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            stream.read_to_string(&mut response),
        )
        .await
        .expect("a response, then the connection closed")
        .unwrap();
        response
    }

    fn status_line(response: &str) -> &str {
        response.lines().next().unwrap_or_default()
    }

    #[tokio::test]
    async fn readiness_follows_loading_and_shutdown_while_health_stays_ok() {
        let shutdown = CancellationToken::new();
        let state = Arc::new(AdminState::new(shutdown.clone()));
        let (addr, stop) = start(Arc::clone(&state)).await;

        let loading = request(addr, "GET", "/readyz").await;
        assert_eq!(status_line(&loading), "HTTP/1.1 503 Service Unavailable");
        assert!(loading.ends_with("loading apps\n"), "{loading}");
        let stats = request(addr, "GET", "/stats").await;
        assert_eq!(status_line(&stats), "HTTP/1.1 503 Service Unavailable");
        assert_eq!(
            status_line(&request(addr, "GET", "/healthz").await),
            "HTTP/1.1 200 OK"
        );
        let metrics = request(addr, "GET", "/metrics").await;
        assert_eq!(status_line(&metrics), "HTTP/1.1 200 OK");
        assert!(metrics.contains("\nwsflow_ready 0\n"), "{metrics}");

        state.serving(StatsHandle::default());
        assert_eq!(
            status_line(&request(addr, "GET", "/readyz").await),
            "HTTP/1.1 200 OK"
        );
        assert!(
            request(addr, "GET", "/metrics")
                .await
                .contains("\nwsflow_ready 1\n")
        );
        let stats = request(addr, "GET", "/stats").await;
        assert_eq!(status_line(&stats), "HTTP/1.1 200 OK");
        assert!(stats.contains("\"apps\": {}"), "{stats}");

        shutdown.cancel();
        let stopping = request(addr, "GET", "/readyz").await;
        assert_eq!(status_line(&stopping), "HTTP/1.1 503 Service Unavailable");
        assert!(stopping.ends_with("shutting down\n"), "{stopping}");
        assert_eq!(
            status_line(&request(addr, "GET", "/healthz").await),
            "HTTP/1.1 200 OK"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_are_refused_with_what_is_served() {
        let state = Arc::new(AdminState::new(CancellationToken::new()));
        let (addr, stop) = start(state).await;
        let missing = request(addr, "GET", "/nope").await;
        assert_eq!(status_line(&missing), "HTTP/1.1 404 Not Found");
        assert!(missing.contains(PATHS), "{missing}");
        let post = request(addr, "POST", "/metrics").await;
        assert_eq!(status_line(&post), "HTTP/1.1 405 Method Not Allowed");
        assert!(
            post.to_ascii_lowercase().contains("allow: get, head"),
            "{post}"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn clients_holding_every_place_cannot_keep_a_health_check_out() {
        let state = Arc::new(AdminState::new(CancellationToken::new()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        // Clients that would hold their places for an hour.
        let patient = Limits {
            header_read: Duration::from_secs(3600),
            connection: Duration::from_secs(3600),
            ..LIMITS
        };
        tokio::spawn(serve_with(listener, state, stop.clone(), patient));
        let mut hoarders = Vec::new();
        for _ in 0..3 * MAX_CONNECTIONS {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            // Half a request head, never finished.
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\n")
                .await
                .unwrap();
            hoarders.push(stream);
        }
        for path in ["/healthz", "/readyz", "/stats"] {
            let answer = request(addr, "GET", path).await;
            assert!(answer.starts_with("HTTP/1.1 "), "{path}: {answer}");
        }
        // The oldest hoarders lost their places: closed by the endpoint.
        let mut oldest = hoarders.remove(0);
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), oldest.read_to_end(&mut rest));
        assert!(read.await.is_ok(), "the oldest client kept its place");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_is_closed_and_leaves_room_for_others() {
        let state = Arc::new(AdminState::new(CancellationToken::new()));
        let (addr, stop) = start(state).await;
        // Every slot taken by a client that never sends its request.
        let mut silent = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Answered once the header timeout frees a slot.
        let answer = request(addr, "GET", "/healthz").await;
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
        // The silent ones were closed by the endpoint.
        for mut stream in silent {
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut rest));
            assert!(read.await.is_ok(), "a silent admin client was never closed");
        }
        stop.cancel();
    }
}
