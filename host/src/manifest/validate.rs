//! Checks a parsed manifest for everything serde cannot see — property
//! references, paths, clashing ports, references between sections, schema
//! and certificate sources — and resolves it into an [`AppSpec`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use toml::Spanned;

use super::spec::{
    AppLimits, AppSpec, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_MESSAGE_SIZE,
    FLOGO_SERVER_PING_INTERVAL, FlowGrants, FlowSpec, HandlerSpec, InputSource, ParamSpec,
    PemSource, SchemaSpec, TlsSpec, TriggerLimits, TriggerSpec, parse_duration, parse_size,
};
use super::{
    DEFAULT_PORT, Format, HandlerSection, Instance, LimitsSection, ManifestError, ManifestFile,
    Mode, ParamSection, PathPattern, SchemaSource, TlsSection, TriggerSection,
};

const NAME_HELP: &str = "use letters, digits, `-` and `_`, starting with a letter";

/// Validate `file` and resolve it into the app it describes.
pub(super) fn resolve(file: &ManifestFile) -> Result<AppSpec, ManifestError> {
    let manifest = &file.manifest;
    let name = &manifest.app.name;
    if !is_valid_name(name.get_ref()) {
        return Err(file
            .error_at(
                name.span(),
                format!("app.name: `{}` is not a valid app name", name.get_ref()),
            )
            .help(NAME_HELP));
    }

    let mut flows = Vec::new();
    for (flow_name, flow) in &manifest.flows {
        if !is_valid_name(flow_name) {
            return Err(ManifestError::new(
                &file.path,
                format!("flows.{flow_name}: `{flow_name}` is not a valid flow name"),
            )
            .help(NAME_HELP));
        }
        let component = file.resolve(&format!("flows.{flow_name}.component"), &flow.component)?;
        if component.trim().is_empty() {
            return Err(file
                .error_at(
                    flow.component.span(),
                    format!("flows.{flow_name}.component is empty"),
                )
                .help("give the path of the flow's .wasm component file"));
        }
        let key = format!("flows.{flow_name}");
        let mut env = Vec::new();
        for (name, value) in &flow.env {
            env.push((
                name.clone(),
                file.resolve(&format!("{key}.env.{name}"), value)?,
            ));
        }
        let read_only_dir = match &flow.read_only_dir {
            None => None,
            Some(dir) => {
                let path = file
                    .dir
                    .join(file.resolve(&format!("{key}.read_only_dir"), dir)?);
                if !path.is_dir() {
                    return Err(file
                        .error_at(
                            dir.span(),
                            format!("{key}.read_only_dir: {} is not a directory", path.display()),
                        )
                        .help("give a directory relative to the manifest"));
                }
                Some(path)
            }
        };
        flows.push(FlowSpec {
            name: flow_name.clone(),
            component: file.dir.join(component),
            grants: FlowGrants { env, read_only_dir },
        });
    }

    let mut schemas = BTreeMap::new();
    for (schema_name, source) in &manifest.schemas {
        let key = format!("schemas.{schema_name}");
        if source.app.is_some() {
            return Err(ManifestError::new(
                &file.path,
                format!("{key}: an app-level schema cannot refer to another with `app`"),
            )
            .help("give the schema as `inline` JSON text or as a `file`"));
        }
        schemas.insert(schema_name.as_str(), load_schema(file, &key, source, None)?);
    }

    if manifest.triggers.is_empty() {
        return Err(
            ManifestError::new(&file.path, "the app has no [[triggers]]")
                .help("add a [[triggers]] table with at least one [[triggers.handlers]] entry"),
        );
    }
    let mut triggers: Vec<TriggerSpec> = Vec::new();
    for (t, trigger) in manifest.triggers.iter().enumerate() {
        let spec = resolve_trigger(file, t, trigger, &schemas)?;
        let port = spec.addr.port();
        if port != 0
            && let Some(earlier) = triggers.iter().position(|other| other.addr.port() == port)
        {
            let message =
                format!("triggers[{t}].port: port {port} is already used by triggers[{earlier}]");
            let error = match &trigger.port {
                Some(value) => file.error_at(value.span(), message),
                None => ManifestError::new(
                    &file.path,
                    format!("{message} (both use the default port {DEFAULT_PORT})"),
                ),
            };
            return Err(error.help("give each trigger its own `port`"));
        }
        triggers.push(spec);
    }

    Ok(AppSpec {
        name: name.get_ref().clone(),
        limits: resolve_limits(file, &manifest.limits)?,
        flows,
        triggers,
    })
}

