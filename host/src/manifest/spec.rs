//! The validated, resolved form of a manifest: every `${NAME}` replaced,
//! every reference checked, every value converted. The loader builds a
//! runnable app from this and never looks at TOML.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{Format, Instance, Mode, OnInvalid, ParamType, PathPattern};
pub use crate::app::AppLimits;
pub use crate::runtime::FlowGrants;

#[derive(Debug, Clone, Default)]
pub struct AppSpec {
    pub name: String,
    pub limits: AppLimits,
    pub flows: Vec<FlowSpec>,
    pub triggers: Vec<TriggerSpec>,
}

#[derive(Debug, Clone)]
pub struct FlowSpec {
    pub name: String,
    pub component: PathBuf,
    pub grants: FlowGrants,
}

#[derive(Debug, Clone)]
pub struct TriggerSpec {
    pub addr: SocketAddr,
    pub tls: Option<TlsSpec>,
    pub limits: TriggerLimits,
    /// `None`: any origin (or none) is accepted.
    pub allowed_origins: Option<Vec<String>>,
    pub handlers: Vec<HandlerSpec>,
}

/// Where PEM material comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PemSource {
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

#[derive(Debug, Clone)]
pub struct TlsSpec {
    pub cert: PemSource,
    pub key: PemSource,
    /// Non-empty: clients must present a certificate signed by one of these.
    pub client_ca: Vec<PemSource>,
}

/// Limits of one listener and its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerLimits {
    pub max_connections: Option<usize>,
    pub max_message_size: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub ping_interval: Option<Duration>,
}

/// Largest message (and frame) a client may send, unless configured.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;

/// A client that has not finished TLS and the upgrade by then is dropped, so
/// idle sockets cannot pile up before the handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The ping interval `FLOGO_WEBSOCKET_SERVERPING=TRUE` turns on, as in Flogo.
pub const FLOGO_SERVER_PING_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct HandlerSpec {
    pub path: PathPattern,
    pub mode: Mode,
    pub format: Format,
    pub schema: Option<SchemaSpec>,
    pub on_invalid: OnInvalid,
    pub instance: Instance,
    pub flow: String,
    pub path_params: Vec<ParamSpec>,
    pub query_params: Vec<ParamSpec>,
    /// Names are lower case.
    pub headers: Vec<ParamSpec>,
    pub inputs: Vec<(String, InputSource)>,
}

/// A JSON schema, parsed (compiled by the loader).
#[derive(Debug, Clone)]
pub struct SchemaSpec {
    /// Where it came from, for messages: `schemas.order`, a file, `inline`.
    pub origin: String,
    pub schema: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub ty: ParamType,
    pub repeating: bool,
    pub required: bool,
}

/// One step into JSON content: an object key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonStep {
    Key(String),
    Index(usize),
}

/// A trigger output a flow input is mapped from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
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
    pub fn parse(expression: &str) -> Result<Self, String> {
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

/// Parse a byte size: `1048576`, `512KiB`, `64MiB`, `1GiB`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number"))?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "`{other}` is not a size unit; use B, KiB, MiB or GiB"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Parse `500ms`, `10s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit; write e.g. \"500ms\", \"10s\", \"5m\""))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number"))?;
    let seconds = |n: u64| Duration::from_secs(n);
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(seconds(number)),
        "m" => Ok(seconds(number * 60)),
        "h" => Ok(seconds(number * 3600)),
        other => Err(format!(
            "`{other}` is not a duration unit; use ms, s, m or h"
        )),
    }
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

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert!(parse_size("1MB").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ten s").is_err());
        assert!(parse_duration("5 days").is_err());
    }
}
