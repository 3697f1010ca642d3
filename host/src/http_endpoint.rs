//! The host's own HTTP endpoints — the admin endpoint and the server API —
//! served the same way: hyper HTTP/1.1, every client within a bounded
//! number of places and time limits, accept errors paused rather than
//! spun on.
//!
//! Clients that hold every place cannot keep the next one out: a new
//! client takes the place of the oldest, whose connection is closed
//! ([`Places`]). A health check or a backend's request, sent as soon as
//! the connection is open, is always answered; keeping one out takes a
//! flood of connections faster than requests are sent.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::sockets::AcceptBackoff;

/// How many clients an endpoint serves at once, and for how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The endpoint's name in logs.
    pub(crate) name: &'static str,
    /// Clients served at once; a new one beyond takes the oldest's place.
    pub(crate) places: usize,
    /// Time a client has to send a request head (each one, with
    /// keep-alive).
    pub(crate) header_read: Duration,
    /// Time one connection may take in all.
    pub(crate) connection: Duration,
    /// Whether a connection may carry more than one request.
    pub(crate) keep_alive: bool,
}

/// The places of the clients being served, oldest first. Taking a place
/// when all are held ends the oldest client's connection (its task drops
/// its socket when told), so the endpoint's sockets stay bounded and the
/// newest client is always served.
struct Places {
    held: Mutex<VecDeque<(u64, CancellationToken)>>,
    next: AtomicU64,
    limit: usize,
}

/// A place among [`Places`], given back when dropped.
struct Place {
    places: Arc<Places>,
    id: u64,
    /// Cancelled when a newer client takes this place.
    evicted: CancellationToken,
}

impl Places {
    fn new(limit: usize) -> Self {
        Self {
            held: Mutex::new(VecDeque::new()),
            next: AtomicU64::new(0),
            limit: limit.max(1),
        }
    }

    fn take(self: &Arc<Self>) -> Place {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let evicted = CancellationToken::new();
        let mut held = self.held.lock().expect("not poisoned");
        if held.len() >= self.limit
            && let Some((_, oldest)) = held.pop_front()
        {
            oldest.cancel();
        }
        held.push_back((id, evicted.clone()));
        Place {
            places: Arc::clone(self),
            id,
            evicted,
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut held = self.places.held.lock().expect("not poisoned");
        held.retain(|(id, _)| *id != self.id);
    }
}

/// Serve `handler` on `listener` until `stop`, within `limits`.
/// Connections already accepted finish (each within `limits.connection`).
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    stop: CancellationToken,
    limits: Limits,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let name = limits.name;
    let places = Arc::new(Places::new(limits.places));
    let mut backoff = AcceptBackoff::default();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .keep_alive(limits.keep_alive);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff.succeeded();
                stream
            }
            Err(error) => {
                let pause = {
                    let _endpoint = tracing::info_span!("accept", endpoint = name).entered();
                    backoff.failed(&error)
                };
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    () = stop.cancelled() => return,
                }
            }
        };
        let handler = handler.clone();
        let connection = http.serve_connection(
            TokioIo::new(stream),
            hyper::service::service_fn(move |request| {
                let response = handler(request);
                async move { Ok::<_, Infallible>(response.await) }
            }),
        );
        let place = places.take();
        let limit = limits.connection;
        tokio::spawn(async move {
            let served = tokio::select! {
                served = tokio::time::timeout(limit, connection) => served,
                () = place.evicted.cancelled() => {
                    tracing::debug!("{name} connection closed: a newer client took its place");
                    return;
                }
            };
            match served {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!("{name} connection: {error}"),
                Err(_elapsed) => {
                    tracing::debug!("{name} connection closed: not done within {limit:?}")
                }
            }
        });
    }
}
