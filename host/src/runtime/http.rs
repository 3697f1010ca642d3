//! The `http` capability: `wasi:http/outgoing-handler` (wasmtime-wasi-http's
//! `types` and `outgoing-handler`), so a flow can use any wasip2 HTTP
//! client. wasmtime-wasi-http turns the guest's resources into a request;
//! this module decides whether it may go and sends it itself:
//!
//! - **Grants.** A request goes only to a destination (scheme, host, port)
//!   that the flow's `allowed_outbound_hosts` grants. Anything else is the
//!   error value `HTTP-request-denied` and one log line naming the URL and
//!   the grant that would allow it — never a trap.
//! - **Addresses.** The host name is resolved here, every address is
//!   checked, and the connection goes to a checked address (no second
//!   lookup a DNS server could answer differently). Loopback, private,
//!   link-local, unique-local, unspecified and cloud metadata addresses are
//!   `destination-IP-prohibited` unless a grant that allows the request
//!   names that address or `localhost`. A name with any such address among
//!   its answers is refused as a whole.
//! - **Redirects** are not followed here: a client that follows one makes
//!   a new request, checked like the first.
//! - **Limits** (`[limits]`): requests in flight per app and per
//!   execution (refused with `connection-limit-reached`), connect,
//!   first-byte and between-bytes timeouts (wall time: the execution is
//!   not polled, and not charged CPU time, while it waits), and response
//!   body bytes (`HTTP-response-body-size`).
//! - **TLS** is rustls with Mozilla's roots (webpki-roots), compiled in.
//! - The `Host` header is the request URL's authority: wasmtime-wasi-http
//!   sets it and forbids the guest from setting it; nothing from the
//!   client's WebSocket request is used.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use wasmtime::component::Linker;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::capabilities::Capability;
use super::ctx::FlowCtx;
use super::stdio::guest_line;
use crate::app::{AppInfo, AppStats};
use crate::manifest::outbound::{AllowedHost, Destination, Scheme};
use crate::manifest::spec::{AppLimits, FlowGrants};

pub(super) const CAPABILITY: Capability = Capability {
    name: "http",
    add_to_linker,
};

fn add_to_linker(linker: &mut Linker<FlowCtx>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

/// How outbound HTTP finds the addresses of a host name. The host uses the
/// system's resolver; tests substitute their own.
pub trait Resolve: Send + Sync + fmt::Debug + 'static {
    /// The addresses of `host`, a name (never an IP address).
    fn lookup(&self, host: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;
}

/// The resolver outbound HTTP uses.
#[derive(Debug, Clone)]
pub struct Resolver(Arc<dyn Resolve>);

impl Resolver {
    /// Resolve names with `resolve`.
    pub fn new(resolve: impl Resolve) -> Self {
        Self(Arc::new(resolve))
    }
}

impl Default for Resolver {
    /// The system's resolver (`getaddrinfo`, on a blocking thread).
    fn default() -> Self {
        Self::new(SystemResolver)
    }
}

#[derive(Debug)]
struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup(&self, host: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> {
        let host = host.to_owned();
        Box::pin(async move {
            let addresses = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addresses.map(|address| address.ip()).collect())
        })
    }
}

/// What an app's outbound requests share: its resolver and its slots for
/// requests in flight (`limits.max_outbound_requests_in_flight`).
#[derive(Debug)]
pub(crate) struct AppOutbound {
    resolver: Resolver,
    in_flight: Arc<Semaphore>,
}

impl AppOutbound {
    pub(crate) fn new(limits: &AppLimits, resolver: Resolver) -> Self {
        Self {
            resolver,
            in_flight: Arc::new(Semaphore::new(limits.max_outbound_requests_in_flight)),
        }
    }
}

/// An execution's `wasi:http` state.
pub(super) struct ExecutionHttp {
    ctx: WasiHttpCtx,
    hooks: OutboundHooks,
}

impl ExecutionHttp {
    pub(super) fn new(app: &Arc<AppInfo>, grants: &Arc<FlowGrants>) -> Self {
        Self {
            ctx: WasiHttpCtx::new(),
            hooks: OutboundHooks {
                app: Arc::clone(app),
                grants: Arc::clone(grants),
                requests: 0,
            },
        }
    }
}

impl WasiHttpView for FlowCtx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http.ctx,
            table: &mut self.table,
            hooks: &mut self.http.hooks,
        }
    }
}

