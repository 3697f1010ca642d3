//! The validated app: what the config layer hands to the rest of the host
//! (like Spin's `LockedApp`). Plain data — every `${NAME}` replaced, every
//! reference checked, every value converted, schemas compiled, build
//! settings included — and no TOML. The runtime and the trigger read this
//! and nothing else of a manifest.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::PathPattern;
use super::outbound::AllowedHost;

/// One app (tenant), validated and resolved from its manifest.
#[derive(Debug, Clone)]
pub struct AppSpec {
    pub(crate) name: String,
    /// The manifest the app came from, for messages.
    pub(crate) manifest: PathBuf,
    /// The properties flows can read (the manifest's, with overrides).
    pub(crate) properties: BTreeMap<String, String>,
    pub(crate) limits: AppLimits,
    pub(crate) flows: Vec<FlowSpec>,
    pub(crate) triggers: Vec<TriggerSpec>,
    /// The app's key-value stores (`[key_value.stores]`), by name.
    pub(crate) key_value_stores: Vec<String>,
    /// How backends reach the app through the server API, if they may.
    pub(crate) api: Option<ApiSpec>,
    /// Which groups keep history, and how much (`[[history]]`), in the
    /// manifest's order: a group follows the first that names it.
    pub(crate) history: Vec<HistorySpec>,
}

#[cfg(test)]
impl AppSpec {
    /// An app named `name` with `limits` and nothing else: no flows, no
    /// triggers, no stores (for unit tests of what an app's info drives).
    pub(crate) fn bare(name: &str, limits: AppLimits) -> Self {
        Self {
            name: name.into(),
            manifest: Default::default(),
            properties: Default::default(),
            limits,
            flows: Vec::new(),
            triggers: Vec::new(),
            key_value_stores: Vec::new(),
            api: None,
            history: Vec::new(),
        }
    }
}

/// `[[history]]`: groups that keep their recent messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HistorySpec {
    pub(crate) groups: GroupPattern,
    /// Messages kept per group, newest.
    pub(crate) size: usize,
    /// How long a message is kept.
    pub(crate) ttl: Duration,
    /// The JSON field the position is added as to every JSON-object text
    /// message (`"pos":"EPOCH:OFFSET"`), if any.
    pub(crate) position_field: Option<String>,
}

impl HistorySpec {
    /// The most messages a group may keep.
    pub(crate) const MAX_SIZE: usize = 10_000;
    /// The longest a message may be kept.
    pub(crate) const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
}

/// Group names a `[[history]]` applies to: one name, or every name that
/// starts with a prefix (`room:*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GroupPattern {
    Exact(String),
    Prefix(String),
}

impl GroupPattern {
    pub(crate) fn matches(&self, group: &str) -> bool {
        match self {
            Self::Exact(name) => group == name,
            Self::Prefix(prefix) => group.starts_with(prefix.as_str()),
        }
    }
}

/// The app on the server API.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ApiSpec {
    /// The bearer token requests must carry.
    pub(crate) token: String,
    /// Requests per second, sustained.
    pub(crate) requests_per_second: u32,
    /// Requests that may come at once after a quiet time.
    pub(crate) burst: u32,
    /// Requests answered at once; more get 429.
    pub(crate) max_in_flight: usize,
}

impl std::fmt::Debug for ApiSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSpec")
            .field("token", &"<hidden>")
            .field("requests_per_second", &self.requests_per_second)
            .field("burst", &self.burst)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl ApiSpec {
    /// The shortest token accepted.
    pub(crate) const MIN_TOKEN: usize = 16;

    /// The limits of an app that sets only its token.
    pub(crate) fn with_token(token: String) -> Self {
        Self {
            token,
            requests_per_second: 100,
            burst: 200,
            max_in_flight: 32,
        }
    }
}

impl AppSpec {
    /// The app's name (`[app] name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the app's manifest is.
    pub fn manifest(&self) -> &std::path::Path {
        &self.manifest
    }

    /// How many flows, triggers and handlers the app has.
    pub fn counts(&self) -> (usize, usize, usize) {
        let handlers = self.triggers.iter().map(|t| t.handlers.len()).sum();
        (self.flows.len(), self.triggers.len(), handlers)
    }
}

