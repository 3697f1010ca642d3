//! The `wsflow.toml` schema: serde structs only, with `deny_unknown_fields`
//! so a misspelt key is an error. Every scalar a user may also write as
//! `"${PROPERTY}"` is kept as a spanned [`toml::Value`] and converted by the
//! one typed resolver in [`super::validate`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::spec::{Format, Instance, Mode, OnInvalid, ParamType, SlowMember};

/// A scalar setting as written: a number, a boolean or a string (which may
/// hold `${NAME}` references), with its place in the file.
pub(crate) type Scalar = Spanned<toml::Value>;

/// A whole manifest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    pub(crate) app: AppSection,
    /// App properties: `NAME = "value"`, readable by flows.
    #[serde(default)]
    pub(crate) properties: BTreeMap<String, String>,
    /// Flows by name: `[flows.NAME]`.
    #[serde(default)]
    pub(crate) flows: BTreeMap<String, FlowSection>,
    /// Limits of the app's executions and connections.
    #[serde(default)]
    pub(crate) limits: LimitsSection,
    /// App-level JSON schemas by name: `[schemas.NAME]`.
    #[serde(default)]
    pub(crate) schemas: BTreeMap<String, SchemaSource>,
    /// `[[triggers]]`: one WebSocket listener each.
    #[serde(default)]
    pub(crate) triggers: Vec<TriggerSection>,
    /// The app's key-value stores.
    #[serde(default)]
    pub(crate) key_value: KeyValueSection,
    /// `[api]`: the app on the server API (`wsflow up --api`).
    pub(crate) api: Option<ApiSection>,
    /// `[[history]]`: groups that keep their recent messages.
    #[serde(default)]
    pub(crate) history: Vec<HistorySection>,
}

/// `[[history]]`: the groups it names keep their recent messages, each with
/// a position, for clients that reconnect and flows that read them.
///
/// ```toml
/// [[history]]
/// groups = "room:*"          # one group, or every group starting with `room:`
/// size = 100                 # messages kept per group (1 to 10000; default 100)
/// ttl = "10m"                # how long a message is kept (up to 24h; default 1h)
/// position_field = "pos"     # add "pos":"EPOCH:OFFSET" to JSON-object text messages
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistorySection {
    pub(crate) groups: Spanned<String>,
    pub(crate) size: Option<Scalar>,
    pub(crate) ttl: Option<Scalar>,
    pub(crate) position_field: Option<Spanned<String>>,
}

/// `[api]`: backends may reach the app through the server API with this
/// bearer token, within these limits.
///
/// ```toml
/// [api]
/// token = "${API_TOKEN}"         # 16 characters or more; WSFLOW_PROP_API_TOKEN supplies it
/// requests_per_second = 100      # sustained, with bursts of `burst`
/// burst = 200
/// max_in_flight = 32             # requests answered at once
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiSection {
    pub(crate) token: Spanned<String>,
    pub(crate) requests_per_second: Option<Scalar>,
    pub(crate) burst: Option<Scalar>,
    pub(crate) max_in_flight: Option<Scalar>,
}

/// `[key_value]`: the app's key-value stores, by name. Flows open only
/// the stores their `[flows.NAME] key_value_stores` grants, and only the
/// app's own: the same name in another app is another store.
///
/// ```toml
/// [key_value.stores]
/// default = {}
/// scores = {}
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyValueSection {
    #[serde(default)]
    pub(crate) stores: BTreeMap<String, StoreSection>,
}

/// `[key_value.stores.NAME]`: one store. No settings yet; the quotas are
/// the app's (`[limits]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreSection {}

/// `[app]`
///
/// ```toml
/// [app]
/// name = "orders"
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppSection {
    pub(crate) name: Spanned<String>,
}

/// `[flows.NAME]`: a flow component and how to build it.
///
/// ```toml
/// [flows.echo]
/// component = "target/wasm32-wasip2/release/echo.wasm"
/// build = "cargo build --release --target wasm32-wasip2"
/// sources = ["src", "Cargo.toml"]
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FlowSection {
    /// The component file, relative to the manifest's directory.
    pub(crate) component: Spanned<String>,
    /// A shell command, run in the manifest's directory, that builds the
    /// component. `wsflow up` runs it when the component is missing or older
    /// than any of `sources`.
    pub(crate) build: Option<String>,
    /// Files and directories whose changes make the component stale.
    /// Default: `["src", "Cargo.toml"]`.
    pub(crate) sources: Option<Vec<String>>,
    /// Environment variables the flow sees (it sees no others).
    #[serde(default)]
    pub(crate) env: BTreeMap<String, Spanned<String>>,
    /// A directory (relative to the manifest) the flow may read, at `/data`.
    pub(crate) read_only_dir: Option<Spanned<String>>,
    /// The hosts the flow may call over HTTP (it may call no others):
    /// `["https://api.example.com", "http://127.0.0.1:8080",
    /// "https://*.example.org"]`.
    #[serde(default)]
    pub(crate) allowed_outbound_hosts: Vec<Spanned<String>>,
    /// The app's key-value stores (`[key_value.stores]`) the flow may open.
    #[serde(default)]
    pub(crate) key_value_stores: Vec<Spanned<String>>,
}