fn resolve_limits(
    file: &ManifestFile,
    section: &LimitsSection,
) -> Result<AppLimits, ManifestError> {
    let mut limits = AppLimits::default();
    if let Some(value) = &section.max_memory {
        let key = "limits.max_memory";
        let size = match value.get_ref() {
            toml::Value::Integer(n) => {
                usize::try_from(*n).map_err(|_| format!("{n} is not a size"))
            }
            toml::Value::String(text) => {
                let text = file.resolve(key, &Spanned::new(value.span(), text.clone()))?;
                parse_size(&text)
            }
            other => Err(format!(
                "expected a size such as \"64MiB\", found {}",
                other.type_str()
            )),
        };
        limits.max_memory = match size {
            Ok(size) if size >= MIN_MEMORY => size,
            Ok(_) => {
                return Err(file.error_at(value.span(), format!("{key}: must be at least 1MiB")));
            }
            Err(problem) => return Err(file.error_at(value.span(), format!("{key}: {problem}"))),
        };
    }
    if let Some(text) = &section.cpu_time {
        limits.cpu_time = duration(file, "limits.cpu_time", text)?;
    }
    if let Some(text) = &section.wall_time {
        limits.wall_time = duration(file, "limits.wall_time", text)?;
    }
    if let Some(n) = &section.max_executions {
        limits.max_executions = positive(file, "limits.max_executions", n)?;
    }
    if let Some(n) = &section.max_connections {
        limits.max_connections = positive(file, "limits.max_connections", n)?;
    }
    if let Some(text) = &section.slow_client_timeout {
        limits.slow_client_timeout = duration(file, "limits.slow_client_timeout", text)?;
    }
    if let Some(n) = &section.log_lines_per_second {
        let lines = positive(file, "limits.log_lines_per_second", n)?;
        limits.log_lines_per_second = u32::try_from(lines).unwrap_or(u32::MAX);
    }
    Ok(limits)
}

/// A Rust flow's stack, data and heap need about this much to start.
const MIN_MEMORY: usize = 1 << 20;