/// Limits applied to every execution and connection of an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppLimits {
    /// Linear memory a single execution may grow to, all its memories
    /// together.
    pub(crate) max_memory: usize,
    /// Linear memory all of the app's instances may hold together: running
    /// executions, reused instances and connection-mode sessions. A growth
    /// (or an instantiation) beyond it fails like one over `max_memory`.
    pub(crate) app_memory: usize,
    /// CPU time an execution may use: guest code and the work of its host
    /// calls, not time it waits (for its client, a timer or its turn).
    pub(crate) cpu_time: Duration,
    /// Time a data-mode execution may take from start to finish, and a
    /// connection's flow side may still run once its client has gone.
    pub(crate) wall_time: Duration,
    /// Data-mode executions of the app running at once; more wait for a
    /// slot. Connection-mode executions (one per connection) are capped by
    /// `max_reused_instances` instead.
    pub(crate) max_executions: usize,
    /// Connections of the app (all its triggers) open at once; more are
    /// refused with HTTP 503 before the upgrade.
    pub(crate) max_connections: usize,
    /// Instances kept alive for a connection at once: connections to an
    /// `instance = "reuse"` handler and connection-mode sessions. Each holds
    /// up to `max_memory` for the connection's life, so connections beyond
    /// this to such handlers are refused with HTTP 503 before the upgrade.
    pub(crate) max_reused_instances: usize,
    /// How long a client may take no bytes while some wait for it (a
    /// flow's `send` included), and how long a closing connection may take
    /// to deliver what was queued before its close; then the host closes it
    /// with 1008.
    pub(crate) slow_client_timeout: Duration,
    /// Bytes of messages that may wait per connection, in each direction:
    /// sent to it and not yet written to the client, or read from the
    /// client and not yet taken by the flow.
    pub(crate) queue_per_connection: usize,
    /// Bytes of messages that may wait for all connections of the app
    /// together, in each direction (group messages count against their
    /// members' connections only).
    pub(crate) queue_per_app: usize,
    /// Guest output lines (stdout, stderr, `log`) the app may write per
    /// second, with bursts up to ten times that; the rest is dropped and
    /// counted.
    pub(crate) log_lines_per_second: u32,
    /// Groups one connection may be in at once.
    pub(crate) max_groups_per_connection: usize,
    /// Connections one group may hold.
    pub(crate) max_group_members: usize,
    /// Bytes a connection's attachment (`groups.set-attachment`) may have.
    pub(crate) max_attachment_size: usize,
    /// Outbound HTTP requests of the app waiting for or reading a response
    /// at once; more are refused (`connection-limit-reached`), not queued.
    pub(crate) max_outbound_requests_in_flight: usize,
    /// Outbound HTTP requests one execution may make (a connection-mode
    /// session is one execution); more are refused.
    pub(crate) max_outbound_requests_per_execution: usize,
    /// Time to resolve, connect to and (for `https`) shake hands with an
    /// outbound host.
    pub(crate) outbound_connect_timeout: Duration,
    /// Time from sending an outbound request to its response's headers.
    pub(crate) outbound_first_byte_timeout: Duration,
    /// Time between two chunks of an outbound response's body.
    pub(crate) outbound_between_bytes_timeout: Duration,
    /// Bytes of an outbound response's body a flow may read.
    pub(crate) max_outbound_response_size: usize,
    /// Bytes of one key-value key.
    pub(crate) max_kv_key_size: usize,
    /// Bytes of one key-value value.
    pub(crate) max_kv_value_size: usize,
    /// Bytes of keys and values of all the app's stores together.
    pub(crate) max_kv_bytes: usize,
    /// Keys of all the app's stores together.
    pub(crate) max_kv_keys: usize,
    /// Bytes of the messages all the app's groups keep as history.
    pub(crate) max_history_bytes: usize,
    /// Groups of the app keeping history at once; the one published to
    /// least recently is dropped to make room for another.
    pub(crate) max_history_groups: usize,
}

