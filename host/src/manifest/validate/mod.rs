//! Checks a parsed manifest for everything serde cannot see — property
//! references, paths, references between sections, schema and certificate
//! sources — and resolves it into an [`AppSpec`].

mod scalar;
mod trigger;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use scalar::{Count, Scalar, Size};

use super::outbound::AllowedHost;
use super::properties::references;
use super::schema::{self, FlowSection, LimitsSection, Manifest, SchemaSource};
use super::spec::{
    ApiSpec, AppLimits, AppSpec, BuildSpec, FlowGrants, FlowSpec, GroupPattern, HistorySpec,
    SchemaSpec,
};
use super::{Environment, ManifestError, Properties};
use crate::hub::GroupName;

const NAME_HELP: &str = "use letters, digits, `-` and `_`, starting with a letter";

/// What a flow is checked against when the manifest names no `sources`.
const DEFAULT_SOURCES: [&str; 2] = ["src", "Cargo.toml"];

/// A Rust flow's stack, data and heap need about this much to start.
const MIN_MEMORY: usize = 1 << 20;

/// The manifest being validated: where it is, its text (for line and column
/// of errors), its properties and the environment it is validated in.
pub(super) struct Source<'a> {
    pub(super) path: &'a Path,
    /// The directory relative paths are resolved against.
    pub(super) dir: &'a Path,
    pub(super) text: &'a str,
    pub(super) properties: &'a Properties,
    pub(super) env: &'a Environment,
}

impl Source<'_> {
    /// An error located at `span` in this manifest.
    fn error_at(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> ManifestError {
        ManifestError::new(self.path, message).at(self.text, span)
    }

    /// An error about the manifest as a whole (no one place to point at).
    fn error(&self, message: impl Into<String>) -> ManifestError {
        ManifestError::new(self.path, message)
    }

    /// A string setting with its `${NAME}` property references replaced.
    fn text(&self, key: &str, value: &Spanned<String>) -> Result<String, ManifestError> {
        self.substitute(key, value.get_ref(), value.span())
    }

    fn substitute(
        &self,
        key: &str,
        text: &str,
        span: std::ops::Range<usize>,
    ) -> Result<String, ManifestError> {
        self.properties.substitute(text).map_err(|problem| {
            self.error_at(span, format!("{key}: {problem}"))
                .help(problem.help())
        })
    }

    /// A scalar setting converted to `T`, from its own TOML type or from a
    /// string (after property substitution).
    fn scalar<T: Scalar>(&self, key: &str, value: &schema::Scalar) -> Result<T, ManifestError> {
        let converted = match value.get_ref() {
            toml::Value::Integer(n) => T::from_integer(*n),
            toml::Value::Boolean(b) => T::from_bool(*b),
            toml::Value::String(text) => T::from_text(&self.substitute(key, text, value.span())?),
            other => Err(format!(
                "expected {}, found {}",
                T::EXPECTED,
                other.type_str()
            )),
        };
        converted.map_err(|problem| {
            let error = self.error_at(value.span(), format!("{key}: {problem}"));
            match T::HELP {
                Some(help) => error.help(help),
                None => error,
            }
        })
    }

    /// A count that must be at least 1.
    fn positive(&self, key: &str, value: &schema::Scalar) -> Result<usize, ManifestError> {
        let Count(n) = self.scalar(key, value)?;
        match usize::try_from(n) {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(self
                .error_at(value.span(), format!("{key}: must be at least 1"))
                .help("remove the setting to use the default")),
        }
    }

    /// A size in bytes that must be larger than zero.
    fn bytes(&self, key: &str, value: &schema::Scalar) -> Result<usize, ManifestError> {
        let Size(size) = self.scalar(key, value)?;
        if size == 0 {
            return Err(self
                .error_at(value.span(), format!("{key}: must be larger than zero"))
                .help("remove the setting to use the default"));
        }
        Ok(size)
    }

    /// A duration that must be longer than zero.
    fn duration(&self, key: &str, value: &schema::Scalar) -> Result<Duration, ManifestError> {
        let duration: Duration = self.scalar(key, value)?;
        if duration.is_zero() {
            return Err(self
                .error_at(value.span(), format!("{key}: must be longer than zero"))
                .help("remove the setting to turn it off"));
        }
        Ok(duration)
    }

    fn join(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }
}

