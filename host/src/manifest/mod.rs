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
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use error::ManifestError;
pub use path::{PathPattern, Segment};

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
        let file = Self {
            path: path.to_path_buf(),
            dir,
            source,
            manifest,
        };
        validate::validate(&file)?;
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
}

/// `[[triggers]]`: a WebSocket listener.
///
/// ```toml
/// [[triggers]]
/// port = 9998
/// host = "127.0.0.1"
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSection {
    /// Default 9998. Port 0 picks a free port.
    pub port: Option<Spanned<u16>>,
    /// The address to listen on. Default `127.0.0.1`; `0.0.0.0` for all
    /// interfaces.
    pub host: Option<Spanned<String>>,
    #[serde(default)]
    pub handlers: Vec<HandlerSection>,
}

impl TriggerSection {
    pub fn port(&self) -> u16 {
        self.port
            .as_ref()
            .map_or(DEFAULT_PORT, |port| *port.get_ref())
    }
}

/// `[[triggers.handlers]]`: a path served by a flow.
///
/// ```toml
/// [[triggers.handlers]]
/// path = "/rooms/{room}"
/// mode = "connection"
/// format = "json"
/// flow = "chat"
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
    /// The name of a `[flows.NAME]` entry.
    pub flow: Spanned<String>,
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
    /// Parsed as JSON; invalid JSON closes the connection with 1007.
    Json,
}
