//! Several hosts behind a load balancer acting as one, through NATS
//! (`wsflow up --cluster nats://HOST:PORT`).
//!
//! ```text
//! flow ──groups──> ClusterHub (one per app) ──> LocalHub: this host's connections
//!                        │        ^
//!                        │        └── inbound queue, fanned out in the app's turns
//!                        └──> Link (one per host): outbox lanes + NATS client ──> other hosts
//! ```
//!
//! A host joins with a random host id ([`HostId`], claimed on the broker
//! so two live hosts do not share one), which every connection id it hands
//! out carries; each app gets a [`hub::ClusterHub`] in place of a bare
//! `LocalHub`. What crosses the broker, and under which subjects, is in
//! [`wire`]; the link's lanes (one per app, and a control lane) are in
//! [`outbox`]; which hosts serve an app, and which groups each holds, is
//! in [`directory`]; how a host tells the others which groups it holds is
//! in [`interest`]; messages from other hosts waiting for the app's turn
//! are in [`inbound`]; requests waiting for other hosts' answers are in
//! [`questions`]. docs/CLUSTER.md
//! describes the design for users: consistency, failure behaviour, how to
//! run it.
//!
//! The broker being unreachable is never an error of the host: it serves
//! locally, says so, and reconnects by itself; operations that need other
//! hosts answer `unavailable` meanwhile.

mod directory;
mod history;
mod hub;
mod inbound;
mod interest;
mod link;
mod outbox;
mod questions;
mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectErrorKind, ConnectOptions, ServerAddr};
use tokio_tungstenite::tungstenite::Bytes;

use crate::hub::{HostId, HubLimits, Transport};
use link::{Events, Link};

/// How long one attempt to reach a NATS server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the client pings its server: a server that stops answering
/// (the network, not the process, is gone) is noticed after three missed
/// pings, 15 s.
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// The longest pause between attempts to reconnect: the broker is back in
/// use at most this long after it is reachable again.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Random host ids tried before giving up (each one taken already is a
/// one-in-a-million chance per live host).
const HOST_ID_ATTEMPTS: usize = 8;

/// How to reach the cluster's NATS servers.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// NATS server URLs (`nats://HOST:PORT`, or `tls://HOST:PORT`; user and
    /// password or a token may be given in the URL); several for a NATS
    /// cluster, the client moves between them.
    pub servers: Vec<String>,
    /// A NATS credentials file (`.creds`: a user JWT and its nkey seed).
    pub credentials: Option<PathBuf>,
    /// PEM CA certificates to trust for the servers' TLS certificates,
    /// besides the system's.
    pub tls_ca: Option<PathBuf>,
    /// A PEM client certificate, with [`ClusterOptions::tls_key`], for
    /// servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of [`ClusterOptions::tls_cert`].
    pub tls_key: Option<PathBuf>,
}

/// Why a host cannot join its cluster: the settings are wrong. (A broker
/// that cannot be reached is not an error: the host serves locally.)
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No server URL.
    #[error("--cluster: no NATS server given; give nats://HOST:PORT (several separated by commas)")]
    NoServers,
    /// A URL that is not a NATS server's.
    #[error(
        "--cluster: `{url}` is not a NATS server URL ({reason}); give nats://HOST:PORT, or \
         tls://HOST:PORT for TLS"
    )]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file named by a setting cannot be read.
    #[error("{setting}: cannot read {}: {error}", path.display())]
    Unreadable {
        /// The setting that names it.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A client certificate without its key, or the other way round.
    #[error("--cluster-cert and --cluster-key go together: give both, or neither")]
    HalfAClientCertificate,
    /// The servers refused this host (credentials, TLS).
    #[error(
        "NATS at {servers} refused this host ({reason}); check the credentials \
         (--cluster-creds, or user and password in the URL) and the TLS settings \
         (--cluster-ca, --cluster-cert, --cluster-key)"
    )]
    Refused {
        /// The servers, without credentials.
        servers: String,
        /// What the client reported.
        reason: String,
    },
    /// Every host id tried is taken.
    #[error(
        "no free host id found in the cluster at {servers} after {HOST_ID_ATTEMPTS} tries; \
         this should not happen, try again"
    )]
    NoHostId {
        /// The servers, without credentials.
        servers: String,
    },
}