fn resolve_trigger(
    file: &ManifestFile,
    t: usize,
    trigger: &TriggerSection,
    schemas: &BTreeMap<&str, SchemaSpec>,
) -> Result<TriggerSpec, ManifestError> {
    let key = format!("triggers[{t}]");
    let port = match &trigger.port {
        None => DEFAULT_PORT,
        Some(value) => resolve_port(file, &format!("{key}.port"), value)?,
    };
    let host = match &trigger.host {
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(host) => {
            let text = file.resolve(&format!("{key}.host"), host)?;
            text.parse().map_err(|_| {
                file.error_at(
                    host.span(),
                    format!("{key}.host: `{text}` is not an IP address"),
                )
                .help("use an address such as \"127.0.0.1\", \"0.0.0.0\" or \"::1\"")
            })?
        }
    };

    let tls = match &trigger.tls {
        Some(tls) => resolve_tls(file, &format!("{key}.tls"), tls)?,
        None => None,
    };

    let limits = TriggerLimits {
        max_connections: match &trigger.max_connections {
            None => None,
            Some(n) => Some(positive(file, &format!("{key}.max_connections"), n)?),
        },
        max_message_size: match &trigger.max_message_size {
            None => DEFAULT_MAX_MESSAGE_SIZE,
            Some(n) => positive(file, &format!("{key}.max_message_size"), n)?,
        },
        handshake_timeout: match &trigger.handshake_timeout {
            None => DEFAULT_HANDSHAKE_TIMEOUT,
            Some(text) => duration(file, &format!("{key}.handshake_timeout"), text)?,
        },
        idle_timeout: match &trigger.idle_timeout {
            None => None,
            Some(text) => Some(duration(file, &format!("{key}.idle_timeout"), text)?),
        },
        ping_interval: match &trigger.ping_interval {
            Some(text) => Some(duration(file, &format!("{key}.ping_interval"), text)?),
            None if flogo_server_ping() => Some(FLOGO_SERVER_PING_INTERVAL),
            None => None,
        },
    };

    let allowed_origins = match &trigger.allowed_origins {
        None => None,
        Some(origins) => Some(
            origins
                .iter()
                .enumerate()
                .map(|(i, origin)| file.resolve(&format!("{key}.allowed_origins[{i}]"), origin))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };

    if trigger.handlers.is_empty() {
        return Err(
            ManifestError::new(&file.path, format!("{key} has no handlers"))
                .help("add a [[triggers.handlers]] table with `path` and `flow`"),
        );
    }
    let mut handlers: Vec<HandlerSpec> = Vec::new();
    for (h, handler) in trigger.handlers.iter().enumerate() {
        let spec = resolve_handler(file, &format!("{key}.handlers[{h}]"), handler, schemas)?;
        if let Some(same) = handlers
            .iter()
            .position(|other| other.path.same_shape(&spec.path))
        {
            return Err(file
                .error_at(
                    handler.path.span(),
                    format!(
                        "{key}.handlers[{h}].path: `{}` matches the same requests as \
                         {key}.handlers[{same}].path `{}`",
                        spec.path, handlers[same].path
                    ),
                )
                .help("give each handler of a trigger a distinct path"));
        }
        handlers.push(spec);
    }

    Ok(TriggerSpec {
        addr: SocketAddr::new(host, port),
        tls,
        limits,
        allowed_origins,
        handlers,
    })
}

/// `FLOGO_WEBSOCKET_SERVERPING=TRUE` (any case) turns on server pings.
fn flogo_server_ping() -> bool {
    std::env::var("FLOGO_WEBSOCKET_SERVERPING").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

fn resolve_port(
    file: &ManifestFile,
    key: &str,
    value: &Spanned<toml::Value>,
) -> Result<u16, ManifestError> {
    let help = "use a number from 0 to 65535 (0 picks a free port), or \"${NAME}\" of a property";
    match value.get_ref() {
        toml::Value::Integer(n) => u16::try_from(*n).map_err(|_| {
            file.error_at(value.span(), format!("{key}: {n} is not a port number"))
                .help(help)
        }),
        toml::Value::String(text) => {
            let spanned = Spanned::new(value.span(), text.clone());
            let resolved = file.resolve(key, &spanned)?;
            resolved.trim().parse().map_err(|_| {
                file.error_at(
                    value.span(),
                    format!("{key}: `{resolved}` is not a port number"),
                )
                .help(help)
            })
        }
        other => Err(file
            .error_at(
                value.span(),
                format!("{key}: expected a number, found {}", other.type_str()),
            )
            .help(help)),
    }
}

fn positive(file: &ManifestFile, key: &str, value: &Spanned<u64>) -> Result<usize, ManifestError> {
    match usize::try_from(*value.get_ref()) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(file
            .error_at(value.span(), format!("{key}: must be at least 1"))
            .help("remove the setting to use the default")),
    }
}

fn duration(
    file: &ManifestFile,
    key: &str,
    value: &Spanned<String>,
) -> Result<Duration, ManifestError> {
    let text = file.resolve(key, value)?;
    match parse_duration(&text) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        Ok(_) => Err(file
            .error_at(value.span(), format!("{key}: must be longer than zero"))
            .help("remove the setting to turn it off")),
        Err(problem) => Err(file.error_at(value.span(), format!("{key}: {problem}"))),
    }
}

fn resolve_tls(
    file: &ManifestFile,
    key: &str,
    tls: &TlsSection,
) -> Result<Option<TlsSpec>, ManifestError> {
    let enabled = match &tls.enabled {
        None => true,
        Some(value) => match value.get_ref() {
            toml::Value::Boolean(b) => *b,
            toml::Value::String(text) => {
                let spanned = Spanned::new(value.span(), text.clone());
                let resolved = file.resolve(&format!("{key}.enabled"), &spanned)?;
                match resolved.trim().to_ascii_lowercase().as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(file.error_at(
                            value.span(),
                            format!("{key}.enabled: `{resolved}` is not true or false"),
                        ));
                    }
                }
            }
            other => {
                return Err(file.error_at(
                    value.span(),
                    format!(
                        "{key}.enabled: expected true or false, found {}",
                        other.type_str()
                    ),
                ));
            }
        },
    };
    if !enabled {
        return Ok(None);
    }
    fn required<'a>(
        file: &ManifestFile,
        key: &str,
        name: &str,
        value: &'a Option<Spanned<String>>,
    ) -> Result<&'a Spanned<String>, ManifestError> {
        value.as_ref().ok_or_else(|| {
            ManifestError::new(&file.path, format!("{key}.{name} is missing; TLS needs a certificate and a key"))
                .help(format!("set `{name}` to a PEM file, or to \"${{NAME}}\" of a property holding PEM or base64 PEM"))
        })
    }
    let (cert, key_value) = (
        required(file, key, "cert", &tls.cert)?,
        required(file, key, "key", &tls.key)?,
    );
    let cert = pem_source(file, &format!("{key}.cert"), cert)?;
    let key_source = pem_source(file, &format!("{key}.key"), key_value)?;
    let client_ca = tls
        .client_ca
        .iter()
        .enumerate()
        .map(|(i, ca)| pem_source(file, &format!("{key}.client_ca[{i}]"), ca))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(TlsSpec {
        cert,
        key: key_source,
        client_ca,
    }))
}

