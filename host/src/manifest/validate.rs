//! Checks a parsed manifest for mistakes serde cannot see: references
//! between sections, path syntax, clashing ports and paths.

use super::{ManifestError, ManifestFile, PathPattern};

pub(super) fn validate(file: &ManifestFile) -> Result<(), ManifestError> {
    let manifest = &file.manifest;

    let name = &manifest.app.name;
    if !is_valid_name(name.get_ref()) {
        return Err(file
            .error_at(
                name.span(),
                format!("app.name: `{}` is not a valid app name", name.get_ref()),
            )
            .help("use letters, digits, `-` and `_`, starting with a letter"));
    }

    for (flow_name, flow) in &manifest.flows {
        if !is_valid_name(flow_name) {
            return Err(ManifestError::new(
                &file.path,
                format!("flows.{flow_name}: `{flow_name}` is not a valid flow name"),
            )
            .help("use letters, digits, `-` and `_`, starting with a letter"));
        }
        if flow.component.get_ref().trim().is_empty() {
            return Err(file
                .error_at(
                    flow.component.span(),
                    format!("flows.{flow_name}.component is empty"),
                )
                .help("give the path of the flow's .wasm component file"));
        }
    }

    if manifest.triggers.is_empty() {
        return Err(
            ManifestError::new(&file.path, "the app has no [[triggers]]")
                .help("add a [[triggers]] table with at least one [[triggers.handlers]] entry"),
        );
    }

    for (t, trigger) in manifest.triggers.iter().enumerate() {
        if let Some(port) = &trigger.port {
            let clash = manifest.triggers[..t]
                .iter()
                .enumerate()
                .find(|(_, earlier)| earlier.port() == *port.get_ref() && *port.get_ref() != 0);
            if let Some((earlier, _)) = clash {
                return Err(file
                    .error_at(
                        port.span(),
                        format!(
                            "triggers[{t}].port: port {} is already used by triggers[{earlier}]",
                            port.get_ref()
                        ),
                    )
                    .help("give each trigger its own port"));
            }
        } else if let Some((earlier, _)) = manifest.triggers[..t]
            .iter()
            .enumerate()
            .find(|(_, earlier)| earlier.port() == trigger.port())
        {
            return Err(ManifestError::new(
                &file.path,
                format!(
                    "triggers[{t}] uses the default port {} which triggers[{earlier}] already uses",
                    trigger.port()
                ),
            )
            .help("give each trigger its own `port`"));
        }
        if let Some(host) = &trigger.host
            && host.get_ref().parse::<std::net::IpAddr>().is_err()
        {
            return Err(file
                .error_at(
                    host.span(),
                    format!(
                        "triggers[{t}].host: `{}` is not an IP address",
                        host.get_ref()
                    ),
                )
                .help("use an address such as \"127.0.0.1\", \"0.0.0.0\" or \"::1\""));
        }
        if trigger.handlers.is_empty() {
            return Err(
                ManifestError::new(&file.path, format!("triggers[{t}] has no handlers"))
                    .help("add a [[triggers.handlers]] table with `path` and `flow`"),
            );
        }

        let mut patterns: Vec<PathPattern> = Vec::new();
        for (h, handler) in trigger.handlers.iter().enumerate() {
            let key = format!("triggers[{t}].handlers[{h}]");
            let pattern = PathPattern::parse(handler.path.get_ref()).map_err(|problem| {
                file.error_at(handler.path.span(), format!("{key}.path: {problem}"))
            })?;
            if let Some(same) = patterns.iter().position(|other| other.same_shape(&pattern)) {
                return Err(file
                    .error_at(
                        handler.path.span(),
                        format!(
                            "{key}.path: `{pattern}` matches the same requests as \
                             triggers[{t}].handlers[{same}].path `{}`",
                            patterns[same]
                        ),
                    )
                    .help("give each handler of a trigger a distinct path"));
            }
            patterns.push(pattern);

            let flow = handler.flow.get_ref();
            if !manifest.flows.contains_key(flow) {
                let known: Vec<&str> = manifest.flows.keys().map(String::as_str).collect();
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
        }
    }
    Ok(())
}

/// App and flow names appear in logs and metrics; keep them plain.
fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