/// `[limits]`: what one app's executions and connections may use.
///
/// ```toml
/// [limits]
/// max_memory = "64MiB"         # linear memory per execution
/// app_memory = "1GiB"          # linear memory of all the app's instances together
/// cpu_time = "1s"              # per execution: time it runs, not time it waits
/// wall_time = "10s"            # per data-mode execution, and after a client has gone
/// max_executions = 256         # data-mode executions running at once
/// max_connections = 10000      # open at once, all triggers together
/// max_reused_instances = 256   # connections keeping an instance open at once:
///                              # `instance = "reuse"` and connection mode
/// slow_client_timeout = "30s"  # a client taking nothing this long while bytes wait: close 1008
/// queue_per_connection = "1MiB" # message bytes waiting per connection, each way
/// queue_per_app = "64MiB"      # message bytes waiting for all the app's connections, each way
/// log_lines_per_second = 100   # guest output; bursts of ten times that
/// max_groups_per_connection = 32
/// max_group_members = 10000
/// max_attachment_size = "2KiB"
/// max_outbound_requests_in_flight = 32   # outbound HTTP requests of the app at once
/// max_outbound_requests_per_execution = 100
/// outbound_connect_timeout = "2s"        # name lookup, TCP and TLS
/// outbound_first_byte_timeout = "5s"     # request sent to response headers
/// outbound_between_bytes_timeout = "5s"  # between chunks of the response body
/// max_outbound_response_size = "4MiB"    # response body bytes
/// max_kv_key_size = 512        # key-value: bytes of one key
/// max_kv_value_size = "128KiB" # key-value: bytes of one value
/// max_kv_bytes = "64MiB"       # key-value: keys and values of all the app's stores
/// max_kv_keys = 100000         # key-value: keys of all the app's stores
/// max_history_bytes = "16MiB"  # history: messages all the app's groups keep
/// max_history_groups = 10000   # history: groups keeping history at once
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsSection {
    pub(crate) max_memory: Option<Scalar>,
    pub(crate) app_memory: Option<Scalar>,
    pub(crate) cpu_time: Option<Scalar>,
    pub(crate) wall_time: Option<Scalar>,
    pub(crate) max_executions: Option<Scalar>,
    pub(crate) max_connections: Option<Scalar>,
    pub(crate) max_reused_instances: Option<Scalar>,
    pub(crate) slow_client_timeout: Option<Scalar>,
    pub(crate) queue_per_connection: Option<Scalar>,
    pub(crate) queue_per_app: Option<Scalar>,
    pub(crate) log_lines_per_second: Option<Scalar>,
    pub(crate) max_groups_per_connection: Option<Scalar>,
    pub(crate) max_group_members: Option<Scalar>,
    pub(crate) max_attachment_size: Option<Scalar>,
    pub(crate) max_outbound_requests_in_flight: Option<Scalar>,
    pub(crate) max_outbound_requests_per_execution: Option<Scalar>,
    pub(crate) outbound_connect_timeout: Option<Scalar>,
    pub(crate) outbound_first_byte_timeout: Option<Scalar>,
    pub(crate) outbound_between_bytes_timeout: Option<Scalar>,
    pub(crate) max_outbound_response_size: Option<Scalar>,
    pub(crate) max_kv_key_size: Option<Scalar>,
    pub(crate) max_kv_value_size: Option<Scalar>,
    pub(crate) max_kv_bytes: Option<Scalar>,
    pub(crate) max_kv_keys: Option<Scalar>,
    pub(crate) max_history_bytes: Option<Scalar>,
    pub(crate) max_history_groups: Option<Scalar>,
}

/// Where a JSON schema comes from: exactly one of `inline` (JSON text),
/// `file` (relative to the manifest) or `app` (the name of a
/// `[schemas.NAME]` entry; handlers only).
///
/// ```toml
/// [schemas.order]
/// file = "order.schema.json"
///
/// [[triggers.handlers]]
/// schema = { app = "order" }
/// # or: schema = { inline = '{"type": "object"}' }
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SchemaSource {
    pub(crate) inline: Option<Spanned<String>>,
    pub(crate) file: Option<Spanned<String>>,
    pub(crate) app: Option<Spanned<String>>,
}