/// PEM text, base64-encoded PEM, or else a file path (which must exist).
fn pem_source(
    file: &ManifestFile,
    key: &str,
    value: &Spanned<String>,
) -> Result<PemSource, ManifestError> {
    let text = file.resolve(key, value)?;
    if text.contains("-----BEGIN") {
        return Ok(PemSource::Text(text));
    }
    let compact: String = text.split_whitespace().collect();
    if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(&compact)
        && let Ok(decoded) = String::from_utf8(decoded)
        && decoded.contains("-----BEGIN")
    {
        return Ok(PemSource::Text(decoded));
    }
    let path = file.dir.join(&text);
    if let Err(error) = std::fs::metadata(&path) {
        return Err(file
            .error_at(
                value.span(),
                format!("{key}: cannot read {}: {error}", path.display()),
            )
            .help(
                "give a PEM file path (relative to the manifest), PEM text, or base64-encoded PEM",
            ));
    }
    Ok(PemSource::File(path))
}

fn resolve_handler(
    file: &ManifestFile,
    key: &str,
    handler: &HandlerSection,
    schemas: &BTreeMap<&str, SchemaSpec>,
) -> Result<HandlerSpec, ManifestError> {
    let path_text = file.resolve(&format!("{key}.path"), &handler.path)?;
    let path = PathPattern::parse(&path_text)
        .map_err(|problem| file.error_at(handler.path.span(), format!("{key}.path: {problem}")))?;

    let flow = file.resolve(&format!("{key}.flow"), &handler.flow)?;
    if !file.manifest.flows.contains_key(&flow) {
        let known: Vec<&str> = file.manifest.flows.keys().map(String::as_str).collect();
        let help = if known.is_empty() {
            format!("define the flow in a [flows.{flow}] table")
        } else {
            format!(
                "define [flows.{flow}] or use one of the defined flows: {}",
                known.join(", ")
            )
        };
        return Err(file
            .error_at(
                handler.flow.span(),
                format!("{key}.flow: there is no flow named `{flow}`"),
            )
            .help(help));
    }

    let schema = match &handler.schema {
        None => None,
        Some(source) => {
            if handler.format != Format::Json {
                return Err(file
                    .error_at(
                        source.span(),
                        format!("{key}.schema: a schema needs `format = \"json\"`"),
                    )
                    .help("set format = \"json\" on this handler, or remove the schema"));
            }
            Some(load_schema(
                file,
                &format!("{key}.schema"),
                source.get_ref(),
                Some(schemas),
            )?)
        }
    };

    let path_params = params(
        file,
        &format!("{key}.path_params"),
        &handler.path_params,
        false,
    )?;
    let declared_path: Vec<&str> = path.param_names().collect();
    for param in &path_params {
        if !declared_path.contains(&param.name.as_str()) {
            return Err(ManifestError::new(
                &file.path,
                format!(
                    "{key}.path_params: `{}` is not a parameter of the path `{path}`",
                    param.name
                ),
            )
            .help("declare only names that appear as {name} in the path"));
        }
    }
    let query_params = params(
        file,
        &format!("{key}.query_params"),
        &handler.query_params,
        false,
    )?;
    let headers = params(file, &format!("{key}.headers"), &handler.headers, true)?;

    let mut inputs = Vec::new();
    for (name, expression) in &handler.inputs {
        let text = file.resolve(&format!("{key}.inputs.{name}"), expression)?;
        let source = InputSource::parse(&text).map_err(|problem| {
            file.error_at(expression.span(), format!("{key}.inputs.{name}: {problem}"))
        })?;
        if handler.mode == Mode::Connection && matches!(source, InputSource::Content(_)) {
            return Err(file
                .error_at(
                    expression.span(),
                    format!("{key}.inputs.{name}: connection mode has no content to map"),
                )
                .help("map $.content only in data mode"));
        }
        inputs.push((name.clone(), source));
    }

    let instance = match &handler.instance {
        None => Instance::Fresh,
        Some(instance)
            if handler.mode == Mode::Connection && *instance.get_ref() == Instance::Reuse =>
        {
            return Err(file
                .error_at(
                    instance.span(),
                    format!("{key}.instance: `reuse` applies to data mode only"),
                )
                .help(
                    "connection mode already runs one instance per connection; remove `instance`",
                ));
        }
        Some(instance) => *instance.get_ref(),
    };

    Ok(HandlerSpec {
        path,
        instance,
        mode: handler.mode,
        format: handler.format,
        schema,
        on_invalid: handler.on_invalid,
        flow,
        path_params,
        query_params,
        headers,
        inputs,
    })
}

