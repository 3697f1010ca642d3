//! `[[triggers]]` and their handlers: listen address, TLS, limits, paths,
//! parameters, schemas and input mappings.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use toml::Spanned;

use super::scalar::Port;
use super::{Source, load_schema};
use crate::manifest::schema::{HandlerSection, Manifest, ParamSection, TlsSection, TriggerSection};
use crate::manifest::spec::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_PENDING_HANDSHAKES,
    FLOGO_SERVER_PING_INTERVAL, Format, HandlerSpec, InputSource, Instance, Mode, ParamSpec,
    PemSource, SchemaSpec, TlsSpec, TriggerLimits, TriggerSpec,
};
use crate::manifest::{DEFAULT_PORT, ManifestError, PathPattern};

/// Every trigger of the manifest; two may not share a port.
pub(super) fn resolve_all(
    source: &Source<'_>,
    manifest: &Manifest,
    schemas: &BTreeMap<&str, SchemaSpec>,
) -> Result<Vec<TriggerSpec>, ManifestError> {
    if manifest.triggers.is_empty() {
        return Err(source
            .error("the app has no [[triggers]]")
            .help("add a [[triggers]] table with at least one [[triggers.handlers]] entry"));
    }
    let mut triggers: Vec<TriggerSpec> = Vec::new();
    for (t, trigger) in manifest.triggers.iter().enumerate() {
        let spec = resolve(source, manifest, t, trigger, schemas)?;
        let port = spec.addr.port();
        if port != 0
            && let Some(earlier) = triggers.iter().position(|other| other.addr.port() == port)
        {
            let message =
                format!("triggers[{t}].port: port {port} is already used by triggers[{earlier}]");
            let error = match &trigger.port {
                Some(value) => source.error_at(value.span(), message),
                None => source.error(format!(
                    "{message} (both use the default port {DEFAULT_PORT})"
                )),
            };
            return Err(error.help("give each trigger its own `port`"));
        }
        triggers.push(spec);
    }
    Ok(triggers)
}