/// `[[triggers]]`: a WebSocket listener.
///
/// ```toml
/// [[triggers]]
/// port = 9998                  # or "${PORT}"
/// host = "127.0.0.1"
/// max_connections = 10000
/// max_pending_handshakes = 256
/// max_message_size = 1048576
/// handshake_timeout = "10s"
/// idle_timeout = "5m"
/// ping_interval = "30s"
/// allowed_origins = ["https://example.com"]
/// static_dir = "public"
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TriggerSection {
    /// Default 9998. Port 0 picks a free port. An integer, or a string
    /// such as `"${PORT}"`.
    pub(crate) port: Option<Scalar>,
    /// The address to listen on. Default `127.0.0.1`; `0.0.0.0` for all
    /// interfaces.
    pub(crate) host: Option<Spanned<String>>,
    /// TLS for this listener (`wss://`).
    pub(crate) tls: Option<TlsSection>,
    /// Connections beyond this are refused with HTTP 503 before the upgrade.
    pub(crate) max_connections: Option<Scalar>,
    /// Accepted sockets that may be in TLS or the upgrade at once (default
    /// 256, and at most half of what the host allows); while this many are,
    /// the listener accepts nothing and new clients wait in its backlog.
    pub(crate) max_pending_handshakes: Option<Scalar>,
    /// Largest message or frame a client may send, in bytes (default 1 MiB;
    /// larger: close 1009).
    pub(crate) max_message_size: Option<Scalar>,
    /// How long a client may take to complete TLS and the upgrade.
    pub(crate) handshake_timeout: Option<Scalar>,
    /// Close a connection (1001) after this long without a frame from the
    /// client. Off by default.
    pub(crate) idle_timeout: Option<Scalar>,
    /// Send a ping this often. Off by default; `FLOGO_WEBSOCKET_SERVERPING=TRUE`
    /// in the environment turns on a ping every 5 s.
    pub(crate) ping_interval: Option<Scalar>,
    /// When set, only upgrade requests whose `Origin` header is in the list
    /// are accepted (others get HTTP 403).
    pub(crate) allowed_origins: Option<Vec<Spanned<String>>>,
    /// A directory (relative to the manifest) whose files answer plain HTTP
    /// `GET` requests on this listener: `index.html` for `/`; 404 for
    /// anything else.
    pub(crate) static_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) handlers: Vec<HandlerSection>,
}

/// `[triggers.tls]`: serve `wss://`.
///
/// ```toml
/// [triggers.tls]
/// enabled = true
/// cert = "certs/server.pem"    # a file, PEM text or base64 PEM (e.g. "${SERVER_CERT}")
/// key = "certs/server.key"
/// client_ca = ["certs/ca.pem"] # optional: require client certificates signed by these
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSection {
    /// Default true when the table is present.
    pub(crate) enabled: Option<Scalar>,
    pub(crate) cert: Option<Spanned<String>>,
    pub(crate) key: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) client_ca: Vec<Spanned<String>>,
}

/// `[[triggers.handlers]]`: a path served by a flow.
///
/// ```toml
/// [[triggers.handlers]]
/// path = "/orders/{region}"
/// mode = "data"
/// format = "json"
/// schema = { app = "order" }
/// on_invalid = "close"
/// slow_member = "close"
/// flow = "orders"
/// on_connect = "gate"
/// on_close = "gate"
/// unique_attachment = true
/// query_params = [
///   { name = "user", type = "string", required = true },
///   { name = "tag", repeating = true },
/// ]
/// headers = [{ name = "X-Client" }]
///
/// [triggers.handlers.inputs]
/// user = "$.queryParams.user"
/// item = "$.content.item"
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HandlerSection {
    /// The request path; `{name}` segments are path parameters.
    pub(crate) path: Spanned<String>,
    #[serde(default)]
    pub(crate) mode: Mode,
    #[serde(default)]
    pub(crate) format: Format,
    /// JSON Schema every message must satisfy (`format = "json"` only).
    pub(crate) schema: Option<Spanned<SchemaSource>>,
    /// What a message that is not valid JSON or fails the schema gets.
    #[serde(default)]
    pub(crate) on_invalid: OnInvalid,
    /// Data mode: a fresh instance per message (default) or one instance
    /// reused for all messages of a connection.
    pub(crate) instance: Option<Spanned<Instance>>,
    /// A group message for this handler's connection finds its outbound
    /// queue full: `"close"` it with 1008 (default) or `"drop"` the message.
    #[serde(default)]
    pub(crate) slow_member: SlowMember,
    /// The name of a `[flows.NAME]` entry.
    pub(crate) flow: Spanned<String>,
    /// A flow whose `on-connect` hook decides, before the upgrade, whether
    /// a client may connect.
    pub(crate) on_connect: Option<Spanned<String>>,
    /// No two connections `on_connect` accepted into the same group may
    /// have the same attachment (a user name in a room, say): the second
    /// is refused with 409 before the upgrade.
    pub(crate) unique_attachment: Option<Spanned<bool>>,
    /// A flow whose `on-close` hook runs once after each connection ends.
    pub(crate) on_close: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) path_params: Vec<ParamSection>,
    #[serde(default)]
    pub(crate) query_params: Vec<ParamSection>,
    #[serde(default)]
    pub(crate) headers: Vec<ParamSection>,
    /// Flow inputs by name, each mapped from a trigger output.
    #[serde(default)]
    pub(crate) inputs: BTreeMap<String, Spanned<String>>,
}

/// A declared path parameter, query parameter or header.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ParamSection {
    pub(crate) name: Spanned<String>,
    #[serde(default, rename = "type")]
    pub(crate) ty: ParamType,
    /// A list of values (a query parameter given several times, a header
    /// given several times or with comma-separated values).
    #[serde(default)]
    pub(crate) repeating: bool,
    /// Missing: HTTP 400 before the upgrade.
    #[serde(default)]
    pub(crate) required: bool,
}