/// This host's membership of a cluster: cheap to clone, shared by all its
/// apps. Dropping the last clone (and the apps' hubs) closes the
/// connection to NATS without a goodbye; [`Cluster::leave`] says goodbye
/// first.
#[derive(Clone)]
pub struct Cluster {
    link: Arc<Link>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.link.fmt(f)
    }
}

impl Cluster {
    /// Connect to the NATS servers of `options` and take a host id. If no
    /// server can be reached the host joins all the same: it says so,
    /// serves locally, and connects in the background.
    pub async fn join(options: &ClusterOptions) -> Result<Self, ClusterError> {
        let servers = parse_servers(&options.servers)?;
        let shown = shown(&servers);
        check_files(options)?;
        for _ in 0..HOST_ID_ATTEMPTS {
            let host = HostId::random();
            let (events, state) = Events::new(host, &shown);
            let connected = connect_options(options, &servers, host, &events)
                .await?
                .connect(servers.clone())
                .await;
            let client = match connected {
                Ok(client) => {
                    if taken(&client, host).await {
                        continue;
                    }
                    client
                }
                Err(error) if refused(error.kind()) => {
                    return Err(ClusterError::Refused {
                        servers: shown,
                        reason: error.to_string(),
                    });
                }
                Err(error) => {
                    tracing::warn!(
                        cluster_host = host.get(),
                        "cluster: NATS at {shown} cannot be reached ({error}); serving locally, \
                         group operations that need other hosts answer `unavailable` until it \
                         can; connecting in the background"
                    );
                    connect_options(options, &servers, host, &events)
                        .await?
                        .retry_on_initial_connect()
                        .connect(servers.clone())
                        .await
                        .map_err(|error| ClusterError::Refused {
                            servers: shown.clone(),
                            reason: error.to_string(),
                        })?
                }
            };
            let claim = client
                .subscribe(wire::host_claim(host))
                .await
                .map_err(|error| ClusterError::Refused {
                    servers: shown.clone(),
                    reason: error.to_string(),
                })?;
            let link = Link::new(host, client, claim, &events, state);
            tracing::info!(
                cluster_host = host.get(),
                "cluster: this host is host {host} of the cluster at {shown}"
            );
            return Ok(Self { link });
        }
        Err(ClusterError::NoHostId { servers: shown })
    }

    /// This host's id in the cluster (1 to 2^20 - 1), which every
    /// connection id it hands out carries.
    pub fn host_id(&self) -> u32 {
        self.link.host().get()
    }

    /// Whether the connection to NATS is up now.
    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// Say goodbye: the other hosts drop this host's members at once
    /// instead of after [`directory::HOST_TIMEOUT`]. Waits (up to 2 s)
    /// for the broker to take it; nothing is sent afterwards.
    pub async fn leave(&self) {
        self.link.leave().await;
    }

    pub(crate) fn host(&self) -> HostId {
        self.link.host()
    }

    /// The cluster's JetStream, where the apps' key-value stores live.
    pub(crate) fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.link.client().clone())
    }

    /// The hub of app `spec` on this host, reaching its other hosts; what
    /// it does for the app's members runs in the app's `turns`. The groups
    /// its `[[history]]` names keep their history in the cluster's
    /// JetStream ([`history`]).
    pub(crate) fn hub(
        &self,
        spec: &crate::manifest::spec::AppSpec,
        limits: HubLimits,
        turns: &crate::runtime::Lane,
    ) -> Arc<dyn Transport> {
        let history = (!spec.history.is_empty()).then(|| {
            history::StreamHistory::new(
                &spec.name,
                spec.history.clone(),
                &spec.limits,
                self.jetstream(),
            )
        });
        Arc::new(hub::ClusterHub::new(
            &self.link,
            &spec.name,
            limits,
            turns.clone(),
            history,
        ))
    }
}