impl Default for AppLimits {
    fn default() -> Self {
        Self {
            // Enough for a Rust flow with serde and a few MiB of data; small
            // enough that hundreds of concurrent executions fit in RAM.
            max_memory: 64 << 20,
            // A Rust flow starts with 1-2 MiB of linear memory: room for
            // every execution and reused instance of the defaults at about
            // 2 MiB each, or 16 at `max_memory`. Without it, an app could
            // hold (256 + 256) x 64 MiB = 32 GiB.
            app_memory: 1 << 30,
            // Generous for message handling, short enough that a runaway
            // loop is stopped before a client gives up.
            cpu_time: Duration::from_secs(1),
            wall_time: Duration::from_secs(10),
            // Two cores serve thousands of executions a second; more in
            // flight only adds memory.
            max_executions: 256,
            max_connections: 10_000,
            // As many as executions; their memory counts against
            // `app_memory` with everything else the app runs.
            max_reused_instances: 256,
            slow_client_timeout: Duration::from_secs(30),
            // One message of the default maximum size, or many small ones:
            // enough to batch writes, and what a client that stops reading
            // can pin at most.
            queue_per_connection: 1 << 20,
            // What all of an app's clients can pin together, far below
            // `max_connections` times the per-connection budget.
            queue_per_app: 64 << 20,
            log_lines_per_second: 100,
            // Rooms, topics and a per-user group or two; a connection in
            // hundreds of groups is more likely a bug than a design.
            max_groups_per_connection: 32,
            // As many as the app may have connections: one group may hold
            // the whole app (a broadcast channel).
            max_group_members: 10_000,
            // A user name or a small JSON record, as with Cloudflare's
            // `serializeAttachment` (2,048 bytes); a listing of 1,000
            // members then stays within 2 MiB of the flow's memory.
            max_attachment_size: 2048,
            // Each holds a socket and a buffer; an app waiting on a slow
            // service should not hold hundreds of either.
            max_outbound_requests_in_flight: 32,
            // A handful of calls per message is plenty; a loop that makes
            // thousands is stopped long before it floods the service.
            max_outbound_requests_per_execution: 100,
            // Connecting and the first byte together stay within the
            // default `wall_time` of 10s: a service that cannot be reached
            // or does not answer fails the call with an error value the
            // flow can act on, not the execution.
            outbound_connect_timeout: Duration::from_secs(2),
            outbound_first_byte_timeout: Duration::from_secs(5),
            outbound_between_bytes_timeout: Duration::from_secs(5),
            // A JSON answer with room to spare, a small fraction of the
            // default `max_memory` the flow reads it into.
            max_outbound_response_size: 4 << 20,
            // A path-like name with room to spare, as Cloudflare KV's 512.
            max_kv_key_size: 512,
            // A document or a small list, as a Durable Object's 128 KiB
            // per value; a flow holds a value in its memory whole.
            max_kv_value_size: 128 << 10,
            // What one tenant may keep on the host's disk (or in a
            // cluster's JetStream) without asking.
            max_kv_bytes: 64 << 20,
            // A store is not a database: listing stays cheap and one app's
            // index stays small.
            max_kv_keys: 100_000,
            // A hundred messages of 1 KiB in each of 160 rooms; counted
            // beside `app_memory`, which counts linear memory only.
            max_history_bytes: 16 << 20,
            // Rooms of a busy app; each empty one holds ~200 bytes.
            max_history_groups: 10_000,
        }
    }
}

/// A flow: its component, what it is granted, and how to build it.
#[derive(Debug, Clone)]
pub(crate) struct FlowSpec {
    pub(crate) name: String,
    pub(crate) component: PathBuf,
    pub(crate) grants: FlowGrants,
    /// Absent: the component is built by other means.
    pub(crate) build: Option<BuildSpec>,
}

/// How to rebuild a flow's component when it is missing or stale.
#[derive(Debug, Clone)]
pub(crate) struct BuildSpec {
    /// A shell command.
    pub(crate) command: String,
    /// Where the command runs (the manifest's directory).
    pub(crate) dir: PathBuf,
    /// Files and directories whose changes make the component stale.
    pub(crate) sources: Vec<PathBuf>,
}

/// What the manifest grants a flow beyond computing and its connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct FlowGrants {
    /// Environment variables the flow sees (and no others).
    pub(crate) env: Vec<(String, String)>,
    /// A host directory the flow may read, at `/data` in the sandbox.
    pub(crate) read_only_dir: Option<PathBuf>,
    /// The hosts the flow may call over HTTP.
    pub(crate) outbound_hosts: Vec<AllowedHost>,
    /// The app's key-value stores the flow may open, each declared in
    /// `[key_value.stores]`.
    pub(crate) key_value_stores: Vec<String>,
}