/// Decides, for one execution, whether each request may go.
struct OutboundHooks {
    app: Arc<AppInfo>,
    grants: Arc<FlowGrants>,
    /// Requests this execution has made, refused ones included.
    requests: usize,
}

type Sent = Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
)>;

type Result<T, E = Error> = std::result::Result<T, E>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        match self.admit(&request) {
            Ok(admitted) => Box::new(admitted.send(request, options)),
            Err(refused) => Box::new(std::future::ready(Err(refused))),
        }
    }

    // How failures reach the guest. wasmtime-wasi-http's defaults log each
    // at `warn` outside the app's log budget; a flow decides how many
    // requests fail, so these log at `debug` only.

    fn p2_error_from_hyper(&mut self, error: &hyper::Error) -> ErrorCode {
        tracing::debug!(target: "wsflow::outbound", "outbound HTTP error: {error}");
        if error.is_timeout() {
            return ErrorCode::HttpResponseTimeout;
        }
        std::error::Error::source(error)
            .and_then(|cause| cause.downcast_ref::<ErrorCode>())
            .cloned()
            .unwrap_or(ErrorCode::HttpProtocolError)
    }

    fn p2_error_from_connect(&mut self, error: &io::Error) -> ErrorCode {
        tracing::debug!(target: "wsflow::outbound", "outbound connect error: {error}");
        match error.kind() {
            io::ErrorKind::ConnectionRefused => ErrorCode::ConnectionRefused,
            io::ErrorKind::TimedOut => ErrorCode::ConnectionTimeout,
            _ => ErrorCode::DestinationUnavailable,
        }
    }

    fn p2_error_from_tls(&mut self, error: &io::Error) -> ErrorCode {
        tracing::debug!(target: "wsflow::outbound", "outbound TLS error: {error}");
        ErrorCode::TlsProtocolError
    }
}

impl OutboundHooks {
    /// Check `request` against the grants and the limits that need no
    /// network: the error is what the guest gets.
    fn admit(&mut self, request: &http::Request<WasiBody>) -> Result<Admitted> {
        let stats = &self.app.stats;
        let limits = &self.app.limits;
        let url = request.uri().to_string();
        self.requests += 1;
        if self.requests > limits.max_outbound_requests_per_execution {
            AppStats::add(&stats.outbound_requests_limited, 1);
            if self.requests == limits.max_outbound_requests_per_execution + 1 {
                self.log(&format!(
                    "outbound request to {url} refused: the execution made more than the app's \
                     max_outbound_requests_per_execution of {}",
                    limits.max_outbound_requests_per_execution
                ));
            }
            return Err(Error::ConnectionLimitReached);
        }
        let Some(to) = destination(request.uri()) else {
            AppStats::add(&stats.outbound_requests_failed, 1);
            return Err(Error::HttpRequestUriInvalid);
        };
        let granted: Vec<AllowedHost> = self
            .grants
            .outbound_hosts
            .iter()
            .filter(|grant| grant.allows(&to))
            .cloned()
            .collect();
        if granted.is_empty() {
            AppStats::add(&stats.outbound_requests_denied, 1);
            self.log(&format!(
                "outbound request to {url} denied: no allowed_outbound_hosts entry of the flow \
                 grants {to}; add \"{to}\" to the flow's allowed_outbound_hosts to allow it"
            ));
            return Err(Error::HttpRequestDenied);
        }
        let Ok(permit) = Arc::clone(&self.app.outbound.in_flight).try_acquire_owned() else {
            AppStats::add(&stats.outbound_requests_limited, 1);
            self.log(&format!(
                "outbound request to {url} refused: the app has its \
                 max_outbound_requests_in_flight of {} in flight",
                limits.max_outbound_requests_in_flight
            ));
            return Err(Error::ConnectionLimitReached);
        };
        Ok(Admitted {
            app: Arc::clone(&self.app),
            url,
            to,
            granted,
            permit,
        })
    }

    fn log(&self, message: &str) {
        log(&self.app, message);
    }
}

/// One line in the app's log, within its log budget (a flow decides how
/// many requests it makes, and their URLs).
fn log(app: &AppInfo, message: &str) {
    if let Some(line) = guest_line(app, message) {
        tracing::warn!(target: "wsflow::outbound", app = ?app.name, "{line}");
    }
}

/// Where `uri` goes, if it names a host.
fn destination(uri: &http::Uri) -> Option<Destination> {
    let scheme = Scheme::parse(uri.scheme_str()?)?;
    let host = uri.host().filter(|host| !host.is_empty())?;
    let host = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host)
        .to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or_else(|| scheme.default_port());
    Some(Destination { scheme, host, port })
}