/// Validate `manifest` and resolve it into the app it describes.
pub(super) fn resolve(source: &Source<'_>, manifest: &Manifest) -> Result<AppSpec, ManifestError> {
    let name = &manifest.app.name;
    if !is_valid_name(name.get_ref()) {
        return Err(source
            .error_at(
                name.span(),
                format!("app.name: `{}` is not a valid app name", name.get_ref()),
            )
            .help(NAME_HELP));
    }
    let key_value_stores = resolve_stores(source, manifest)?;
    let flows = manifest
        .flows
        .iter()
        .map(|(flow_name, flow)| resolve_flow(source, flow_name, flow, &key_value_stores))
        .collect::<Result<Vec<_>, _>>()?;

    let mut schemas = BTreeMap::new();
    for (schema_name, schema) in &manifest.schemas {
        let key = format!("schemas.{schema_name}");
        if schema.app.is_some() {
            return Err(source
                .error(format!(
                    "{key}: an app-level schema cannot refer to another with `app`"
                ))
                .help("give the schema as `inline` JSON text or as a `file`"));
        }
        schemas.insert(
            schema_name.as_str(),
            load_schema(source, &key, schema, None)?,
        );
    }

    let triggers = trigger::resolve_all(source, manifest, &schemas)?;
    Ok(AppSpec {
        name: name.get_ref().clone(),
        manifest: source.path.to_path_buf(),
        properties: flow_properties(source, manifest),
        limits: resolve_limits(source, &manifest.limits)?,
        flows,
        triggers,
        key_value_stores,
        api: match &manifest.api {
            Some(api) => resolve_api(source, api)?,
            None => None,
        },
        history: manifest
            .history
            .iter()
            .enumerate()
            .map(|(at, history)| resolve_history(source, at, history))
            .collect::<Result<_, _>>()?,
    })
}

/// The names of `[key_value.stores]`.
fn resolve_stores(source: &Source<'_>, manifest: &Manifest) -> Result<Vec<String>, ManifestError> {
    let mut stores = Vec::new();
    for name in manifest.key_value.stores.keys() {
        if !is_valid_name(name) {
            return Err(source
                .error(format!(
                    "key_value.stores.{name}: `{name}` is not a valid store name"
                ))
                .help(NAME_HELP));
        }
        stores.push(name.clone());
    }
    Ok(stores)
}

/// One `[[history]]`.
fn resolve_history(
    source: &Source<'_>,
    at: usize,
    section: &schema::HistorySection,
) -> Result<HistorySpec, ManifestError> {
    let key = |name: &str| format!("history[{at}].{name}");
    let written = source.text(&key("groups"), &section.groups)?;
    let (name, pattern) = match written.strip_suffix('*') {
        Some(prefix) => (prefix, GroupPattern::Prefix(prefix.to_owned())),
        None => (written.as_str(), GroupPattern::Exact(written.clone())),
    };
    // A prefix is part of a name: check it as one (an empty prefix, `*`,
    // names every group).
    if !(name.is_empty() && matches!(pattern, GroupPattern::Prefix(_)))
        && GroupName::parse(name).is_err()
    {
        return Err(source
            .error_at(
                section.groups.span(),
                format!("{}: `{written}` is not a group name or a name ending in `*`", key("groups")),
            )
            .help("a group name is 1 to 128 ASCII letters, digits and - _ . : /, e.g. \"room:*\" or \"news\""));
    }
    let mut spec = HistorySpec {
        groups: pattern,
        size: 100,
        ttl: Duration::from_secs(3600),
        position_field: None,
    };
    if let Some(value) = &section.size {
        let size = source.positive(&key("size"), value)?;
        if size > HistorySpec::MAX_SIZE {
            return Err(source
                .error_at(
                    value.span(),
                    format!("{}: {size} is more than {}", key("size"), HistorySpec::MAX_SIZE),
                )
                .help("history is for the recent messages a reconnecting client missed; keep an archive in a key-value store or a database"));
        }
        spec.size = size;
    }
    if let Some(value) = &section.ttl {
        let ttl = source.duration(&key("ttl"), value)?;
        if ttl > HistorySpec::MAX_TTL {
            return Err(source
                .error_at(value.span(), format!("{}: longer than 24h", key("ttl")))
                .help("history is for the recent messages a reconnecting client missed"));
        }
        spec.ttl = ttl;
    }
    if let Some(field) = &section.position_field {
        let name = source.text(&key("position_field"), field)?;
        let plain = !name.is_empty()
            && name.len() <= 32
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !plain {
            return Err(source
                .error_at(
                    field.span(),
                    format!(
                        "{}: `{name}` is not a plain field name",
                        key("position_field")
                    ),
                )
                .help("use 1 to 32 ASCII letters, digits, `_` or `-`, e.g. \"pos\""));
        }
        spec.position_field = Some(name);
    }
    Ok(spec)
}