/// A WebSocket listener and its handlers.
#[derive(Debug, Clone)]
pub(crate) struct TriggerSpec {
    pub(crate) addr: SocketAddr,
    pub(crate) tls: Option<TlsSpec>,
    pub(crate) limits: TriggerLimits,
    /// `None`: any origin (or none) is accepted.
    pub(crate) allowed_origins: Option<Vec<String>>,
    /// Plain HTTP `GET` requests (not upgrades) are answered with files
    /// from this directory (canonical, checked at load).
    pub(crate) static_dir: Option<PathBuf>,
    pub(crate) handlers: Vec<HandlerSpec>,
}

/// Where PEM material comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PemSource {
    File(PathBuf),
    /// PEM text, given directly or base64-encoded through a property.
    Text(String),
}

impl std::fmt::Display for PemSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PemSource::File(path) => write!(f, "file {}", path.display()),
            PemSource::Text(_) => f.write_str("inline PEM"),
        }
    }
}

/// `wss://`: the server's certificate chain and key, and optional client
/// certificate authorities.
#[derive(Debug, Clone)]
pub(crate) struct TlsSpec {
    pub(crate) cert: PemSource,
    pub(crate) key: PemSource,
    /// Non-empty: clients must present a certificate signed by one of these.
    pub(crate) client_ca: Vec<PemSource>,
}

/// Limits of one listener and its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TriggerLimits {
    pub(crate) max_connections: Option<usize>,
    /// Accepted sockets in TLS or the upgrade at once; beyond it the
    /// listener stops accepting until one finishes.
    pub(crate) max_pending_handshakes: usize,
    pub(crate) max_message_size: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) ping_interval: Option<Duration>,
}

/// Largest message (and frame) a client may send, unless configured.
pub(crate) const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;

/// A client that has not finished TLS and the upgrade by then is dropped, so
/// idle sockets cannot pile up before the handshake.
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest duration a manifest may set: a year (8760h) is longer than
/// any timeout or limit needs, and added to the current time it cannot
/// overflow a clock.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Handshakes a listener serves at once unless configured: a burst of
/// clients queues in the listen backlog beyond it, and sockets that never
/// finish a handshake cannot take every descriptor of the host.
pub(crate) const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 256;

/// The ping interval `FLOGO_WEBSOCKET_SERVERPING=TRUE` turns on, as in Flogo.
pub(crate) const FLOGO_SERVER_PING_INTERVAL: Duration = Duration::from_secs(5);

/// A path served by a flow.
#[derive(Debug, Clone)]
pub(crate) struct HandlerSpec {
    pub(crate) path: PathPattern,
    pub(crate) mode: Mode,
    pub(crate) format: Format,
    pub(crate) schema: Option<SchemaSpec>,
    pub(crate) on_invalid: OnInvalid,
    pub(crate) instance: Instance,
    /// What a publish does when this handler's connection cannot take
    /// another message.
    pub(crate) slow_member: SlowMember,
    /// The name of one of the app's flows.
    pub(crate) flow: String,
    /// The flow whose `on-connect` hook admits clients, if any.
    pub(crate) on_connect: Option<String>,
    /// Whether connections accepted into the same group must have distinct
    /// attachments (`unique_attachment`).
    pub(crate) unique_attachment: bool,
    /// The flow whose `on-close` hook runs after each connection, if any.
    pub(crate) on_close: Option<String>,
    pub(crate) path_params: Vec<ParamSpec>,
    pub(crate) query_params: Vec<ParamSpec>,
    /// Names are lower case.
    pub(crate) headers: Vec<ParamSpec>,
    pub(crate) inputs: Vec<(String, InputSource)>,
}

impl HandlerSpec {
    /// Whether a connection to this handler keeps an instance for its whole
    /// life — a reused instance, or a connection-mode session — and so takes
    /// one of the app's `max_reused_instances` slots.
    pub(crate) fn keeps_an_instance(&self) -> bool {
        self.instance == Instance::Reuse || self.mode == Mode::Connection
    }
}

/// A JSON schema, compiled once when the manifest is validated.
#[derive(Debug, Clone)]
pub(crate) struct SchemaSpec {
    pub(crate) validator: Arc<jsonschema::Validator>,
}

/// A declared path parameter, query parameter or header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParamSpec {
    pub(crate) name: String,
    pub(crate) ty: ParamType,
    pub(crate) repeating: bool,
    pub(crate) required: bool,
}

/// The type a parameter's text is converted to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ParamType {
    #[default]
    String,
    Number,
    Integer,
    Boolean,
}

/// How a handler drives its flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// One execution per message; executions of a connection run in order.
    #[default]
    Data,
    /// One execution per connection, which receives and sends itself.
    Connection,
}

