//! The `wsflow.toml` schema: plain data, parsed with serde and checked by
//! [`validate`]. Nothing here touches the file system beyond reading the
//! manifest itself; the [`crate::loader`] makes a manifest runnable.
//!
//! ```toml
//! [app]
//! name = "echo"
//!
//! [properties]
//! GREETING = "hello"
//!
//! [flows.echo]
//! component = "../../target/wasm32-wasip2/release/echo.wasm"
//! build = "cargo build --release --target wasm32-wasip2 -p echo"
//!
//! [[triggers]]
//! port = 9998
//!
//! [[triggers.handlers]]
//! path = "/echo"
//! mode = "data"
//! format = "string"
//! flow = "echo"
//! ```

mod error;
mod path;
mod properties;
pub mod spec;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use error::ManifestError;
pub use path::{PathPattern, Segment};
pub use properties::{PROPERTY_ENV_PREFIX, Properties};

/// The port a trigger listens on when the manifest does not say.
pub const DEFAULT_PORT: u16 = 9998;

/// A parsed manifest and where it came from.
#[derive(Debug)]
pub struct ManifestFile {
    /// The manifest file as given.
    pub path: PathBuf,
    /// The directory relative paths in the manifest are resolved against.
    pub dir: PathBuf,
    pub source: String,
    pub manifest: Manifest,
    /// The app's properties after environment overrides.
    pub properties: Properties,
    /// The app the manifest describes, validated and resolved.
    pub spec: spec::AppSpec,
}

impl ManifestFile {
    /// Read, parse and validate a manifest.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let source = std::fs::read_to_string(path).map_err(|error| {
            ManifestError::new(path, format!("cannot read the manifest: {error}"))
                .help("pass the path of an existing wsflow.toml")
        })?;
        Self::parse(path, source)
    }

    /// Parse and validate manifest text that was read from `path`.
    pub fn parse(path: &Path, source: String) -> Result<Self, ManifestError> {
        let manifest: Manifest = match toml::de::Deserializer::parse(&source) {
            Err(error) => return Err(ManifestError::from_toml(path, &source, None, &error)),
            Ok(deserializer) => {
                serde_path_to_error::deserialize(deserializer).map_err(|error| {
                    // `Spanned` values show up as an inner field; the user wrote
                    // the outer key.
                    let key = error
                        .path()
                        .to_string()
                        .replace(".$__serde_spanned_private_value", "");
                    ManifestError::from_toml(path, &source, Some(&key), error.inner())
                })?
            }
        };
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let properties = Properties::new(&manifest.properties, std::env::vars());
        let mut file = Self {
            path: path.to_path_buf(),
            dir,
            source,
            manifest,
            properties,
            spec: spec::AppSpec::default(),
        };
        file.spec = validate::resolve(&file)?;
        Ok(file)
    }

    /// An error located at `span` in this manifest.
    pub fn error_at(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> ManifestError {
        ManifestError::new(&self.path, message).at(&self.source, span)
    }

    /// A string setting with its `${NAME}` property references replaced.
    pub fn resolve(&self, key: &str, value: &Spanned<String>) -> Result<String, ManifestError> {
        self.properties
            .substitute(value.get_ref())
            .map_err(|problem| {
                self.error_at(value.span(), format!("{key}: {problem}"))
                    .help(problem.help())
            })
    }
}

/// A whole manifest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub app: AppSection,
    /// App properties: `NAME = "value"`, readable by flows.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Flows by name: `[flows.NAME]`.
    #[serde(default)]
    pub flows: BTreeMap<String, FlowSection>,
    /// Limits of the app's executions and connections.
    #[serde(default)]
    pub limits: LimitsSection,
    /// App-level JSON schemas by name: `[schemas.NAME]`.
    #[serde(default)]
    pub schemas: BTreeMap<String, SchemaSource>,
    /// `[[triggers]]`: one WebSocket listener each.
    #[serde(default)]
    pub triggers: Vec<TriggerSection>,
}