/// The properties flows can read: the manifest's, except those the `[api]`
/// token is made of, which stay with the host even when `[properties]`
/// gives them a default.
fn flow_properties(source: &Source<'_>, manifest: &Manifest) -> BTreeMap<String, String> {
    let mut properties = source.properties.values().clone();
    if let Some(api) = &manifest.api {
        for name in references(api.token.get_ref()) {
            properties.remove(name);
        }
    }
    properties
}

/// `[api]`; `None` when its token is empty once its properties are
/// substituted (`token = "${API_TOKEN}"` with `API_TOKEN = ""` in
/// `[properties]`): the manifest may offer the API and the host that runs
/// it decide.
fn resolve_api(
    source: &Source<'_>,
    section: &schema::ApiSection,
) -> Result<Option<ApiSpec>, ManifestError> {
    let token = source.text("api.token", &section.token)?;
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() < ApiSpec::MIN_TOKEN
        || token.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(source
            .error_at(
                section.token.span(),
                format!(
                    "api.token: a token has at least {} characters and no spaces",
                    ApiSpec::MIN_TOKEN
                ),
            )
            .help("generate one (e.g. `openssl rand -hex 32`) and supply it as `token = \"${API_TOKEN}\"` with WSFLOW_PROP_API_TOKEN set"));
    }
    let mut api = ApiSpec::with_token(token);
    let count =
        |key: &str, value: &Option<schema::Scalar>| -> Result<Option<usize>, ManifestError> {
            value
                .as_ref()
                .map(|value| source.positive(key, value))
                .transpose()
        };
    if let Some(n) = count("api.requests_per_second", &section.requests_per_second)? {
        api.requests_per_second = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(n) = count("api.burst", &section.burst)? {
        api.burst = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(n) = count("api.max_in_flight", &section.max_in_flight)? {
        api.max_in_flight = n;
    }
    Ok(Some(api))
}

fn resolve_flow(
    source: &Source<'_>,
    name: &str,
    flow: &FlowSection,
    declared_stores: &[String],
) -> Result<FlowSpec, ManifestError> {
    let key = format!("flows.{name}");
    if !is_valid_name(name) {
        return Err(source
            .error(format!("{key}: `{name}` is not a valid flow name"))
            .help(NAME_HELP));
    }
    let component = source.text(&format!("{key}.component"), &flow.component)?;
    if component.trim().is_empty() {
        return Err(source
            .error_at(flow.component.span(), format!("{key}.component is empty"))
            .help("give the path of the flow's .wasm component file"));
    }
    let env = flow
        .env
        .iter()
        .map(|(var, value)| {
            Ok((
                var.clone(),
                source.text(&format!("{key}.env.{var}"), value)?,
            ))
        })
        .collect::<Result<Vec<_>, ManifestError>>()?;
    let read_only_dir = match &flow.read_only_dir {
        None => None,
        Some(dir) => {
            let path = source.join(&source.text(&format!("{key}.read_only_dir"), dir)?);
            if !path.is_dir() {
                return Err(source
                    .error_at(
                        dir.span(),
                        format!("{key}.read_only_dir: {} is not a directory", path.display()),
                    )
                    .help("give a directory relative to the manifest"));
            }
            Some(path)
        }
    };
    let mut outbound_hosts = Vec::new();
    for grant in &flow.allowed_outbound_hosts {
        let text = source.text(&format!("{key}.allowed_outbound_hosts"), grant)?;
        // `"${SERVICE_URL}"` with the property unset: the flow may call
        // nothing through this entry.
        if text.trim().is_empty() {
            continue;
        }
        let parsed = AllowedHost::parse(text.trim()).map_err(|problem| {
            source
                .error_at(
                    grant.span(),
                    format!("{key}.allowed_outbound_hosts: {problem}"),
                )
                .help(
                    "write scheme://host[:port], e.g. \"https://api.example.com\", \
                         \"http://127.0.0.1:8080\" or \"https://*.example.org\"",
                )
        })?;
        outbound_hosts.push(parsed);
    }
    let mut key_value_stores = Vec::new();
    for store in &flow.key_value_stores {
        let granted = source.text(&format!("{key}.key_value_stores"), store)?;
        if !declared_stores.contains(&granted) {
            return Err(source
                .error_at(
                    store.span(),
                    format!(
                        "{key}.key_value_stores: the app declares no key-value store `{granted}`"
                    ),
                )
                .help(format!(
                    "declare it: add `{granted} = {{}}` under [key_value.stores]"
                )));
        }
        if !key_value_stores.contains(&granted) {
            key_value_stores.push(granted);
        }
    }
    let build = flow.build.as_ref().map(|command| BuildSpec {
        command: command.clone(),
        dir: source.dir.to_path_buf(),
        sources: match &flow.sources {
            Some(sources) => sources.iter().map(|s| source.join(s)).collect(),
            None => DEFAULT_SOURCES.iter().map(|s| source.join(s)).collect(),
        },
    });
    Ok(FlowSpec {
        name: name.to_owned(),
        component: source.join(&component),
        grants: FlowGrants {
            env,
            read_only_dir,
            outbound_hosts,
            key_value_stores,
        },
        build,
    })
}

fn resolve_limits(
    source: &Source<'_>,
    section: &LimitsSection,
) -> Result<AppLimits, ManifestError> {
    let mut limits = AppLimits::default();
    if let Some(value) = &section.max_memory {
        let Size(size) = source.scalar("limits.max_memory", value)?;
        if size < MIN_MEMORY {
            return Err(source.error_at(value.span(), "limits.max_memory: must be at least 1MiB"));
        }
        limits.max_memory = size;
    }
    if let Some(value) = &section.app_memory {
        let Size(size) = source.scalar("limits.app_memory", value)?;
        if size < MIN_MEMORY {
            return Err(source.error_at(value.span(), "limits.app_memory: must be at least 1MiB"));
        }
        limits.app_memory = size;
    }
    if let Some(value) = &section.cpu_time {
        limits.cpu_time = source.duration("limits.cpu_time", value)?;
    }
    if let Some(value) = &section.wall_time {
        limits.wall_time = source.duration("limits.wall_time", value)?;
    }
    if let Some(value) = &section.max_executions {
        limits.max_executions = source.positive("limits.max_executions", value)?;
    }
    if let Some(value) = &section.max_connections {
        limits.max_connections = source.positive("limits.max_connections", value)?;
    }
    if let Some(value) = &section.max_reused_instances {
        limits.max_reused_instances = source.positive("limits.max_reused_instances", value)?;
    }
    if let Some(value) = &section.slow_client_timeout {
        limits.slow_client_timeout = source.duration("limits.slow_client_timeout", value)?;
    }
    if let Some(value) = &section.queue_per_connection {
        limits.queue_per_connection = source.bytes("limits.queue_per_connection", value)?;
    }
    if let Some(value) = &section.queue_per_app {
        limits.queue_per_app = source.bytes("limits.queue_per_app", value)?;
    }
    if let Some(value) = &section.log_lines_per_second {
        let lines = source.positive("limits.log_lines_per_second", value)?;
        limits.log_lines_per_second = u32::try_from(lines).unwrap_or(u32::MAX);
    }
    if let Some(value) = &section.max_groups_per_connection {
        limits.max_groups_per_connection =
            source.positive("limits.max_groups_per_connection", value)?;
    }
    if let Some(value) = &section.max_group_members {
        limits.max_group_members = source.positive("limits.max_group_members", value)?;
    }
    if let Some(value) = &section.max_attachment_size {
        let Size(size) = source.scalar("limits.max_attachment_size", value)?;
        limits.max_attachment_size = size;
    }
    if let Some(value) = &section.max_outbound_requests_in_flight {
        limits.max_outbound_requests_in_flight =
            source.positive("limits.max_outbound_requests_in_flight", value)?;
    }
    if let Some(value) = &section.max_outbound_requests_per_execution {
        limits.max_outbound_requests_per_execution =
            source.positive("limits.max_outbound_requests_per_execution", value)?;
    }
    if let Some(value) = &section.outbound_connect_timeout {
        limits.outbound_connect_timeout =
            source.duration("limits.outbound_connect_timeout", value)?;
    }
    if let Some(value) = &section.outbound_first_byte_timeout {
        limits.outbound_first_byte_timeout =
            source.duration("limits.outbound_first_byte_timeout", value)?;
    }
    if let Some(value) = &section.outbound_between_bytes_timeout {
        limits.outbound_between_bytes_timeout =
            source.duration("limits.outbound_between_bytes_timeout", value)?;
    }
    if let Some(value) = &section.max_outbound_response_size {
        limits.max_outbound_response_size =
            source.bytes("limits.max_outbound_response_size", value)?;
    }
    if let Some(value) = &section.max_kv_key_size {
        limits.max_kv_key_size = source.bytes("limits.max_kv_key_size", value)?;
    }
    if let Some(value) = &section.max_kv_value_size {
        limits.max_kv_value_size = source.bytes("limits.max_kv_value_size", value)?;
    }
    if let Some(value) = &section.max_kv_bytes {
        limits.max_kv_bytes = source.bytes("limits.max_kv_bytes", value)?;
    }
    if let Some(value) = &section.max_kv_keys {
        limits.max_kv_keys = source.positive("limits.max_kv_keys", value)?;
    }
    if let Some(value) = &section.max_history_bytes {
        limits.max_history_bytes = source.bytes("limits.max_history_bytes", value)?;
    }
    if let Some(value) = &section.max_history_groups {
        limits.max_history_groups = source.positive("limits.max_history_groups", value)?;
    }
    Ok(limits)
}

/// Read, parse and compile a schema given `inline`, as a `file`, or (for
/// handlers, with `app_schemas`) by the name of an app-level schema.
pub(super) fn load_schema(
    source: &Source<'_>,
    key: &str,
    schema: &SchemaSource,
    app_schemas: Option<&BTreeMap<&str, SchemaSpec>>,
) -> Result<SchemaSpec, ManifestError> {
    let given = [
        schema.inline.is_some(),
        schema.file.is_some(),
        schema.app.is_some(),
    ];
    if given.iter().filter(|given| **given).count() != 1 {
        let choices = if app_schemas.is_some() {
            "`inline`, `file` or `app`"
        } else {
            "`inline` or `file`"
        };
        return Err(source
            .error(format!("{key}: give exactly one of {choices}"))
            .help("e.g. schema = { app = \"order\" } or { file = \"order.schema.json\" }"));
    }
    if let (Some(name), Some(app_schemas)) = (&schema.app, app_schemas) {
        let text = source.text(&format!("{key}.app"), name)?;
        return app_schemas.get(text.as_str()).cloned().ok_or_else(|| {
            let known: Vec<&str> = app_schemas.keys().copied().collect();
            source
                .error_at(
                    name.span(),
                    format!("{key}.app: there is no app-level schema `{text}`"),
                )
                .help(if known.is_empty() {
                    format!("define it in a [schemas.{text}] table")
                } else {
                    format!(
                        "define [schemas.{text}] or use one of: {}",
                        known.join(", ")
                    )
                })
        });
    }
    let (origin, text, span) = if let Some(inline) = &schema.inline {
        (
            "the inline schema".to_owned(),
            source.text(&format!("{key}.inline"), inline)?,
            inline.span(),
        )
    } else {
        let path_value = schema.file.as_ref().expect("one source is given");
        let path = source.join(&source.text(&format!("{key}.file"), path_value)?);
        let text = std::fs::read_to_string(&path).map_err(|error| {
            source
                .error_at(
                    path_value.span(),
                    format!("{key}.file: cannot read {}: {error}", path.display()),
                )
                .help("give the schema file's path relative to the manifest")
        })?;
        (path.display().to_string(), text, path_value.span())
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|error| {
        source.error_at(
            span.clone(),
            format!("{key}: {origin} is not valid JSON: {error}"),
        )
    })?;
    let validator = jsonschema::validator_for(&json).map_err(|error| {
        source.error_at(
            span,
            format!("{key}: {origin} is not a valid JSON Schema: {error}"),
        )
    })?;
    Ok(SchemaSpec {
        validator: Arc::new(validator),
    })
}

/// App and flow names appear in logs and metrics; keep them plain.
fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