/// A request that may go, holding its slot of the app's requests in flight
/// until its response's body is read or dropped.
struct Admitted {
    app: Arc<AppInfo>,
    url: String,
    to: Destination,
    /// The grants that allow it.
    granted: Vec<AllowedHost>,
    permit: OwnedSemaphorePermit,
}

/// The timeouts of one request: the app's, or shorter ones the guest asked
/// for in its `request-options`.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    connect: Duration,
    first_byte: Duration,
    between_bytes: Duration,
}

impl Timeouts {
    fn new(limits: &AppLimits, options: Option<RequestOptions>) -> Self {
        let options = options.unwrap_or_default();
        let shorter = |limit: Duration, asked: Option<Duration>| {
            asked.map_or(limit, |asked| {
                asked.min(limit).max(Duration::from_millis(1))
            })
        };
        Self {
            connect: shorter(limits.outbound_connect_timeout, options.connect_timeout),
            first_byte: shorter(
                limits.outbound_first_byte_timeout,
                options.first_byte_timeout,
            ),
            between_bytes: shorter(
                limits.outbound_between_bytes_timeout,
                options.between_bytes_timeout,
            ),
        }
    }
}

impl Admitted {
    async fn send(self, request: http::Request<WasiBody>, options: Option<RequestOptions>) -> Sent {
        let app = Arc::clone(&self.app);
        let started = Instant::now();
        let sent = self.exchange(request, options).await;
        let stats = &app.stats;
        match &sent {
            Ok(_) => AppStats::add(&stats.outbound_requests_ok, 1),
            Err(Error::DestinationIpProhibited) => {
                AppStats::add(&stats.outbound_requests_denied, 1);
                return sent;
            }
            Err(Error::ConnectionTimeout | Error::ConnectionReadTimeout) => {
                AppStats::add(&stats.outbound_requests_timeout, 1);
            }
            Err(_) => AppStats::add(&stats.outbound_requests_failed, 1),
        }
        stats
            .metrics
            .outbound_request_time
            .record_duration(started.elapsed());
        sent
    }

    async fn exchange(
        self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Sent {
        let limits = &self.app.limits;
        let timeouts = Timeouts::new(limits, options);
        let connecting = tokio::time::timeout(timeouts.connect, self.connect());
        let stream = connecting.await.map_err(|_| Error::ConnectionTimeout)??;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(Error::Hyper)?;
        // The request line carries the path only; the authority went into
        // `Host`.
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_owned();
        *request.uri_mut() = http::Uri::builder()
            .path_and_query(path)
            .build()
            .map_err(|_| Error::HttpRequestUriInvalid)?;

        let response = tokio::time::timeout(timeouts.first_byte, sender.send_request(request));
        let mut response = pin!(response);
        let mut connection = Some(connection);
        // Wait for the response while driving the connection.
        let response = poll_fn(|cx| {
            if let Poll::Ready(response) = response.as_mut().poll(cx) {
                return Poll::Ready(response);
            }
            let Some(driving) = connection.as_mut() else {
                return Poll::Pending;
            };
            let ended = ready!(Pin::new(driving).poll(cx));
            connection = None;
            match ended {
                Ok(()) => response.as_mut().poll(cx),
                Err(error) => Poll::Ready(Ok(Err(error))),
            }
        })
        .await
        .map_err(|_| Error::ConnectionReadTimeout)?
        .map_err(Error::Hyper)?;

        let max = limits.max_outbound_response_size;
        if let Some(length) = response.body().size_hint().exact()
            && length > max as u64
        {
            return Err(Error::HttpResponseBodySize(Some(length)));
        }
        let response = response.map(|incoming| {
            LimitedBody {
                incoming,
                remaining: max,
                between_bytes: timeouts.between_bytes,
                deadline: Box::pin(tokio::time::sleep(timeouts.between_bytes)),
                _permit: self.permit,
            }
            .boxed_unsync()
        });
        let io: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async move {
            match connection {
                Some(connection) => connection.await.map_err(Error::Hyper),
                None => Ok(()),
            }
        });
        Ok((response, io))
    }