fn parse_servers(urls: &[String]) -> Result<Vec<ServerAddr>, ClusterError> {
    let urls: Vec<&str> = urls
        .iter()
        .flat_map(|urls| urls.split(','))
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(ClusterError::NoServers);
    }
    urls.into_iter()
        .map(|url| {
            let bad = |reason: String| ClusterError::BadUrl {
                url: url.to_owned(),
                reason,
            };
            let server: ServerAddr = url.parse().map_err(|error| bad(format!("{error}")))?;
            if !matches!(server.scheme(), "nats" | "tls") {
                return Err(bad(format!(
                    "the scheme `{}` is not served",
                    server.scheme()
                )));
            }
            if server.host().is_empty() {
                return Err(bad("it names no host".into()));
            }
            Ok(server)
        })
        .collect()
}

/// The servers as logs and errors show them: no user, password or token.
fn shown(servers: &[ServerAddr]) -> String {
    servers
        .iter()
        .map(|server| format!("{}://{}:{}", server.scheme(), server.host(), server.port()))
        .collect::<Vec<_>>()
        .join(",")
}

fn check_files(options: &ClusterOptions) -> Result<(), ClusterError> {
    if options.tls_cert.is_some() != options.tls_key.is_some() {
        return Err(ClusterError::HalfAClientCertificate);
    }
    let files = [
        ("--cluster-creds", &options.credentials),
        ("--cluster-ca", &options.tls_ca),
        ("--cluster-cert", &options.tls_cert),
        ("--cluster-key", &options.tls_key),
    ];
    for (setting, path) in files {
        if let Some(path) = path
            && let Err(error) = std::fs::File::open(path)
        {
            return Err(ClusterError::Unreadable {
                setting,
                path: path.clone(),
                error,
            });
        }
    }
    Ok(())
}

async fn connect_options(
    options: &ClusterOptions,
    servers: &[ServerAddr],
    host: HostId,
    events: &Events,
) -> Result<ConnectOptions, ClusterError> {
    let mut connect = ConnectOptions::new();
    // The client reads no credentials from the URLs itself: a user and
    // password (`nats://USER:PASS@HOST`) or a token (`nats://TOKEN@HOST`)
    // given in the first URL that has one are passed on here.
    if let Some(server) = servers.iter().find(|server| server.has_user_pass()) {
        match (server.username(), server.password()) {
            (Some(user), Some(password)) => {
                connect = connect.user_and_password(user.to_owned(), password.to_owned());
            }
            (Some(token), None) => connect = connect.token(token.to_owned()),
            _ => {}
        }
    }
    if let Some(path) = &options.credentials {
        connect =
            connect
                .credentials_file(path)
                .await
                .map_err(|error| ClusterError::Unreadable {
                    setting: "--cluster-creds",
                    path: path.clone(),
                    error,
                })?;
    }
    if let Some(ca) = &options.tls_ca {
        connect = connect.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&options.tls_cert, &options.tls_key) {
        connect = connect
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    let events = events.clone();
    Ok(connect
        .name(format!("wsflow host {host}"))
        // This host delivers its own messages itself; the broker must not
        // hand them back.
        .no_echo()
        .client_capacity(link::CLIENT_CAPACITY)
        .subscription_capacity(link::SUBSCRIPTION_CAPACITY)
        .connection_timeout(CONNECT_TIMEOUT)
        .ping_interval(PING_INTERVAL)
        .reconnect_delay_callback(|attempts| {
            let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
            (Duration::from_millis(100) * attempts).min(MAX_RECONNECT_DELAY)
        })
        .event_callback(move |event| events.clone().on(event)))
}

/// Errors that no retry mends: the settings are wrong.
fn refused(kind: ConnectErrorKind) -> bool {
    matches!(
        kind,
        ConnectErrorKind::Authentication
            | ConnectErrorKind::AuthorizationViolation
            | ConnectErrorKind::Tls
            | ConnectErrorKind::ServerParse
    )
}

/// Whether a live host holds the claim on `host` already.
async fn taken(client: &async_nats::Client, host: HostId) -> bool {
    let asked = client.request(wire::host_claim(host), Bytes::new());
    match tokio::time::timeout(hub::QUERY_TIMEOUT, asked).await {
        Ok(Ok(_answer)) => true,
        // No responders (or no answer in time): the id is free.
        Ok(Err(_)) | Err(_) => false,
    }
}