/// `[app]`
///
/// ```toml
/// [app]
/// name = "orders"
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSection {
    pub name: Spanned<String>,
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
pub struct FlowSection {
    /// The component file, relative to the manifest's directory.
    pub component: Spanned<String>,
    /// A shell command, run in the manifest's directory, that builds the
    /// component. `wsflow up` runs it when the component is missing or older
    /// than any of `sources`.
    pub build: Option<String>,
    /// Files and directories whose changes make the component stale.
    /// Default: `["src", "Cargo.toml"]`.
    pub sources: Option<Vec<String>>,
    /// Environment variables the flow sees (it sees no others).
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<String>>,
    /// A directory (relative to the manifest) the flow may read, at `/data`.
    pub read_only_dir: Option<Spanned<String>>,
}

/// `[limits]`: what one app's executions and connections may use.
///
/// ```toml
/// [limits]
/// max_memory = "64MiB"         # linear memory per execution
/// cpu_time = "1s"              # per execution, not counting waits
/// wall_time = "10s"            # per data-mode execution
/// max_executions = 256         # running at once
/// max_connections = 10000      # open at once, all triggers together
/// slow_client_timeout = "30s"  # a send waiting this long on a client: close 1008
/// log_lines_per_second = 100   # guest output; bursts of ten times that
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub max_memory: Option<Spanned<toml::Value>>,
    pub cpu_time: Option<Spanned<String>>,
    pub wall_time: Option<Spanned<String>>,
    pub max_executions: Option<Spanned<u64>>,
    pub max_connections: Option<Spanned<u64>>,
    pub slow_client_timeout: Option<Spanned<String>>,
    pub log_lines_per_second: Option<Spanned<u64>>,
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
pub struct SchemaSource {
    pub inline: Option<Spanned<String>>,
    pub file: Option<Spanned<String>>,
    pub app: Option<Spanned<String>>,
}

/// `[[triggers]]`: a WebSocket listener.
///
/// ```toml
/// [[triggers]]
/// port = 9998                  # or "${PORT}"
/// host = "127.0.0.1"
/// max_connections = 10000
/// max_message_size = 1048576
/// handshake_timeout = "10s"
/// idle_timeout = "5m"
/// ping_interval = "30s"
/// allowed_origins = ["https://example.com"]
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSection {
    /// Default 9998. Port 0 picks a free port. An integer, or a string
    /// such as `"${PORT}"`.
    pub port: Option<Spanned<toml::Value>>,
    /// The address to listen on. Default `127.0.0.1`; `0.0.0.0` for all
    /// interfaces.
    pub host: Option<Spanned<String>>,
    /// TLS for this listener (`wss://`).
    pub tls: Option<TlsSection>,
    /// Connections beyond this are refused with HTTP 503 before the upgrade.
    pub max_connections: Option<Spanned<u64>>,
    /// Largest message or frame a client may send, in bytes (default 1 MiB;
    /// larger: close 1009).
    pub max_message_size: Option<Spanned<u64>>,
    /// How long a client may take to complete TLS and the upgrade.
    pub handshake_timeout: Option<Spanned<String>>,
    /// Close a connection (1001) after this long without a frame from the
    /// client. Off by default.
    pub idle_timeout: Option<Spanned<String>>,
    /// Send a ping this often. Off by default; `FLOGO_WEBSOCKET_SERVERPING=TRUE`
    /// in the environment turns on a ping every 5 s.
    pub ping_interval: Option<Spanned<String>>,
    /// When set, only upgrade requests whose `Origin` header is in the list
    /// are accepted (others get HTTP 403).
    pub allowed_origins: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub handlers: Vec<HandlerSection>,
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
pub struct TlsSection {
    /// Default true when the table is present.
    pub enabled: Option<Spanned<toml::Value>>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    #[serde(default)]
    pub client_ca: Vec<Spanned<String>>,
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
/// flow = "orders"
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
pub struct HandlerSection {
    /// The request path; `{name}` segments are path parameters.
    pub path: Spanned<String>,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub format: Format,
    /// JSON Schema every message must satisfy (`format = "json"` only).
    pub schema: Option<Spanned<SchemaSource>>,
    /// What a message that is not valid JSON or fails the schema gets.
    #[serde(default)]
    pub on_invalid: OnInvalid,
    /// Data mode: a fresh instance per message (default) or one instance
    /// reused for all messages of a connection.
    pub instance: Option<Spanned<Instance>>,
    /// The name of a `[flows.NAME]` entry.
    pub flow: Spanned<String>,
    #[serde(default)]
    pub path_params: Vec<ParamSection>,
    #[serde(default)]
    pub query_params: Vec<ParamSection>,
    #[serde(default)]
    pub headers: Vec<ParamSection>,
    /// Flow inputs by name, each mapped from a trigger output.
    #[serde(default)]
    pub inputs: BTreeMap<String, Spanned<String>>,
}

/// A declared path parameter, query parameter or header.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSection {
    pub name: Spanned<String>,
    #[serde(default, rename = "type")]
    pub ty: ParamType,
    /// A list of values (a query parameter given several times, a header
    /// given several times or with comma-separated values).
    #[serde(default)]
    pub repeating: bool,
    /// Missing: HTTP 400 before the upgrade.
    #[serde(default)]
    pub required: bool,
}

/// The type a parameter's text is converted to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    #[default]
    String,
    Number,
    Integer,
    Boolean,
}

/// How a handler drives its flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One execution per message; executions of a connection run in order.
    #[default]
    Data,
    /// One execution per connection, which receives and sends itself.
    Connection,
}

/// How data-mode messages are decoded before the flow runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Passed through as text (or binary).
    #[default]
    String,
    /// Parsed as JSON (and checked against the schema) before the flow runs.
    Json,
}

/// How many instances a data-mode connection uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Instance {
    /// A fresh instance per message: nothing survives between messages.
    #[default]
    Fresh,
    /// One instance for all messages of a connection: faster, and state
    /// (globals, heap) survives from one message to the next.
    Reuse,
}

/// What happens to a message that is not valid JSON or fails the schema.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInvalid {
    /// Close the connection with 1007 and a reason naming the problem.
    #[default]
    Close,
    /// Reply with `{"error": ..., "pointer": ...}` and keep the connection.
    Reply,
}