fn params(
    file: &ManifestFile,
    key: &str,
    sections: &[ParamSection],
    lower_case: bool,
) -> Result<Vec<ParamSpec>, ManifestError> {
    let mut specs: Vec<ParamSpec> = Vec::new();
    for (i, section) in sections.iter().enumerate() {
        let mut name = file.resolve(&format!("{key}[{i}].name"), &section.name)?;
        if lower_case {
            name = name.to_ascii_lowercase();
        }
        if name.is_empty() {
            return Err(file.error_at(section.name.span(), format!("{key}[{i}].name is empty")));
        }
        if specs.iter().any(|spec| spec.name == name) {
            return Err(file
                .error_at(
                    section.name.span(),
                    format!("{key}[{i}]: `{name}` is declared twice"),
                )
                .help("declare each parameter once; use `repeating = true` for several values"));
        }
        specs.push(ParamSpec {
            name,
            ty: section.ty,
            repeating: section.repeating,
            required: section.required,
        });
    }
    Ok(specs)
}

fn load_schema(
    file: &ManifestFile,
    key: &str,
    source: &SchemaSource,
    app_schemas: Option<&BTreeMap<&str, SchemaSpec>>,
) -> Result<SchemaSpec, ManifestError> {
    let given = [
        source.inline.is_some(),
        source.file.is_some(),
        source.app.is_some(),
    ];
    if given.iter().filter(|given| **given).count() != 1 {
        let choices = if app_schemas.is_some() {
            "`inline`, `file` or `app`"
        } else {
            "`inline` or `file`"
        };
        return Err(ManifestError::new(
            &file.path,
            format!("{key}: give exactly one of {choices}"),
        )
        .help("e.g. schema = { app = \"order\" } or { file = \"order.schema.json\" }"));
    }
    if let (Some(name), Some(app_schemas)) = (&source.app, app_schemas) {
        let text = file.resolve(&format!("{key}.app"), name)?;
        return app_schemas.get(text.as_str()).cloned().ok_or_else(|| {
            let known: Vec<&str> = app_schemas.keys().copied().collect();
            file.error_at(
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
    let (origin, text, span) = if let Some(inline) = &source.inline {
        (
            "the inline schema".to_owned(),
            file.resolve(&format!("{key}.inline"), inline)?,
            inline.span(),
        )
    } else {
        let path_value = source.file.as_ref().expect("one source is given");
        let relative = file.resolve(&format!("{key}.file"), path_value)?;
        let path = file.dir.join(&relative);
        let text = std::fs::read_to_string(&path).map_err(|error| {
            file.error_at(
                path_value.span(),
                format!("{key}.file: cannot read {}: {error}", path.display()),
            )
            .help("give the schema file's path relative to the manifest")
        })?;
        (display(&path), text, path_value.span())
    };
    let schema: serde_json::Value = serde_json::from_str(&text).map_err(|error| {
        file.error_at(
            span.clone(),
            format!("{key}: {origin} is not valid JSON: {error}"),
        )
    })?;
    if let Err(error) = jsonschema::validator_for(&schema) {
        return Err(file.error_at(
            span,
            format!("{key}: {origin} is not a valid JSON Schema: {error}"),
        ));
    }
    Ok(SchemaSpec { origin, schema })
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// App and flow names appear in logs and metrics; keep them plain.
fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