/// How data-mode messages are decoded before the flow runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Format {
    /// Passed through as text (or binary).
    #[default]
    String,
    /// Parsed as JSON (and checked against the schema) before the flow runs.
    Json,
}

/// How many instances a data-mode connection uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Instance {
    /// A fresh instance per message: nothing survives between messages.
    #[default]
    Fresh,
    /// One instance for all messages of a connection: faster, and state
    /// (globals, heap) survives from one message to the next.
    Reuse,
}

/// What a publish (or `send-to`) does for a member whose outbound queue is
/// full. Either way the publisher does not wait and the other members get
/// the message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SlowMember {
    /// Close the member with 1008: it misses nothing silently, and a client
    /// that reconnects can resynchronise. The default, because a gap the
    /// client cannot see (a chat line, a state change) is worse than a
    /// reconnect it can.
    #[default]
    Close,
    /// Drop the message for that member and count it; the member stays
    /// connected. For streams where the next message supersedes the last
    /// (positions, prices, presence).
    Drop,
}

/// What happens to a message that is not valid JSON or fails the schema.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OnInvalid {
    /// Close the connection with 1007 and a reason naming the problem.
    #[default]
    Close,
    /// Reply with `{"error": ..., "pointer": ...}` and keep the connection.
    Reply,
}

/// One step into JSON content: an object key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JsonStep {
    Key(String),
    Index(usize),
}

/// A trigger output a flow input is mapped from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InputSource {
    PathParam(String),
    QueryParam(String),
    /// Lower case.
    Header(String),
    /// `$.content` followed by keys and indexes.
    Content(Vec<JsonStep>),
}

impl InputSource {
    /// Parse `$.pathParams.x`, `$.queryParams.y`, `$.headers.z`,
    /// `$.content`, `$.content.a.b[0]`.
    pub(crate) fn parse(expression: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{expression}` is not a trigger output; use $.pathParams.NAME, \
                 $.queryParams.NAME, $.headers.NAME, $.content or $.content.FIELD"
            )
        };
        let rest = expression.trim().strip_prefix("$.").ok_or_else(bad)?;
        let (root, tail) = match rest.find(['.', '[']) {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        let simple_name = |tail: &str| -> Result<String, String> {
            let name = tail.strip_prefix('.').ok_or_else(bad)?;
            if name.is_empty() || name.contains(['.', '[', ']']) {
                return Err(bad());
            }
            Ok(name.to_owned())
        };
        match root {
            "pathParams" => Ok(Self::PathParam(simple_name(tail)?)),
            "queryParams" => Ok(Self::QueryParam(simple_name(tail)?)),
            "headers" => Ok(Self::Header(simple_name(tail)?.to_ascii_lowercase())),
            "content" => parse_steps(tail).map(Self::Content).ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

fn parse_steps(mut tail: &str) -> Option<Vec<JsonStep>> {
    let mut steps = Vec::new();
    while !tail.is_empty() {
        if let Some(rest) = tail.strip_prefix('.') {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            let key = &rest[..end];
            if key.is_empty() || key.contains(']') {
                return None;
            }
            steps.push(JsonStep::Key(key.to_owned()));
            tail = &rest[end..];
        } else if let Some(rest) = tail.strip_prefix('[') {
            let end = rest.find(']')?;
            steps.push(JsonStep::Index(rest[..end].parse().ok()?));
            tail = &rest[end + 1..];
        } else {
            return None;
        }
    }
    Some(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_input_sources() {
        assert_eq!(
            InputSource::parse("$.pathParams.region"),
            Ok(InputSource::PathParam("region".into()))
        );
        assert_eq!(
            InputSource::parse("$.headers.X-Client"),
            Ok(InputSource::Header("x-client".into()))
        );
        assert_eq!(
            InputSource::parse("$.content"),
            Ok(InputSource::Content(vec![]))
        );
        assert_eq!(
            InputSource::parse("$.content.items[2].name"),
            Ok(InputSource::Content(vec![
                JsonStep::Key("items".into()),
                JsonStep::Index(2),
                JsonStep::Key("name".into()),
            ]))
        );
        for bad in [
            "content",
            "$.body",
            "$.pathParams",
            "$.pathParams.a.b",
            "$.content[x]",
            "$.content.",
        ] {
            assert!(InputSource::parse(bad).is_err(), "{bad}");
        }
    }
}