fn resolve(
    source: &Source<'_>,
    manifest: &Manifest,
    t: usize,
    trigger: &TriggerSection,
    schemas: &BTreeMap<&str, SchemaSpec>,
) -> Result<TriggerSpec, ManifestError> {
    let key = format!("triggers[{t}]");
    let port = match &trigger.port {
        None => DEFAULT_PORT,
        Some(value) => source.scalar::<Port>(&format!("{key}.port"), value)?.0,
    };
    let host = match &trigger.host {
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(host) => {
            let text = source.text(&format!("{key}.host"), host)?;
            text.parse().map_err(|_| {
                source
                    .error_at(
                        host.span(),
                        format!("{key}.host: `{text}` is not an IP address"),
                    )
                    .help("use an address such as \"127.0.0.1\", \"0.0.0.0\" or \"::1\"")
            })?
        }
    };
    let tls = match &trigger.tls {
        Some(tls) => resolve_tls(source, &format!("{key}.tls"), tls)?,
        None => None,
    };
    let limits = resolve_limits(source, &key, trigger)?;
    let allowed_origins = match &trigger.allowed_origins {
        None => None,
        Some(origins) => Some(
            origins
                .iter()
                .enumerate()
                .map(|(i, origin)| source.text(&format!("{key}.allowed_origins[{i}]"), origin))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let static_dir = match &trigger.static_dir {
        None => None,
        Some(dir) => Some(static_dir(source, &format!("{key}.static_dir"), dir)?),
    };

    if trigger.handlers.is_empty() {
        return Err(source
            .error(format!("{key} has no handlers"))
            .help("add a [[triggers.handlers]] table with `path` and `flow`"));
    }
    let mut handlers: Vec<HandlerSpec> = Vec::new();
    for (h, handler) in trigger.handlers.iter().enumerate() {
        let handler_key = format!("{key}.handlers[{h}]");
        let spec = resolve_handler(source, manifest, &handler_key, handler, schemas)?;
        if let Some(same) = handlers
            .iter()
            .position(|other| other.path.same_shape(&spec.path))
        {
            return Err(source
                .error_at(
                    handler.path.span(),
                    format!(
                        "{handler_key}.path: `{}` matches the same requests as \
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
        static_dir,
        handlers,
    })
}

fn resolve_limits(
    source: &Source<'_>,
    key: &str,
    trigger: &TriggerSection,
) -> Result<TriggerLimits, ManifestError> {
    let optional_duration = |name: &str, value: &Option<_>| -> Result<Option<Duration>, _> {
        value
            .as_ref()
            .map(|value| source.duration(&format!("{key}.{name}"), value))
            .transpose()
    };
    let flogo_ping = || {
        source
            .env
            .get("FLOGO_WEBSOCKET_SERVERPING")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            .then_some(FLOGO_SERVER_PING_INTERVAL)
    };
    Ok(TriggerLimits {
        max_connections: trigger
            .max_connections
            .as_ref()
            .map(|n| source.positive(&format!("{key}.max_connections"), n))
            .transpose()?,
        max_pending_handshakes: match &trigger.max_pending_handshakes {
            None => DEFAULT_MAX_PENDING_HANDSHAKES,
            Some(n) => source.positive(&format!("{key}.max_pending_handshakes"), n)?,
        },
        max_message_size: match &trigger.max_message_size {
            None => DEFAULT_MAX_MESSAGE_SIZE,
            Some(n) => source.positive(&format!("{key}.max_message_size"), n)?,
        },
        handshake_timeout: optional_duration("handshake_timeout", &trigger.handshake_timeout)?
            .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
        idle_timeout: optional_duration("idle_timeout", &trigger.idle_timeout)?,
        // `FLOGO_WEBSOCKET_SERVERPING=TRUE` (any case) turns on pings where
        // the manifest sets no interval.
        ping_interval: optional_duration("ping_interval", &trigger.ping_interval)?
            .or_else(flogo_ping),
    })
}

/// The directory files are served from: it must exist and be a directory.
/// Kept canonical, so a served file is checked to lie inside it.
fn static_dir(
    source: &Source<'_>,
    key: &str,
    value: &Spanned<String>,
) -> Result<PathBuf, ManifestError> {
    let path = source.join(&source.text(key, value)?);
    let problem = match std::fs::canonicalize(&path) {
        Ok(dir) if dir.is_dir() => return Ok(dir),
        Ok(_) => "is not a directory".to_owned(),
        Err(error) => format!("cannot be read: {error}"),
    };
    Err(source
        .error_at(value.span(), format!("{key}: {} {problem}", path.display()))
        .help("give a directory relative to the manifest, e.g. static_dir = \"public\""))
}

fn resolve_tls(
    source: &Source<'_>,
    key: &str,
    tls: &TlsSection,
) -> Result<Option<TlsSpec>, ManifestError> {
    let enabled = match &tls.enabled {
        None => true,
        Some(value) => source.scalar::<bool>(&format!("{key}.enabled"), value)?,
    };
    if !enabled {
        return Ok(None);
    }
    let required = |name: &str, value: &'_ Option<Spanned<String>>| {
        value.clone().ok_or_else(|| {
            source
                .error(format!("{key}.{name} is missing; TLS needs a certificate and a key"))
                .help(format!(
                    "set `{name}` to a PEM file, or to \"${{NAME}}\" of a property holding PEM or base64 PEM"
                ))
        })
    };
    let (cert, private_key) = (required("cert", &tls.cert)?, required("key", &tls.key)?);
    let cert = pem_source(source, &format!("{key}.cert"), &cert)?;
    let private_key = pem_source(source, &format!("{key}.key"), &private_key)?;
    let client_ca = tls
        .client_ca
        .iter()
        .enumerate()
        .map(|(i, ca)| pem_source(source, &format!("{key}.client_ca[{i}]"), ca))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(TlsSpec {
        cert,
        key: private_key,
        client_ca,
    }))
}

/// PEM text, base64-encoded PEM, or else a file path (which must exist).
fn pem_source(
    source: &Source<'_>,
    key: &str,
    value: &Spanned<String>,
) -> Result<PemSource, ManifestError> {
    let text = source.text(key, value)?;
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
    let path = source.join(&text);
    if let Err(error) = std::fs::metadata(&path) {
        return Err(source
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
    source: &Source<'_>,
    manifest: &Manifest,
    key: &str,
    handler: &HandlerSection,
    schemas: &BTreeMap<&str, SchemaSpec>,
) -> Result<HandlerSpec, ManifestError> {
    let path_text = source.text(&format!("{key}.path"), &handler.path)?;
    let path = PathPattern::parse(&path_text).map_err(|problem| {
        source.error_at(handler.path.span(), format!("{key}.path: {problem}"))
    })?;

    let flow = flow_name(source, manifest, &format!("{key}.flow"), &handler.flow)?;
    let on_connect = handler
        .on_connect
        .as_ref()
        .map(|name| flow_name(source, manifest, &format!("{key}.on_connect"), name))
        .transpose()?;
    let on_close = handler
        .on_close
        .as_ref()
        .map(|name| flow_name(source, manifest, &format!("{key}.on_close"), name))
        .transpose()?;

    let schema = match &handler.schema {
        None => None,
        Some(schema) => {
            if handler.format != Format::Json {
                return Err(source
                    .error_at(
                        schema.span(),
                        format!("{key}.schema: a schema needs `format = \"json\"`"),
                    )
                    .help("set format = \"json\" on this handler, or remove the schema"));
            }
            Some(load_schema(
                source,
                &format!("{key}.schema"),
                schema.get_ref(),
                Some(schemas),
            )?)
        }
    };

    let path_params = params(
        source,
        &format!("{key}.path_params"),
        &handler.path_params,
        false,
    )?;
    let declared_path: Vec<&str> = path.param_names().collect();
    if let Some(param) = path_params
        .iter()
        .find(|param| !declared_path.contains(&param.name.as_str()))
    {
        return Err(source
            .error(format!(
                "{key}.path_params: `{}` is not a parameter of the path `{path}`",
                param.name
            ))
            .help("declare only names that appear as {name} in the path"));
    }
    let query_params = params(
        source,
        &format!("{key}.query_params"),
        &handler.query_params,
        false,
    )?;
    let headers = params(source, &format!("{key}.headers"), &handler.headers, true)?;
    let inputs = resolve_inputs(source, key, handler)?;

    let instance = match &handler.instance {
        None => Instance::Fresh,
        Some(instance)
            if handler.mode == Mode::Connection && *instance.get_ref() == Instance::Reuse =>
        {
            return Err(source
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

    let unique_attachment = handler
        .unique_attachment
        .as_ref()
        .is_some_and(|unique| *unique.get_ref());
    if let Some(unique) = &handler.unique_attachment
        && unique_attachment
        && on_connect.is_none()
    {
        return Err(source
            .error_at(
                unique.span(),
                format!("{key}.unique_attachment: applies to what `on_connect` chooses"),
            )
            .help(
                "name an `on_connect` flow that sets the attachment, or remove `unique_attachment`",
            ));
    }

    Ok(HandlerSpec {
        path,
        instance,
        mode: handler.mode,
        format: handler.format,
        schema,
        on_invalid: handler.on_invalid,
        slow_member: handler.slow_member,
        flow,
        on_connect,
        unique_attachment,
        on_close,
        path_params,
        query_params,
        headers,
        inputs,
    })
}

/// The flow `name` names at `key`, which must be one of the manifest's.
fn flow_name(
    source: &Source<'_>,
    manifest: &Manifest,
    key: &str,
    name: &Spanned<String>,
) -> Result<String, ManifestError> {
    let flow = source.text(key, name)?;
    if manifest.flows.contains_key(&flow) {
        return Ok(flow);
    }
    let known: Vec<&str> = manifest.flows.keys().map(String::as_str).collect();
    let help = if known.is_empty() {
        format!("define the flow in a [flows.{flow}] table")
    } else {
        format!(
            "define [flows.{flow}] or use one of the defined flows: {}",
            known.join(", ")
        )
    };
    Err(source
        .error_at(
            name.span(),
            format!("{key}: there is no flow named `{flow}`"),
        )
        .help(help))
}

fn resolve_inputs(
    source: &Source<'_>,
    key: &str,
    handler: &HandlerSection,
) -> Result<Vec<(String, InputSource)>, ManifestError> {
    let mut inputs = Vec::new();
    for (name, expression) in &handler.inputs {
        let text = source.text(&format!("{key}.inputs.{name}"), expression)?;
        let input = InputSource::parse(&text).map_err(|problem| {
            source.error_at(expression.span(), format!("{key}.inputs.{name}: {problem}"))
        })?;
        if handler.mode == Mode::Connection && matches!(input, InputSource::Content(_)) {
            return Err(source
                .error_at(
                    expression.span(),
                    format!("{key}.inputs.{name}: connection mode has no content to map"),
                )
                .help("map $.content only in data mode"));
        }
        inputs.push((name.clone(), input));
    }
    Ok(inputs)
}

fn params(
    source: &Source<'_>,
    key: &str,
    sections: &[ParamSection],
    lower_case: bool,
) -> Result<Vec<ParamSpec>, ManifestError> {
    let mut specs: Vec<ParamSpec> = Vec::new();
    for (i, section) in sections.iter().enumerate() {
        let mut name = source.text(&format!("{key}[{i}].name"), &section.name)?;
        if lower_case {
            name = name.to_ascii_lowercase();
        }
        if name.is_empty() {
            return Err(source.error_at(section.name.span(), format!("{key}[{i}].name is empty")));
        }
        if specs.iter().any(|spec| spec.name == name) {
            return Err(source
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