    /// A connection to a checked address of the destination, over TLS for
    /// `https`.
    async fn connect(&self) -> Result<Box<dyn Stream>> {
        let addresses = match self.to.host.parse::<IpAddr>() {
            Ok(address) => vec![address],
            Err(_) => self
                .app
                .outbound
                .resolver
                .0
                .lookup(&self.to.host)
                .await
                .map_err(|error| Error::DnsError {
                    rcode: Some(error.to_string()),
                    info_code: None,
                })?,
        };
        if addresses.is_empty() {
            return Err(Error::DestinationNotFound);
        }
        if let Some(forbidden) = addresses.iter().find(|address| {
            is_internal(**address)
                && !self
                    .granted
                    .iter()
                    .any(|grant| grant.names_address(**address))
        }) {
            log(
                &self.app,
                &format!(
                    "outbound request to {} denied: {} resolves to {forbidden}, a loopback, \
                     private, link-local or metadata address; only a grant that names the \
                     address (or localhost) reaches it",
                    self.url, self.to.host
                ),
            );
            return Err(Error::DestinationIpProhibited);
        }
        let mut last_error = None;
        let mut stream = None;
        for address in addresses {
            match TcpStream::connect(SocketAddr::new(address, self.to.port)).await {
                Ok(connected) => {
                    stream = Some(connected);
                    break;
                }
                Err(error) => last_error = Some(error),
            }
        }
        let Some(stream) = stream else {
            return Err(last_error.map_or(Error::ConnectionRefused, Error::Connect));
        };
        let _ = stream.set_nodelay(true);
        match self.to.scheme {
            Scheme::Http => Ok(Box::new(stream)),
            Scheme::Https => {
                let name = match self.to.host.parse::<IpAddr>() {
                    Ok(address) => rustls_pki_types::ServerName::from(address),
                    Err(_) => rustls_pki_types::ServerName::try_from(self.to.host.clone())
                        .map_err(|_| Error::HttpRequestUriInvalid)?,
                };
                let tls = tokio_rustls::TlsConnector::from(tls_config())
                    .connect(name, stream)
                    .await
                    .map_err(Error::Tls)?;
                Ok(Box::new(tls))
            }
        }
    }
}

/// A TCP or TLS stream.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin + 'static {}

impl<T> Stream for T where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin + 'static
{
}

/// The client configuration of every outbound TLS connection, built once.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }))
}

/// Whether `address` is one a flow reaches only with a grant that names
/// it: loopback, private (RFC 1918, unique-local), link-local (the cloud
/// metadata services among them: `169.254.169.254`, `fd00:ec2::254`),
/// carrier-grade NAT, unspecified, broadcast and multicast.
fn is_internal(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_internal_v4(v4),
            None => is_internal_v6(v6),
        },
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        // 100.64.0.0/10, carrier-grade NAT: inside some clouds' networks.
        || (a == 100 && (64..128).contains(&b))
        // 0.0.0.0/8: "this network".
        || a == 0
}

fn is_internal_v6(v6: Ipv6Addr) -> bool {
    let first = v6.segments()[0];
    v6.is_loopback()
        || v6.is_unspecified()
        || v6.is_multicast()
        // fc00::/7, unique local (`fd00:ec2::254` among them).
        || (first & 0xfe00) == 0xfc00
        // fe80::/10, link-local.
        || (first & 0xffc0) == 0xfe80
        // The IPv4-compatible ::a.b.c.d, deprecated: judged as IPv4.
        || v6.to_ipv4().is_some_and(|v4| v6.segments()[..6] == [0; 6] && is_internal_v4(v4))
}

/// A response body within the app's limits: at most
/// `max_outbound_response_size` bytes, and no longer than
/// `outbound_between_bytes_timeout` between two chunks. Holds the
/// request's slot of the app's requests in flight until it is dropped.
struct LimitedBody {
    incoming: hyper::body::Incoming,
    remaining: usize,
    between_bytes: Duration,
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(Error::Hyper(error)))),
            Poll::Ready(Some(Ok(frame))) => {
                let size = frame.data_ref().map_or(0, Bytes::len);
                if size > this.remaining {
                    this.remaining = 0;
                    return Poll::Ready(Some(Err(Error::HttpResponseBodySize(None))));
                }
                this.remaining -= size;
                let next = tokio::time::Instant::now() + this.between_bytes;
                this.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(this.deadline.as_mut().poll(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn destinations_come_from_the_url() {
        let uri: http::Uri = "https://API.example.com/x?y".parse().unwrap();
        let to = destination(&uri).unwrap();
        assert_eq!(to.host, "api.example.com");
        assert_eq!(to.port, 443);
        let uri: http::Uri = "http://[::1]:8080/".parse().unwrap();
        assert_eq!(destination(&uri).unwrap().host, "::1");
    }
}
