//! The config layer: a `wsflow.toml` is parsed ([`schema`]: serde structs
//! only), checked and resolved (`validate`) into an [`AppSpec`]
//! ([`spec`]: plain data). The spec is the layer's only output; nothing
//! past it sees TOML, and nothing here depends on the runtime or the
//! trigger.
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
pub(crate) mod outbound;
mod path;
mod properties;
pub(crate) mod schema;
pub(crate) mod spec;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

pub use error::ManifestError;
pub(crate) use path::PathPattern;
use properties::Properties;
pub use spec::AppSpec;

/// The port a trigger listens on when the manifest does not say.
pub(crate) const DEFAULT_PORT: u16 = 9998;

/// The environment a manifest is validated in: `WSFLOW_PROP_*` variables
/// override app properties, `FLOGO_WEBSOCKET_SERVERPING` turns on pings.
/// Passed in rather than read from the process, so tests choose their own.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
}

impl Environment {
    /// The process's environment (variables that are not UTF-8 are skipped).
    pub fn from_process() -> Self {
        std::env::vars().collect()
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Environment {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self {
            vars: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

/// Read, parse and validate the manifest at `path`.
pub fn load(path: &Path, env: &Environment) -> Result<AppSpec, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ManifestError::new(path, format!("cannot read the manifest: {error}"))
            .help("pass the path of an existing wsflow.toml")
    })?;
    parse(path, &text, env)
}

/// Parse and validate manifest `text` that was read from `path`.
pub fn parse(path: &Path, text: &str, env: &Environment) -> Result<AppSpec, ManifestError> {
    let manifest: schema::Manifest = match toml::de::Deserializer::parse(text) {
        Err(error) => return Err(ManifestError::from_toml(path, text, None, &error)),
        Ok(deserializer) => serde_path_to_error::deserialize(deserializer).map_err(|error| {
            // `Spanned` values show up as an inner field; the user wrote the
            // outer key.
            let key = error
                .path()
                .to_string()
                .replace(".$__serde_spanned_private_value", "");
            ManifestError::from_toml(path, text, Some(&key), error.inner())
        })?,
    };
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let properties = Properties::new(&manifest.properties, env.vars.clone());
    let source = validate::Source {
        path,
        dir,
        text,
        properties: &properties,
        env,
    };
    validate::resolve(&source, &manifest)
}

/// Load every manifest `paths` name (files, and every `*.toml` of a
/// directory) and check that the apps can share one host: distinct names,
/// distinct ports.
pub fn load_all(paths: &[PathBuf], env: &Environment) -> anyhow::Result<Vec<AppSpec>> {
    let mut apps: Vec<AppSpec> = Vec::new();
    for path in manifest_paths(paths)? {
        apps.push(load(&path, env)?);
    }
    check_apps_can_share_a_host(&apps)?;
    Ok(apps)
}

/// The manifests `paths` name: files as given, and every `*.toml` file of
/// a directory (sorted by name).
fn manifest_paths(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut manifests = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading the directory {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| path.extension().is_some_and(|ext| ext == "toml") && path.is_file())
                .collect();
            if found.is_empty() {
                bail!(
                    "{}: the directory holds no manifest (*.toml)\n  help: pass manifest files, or a directory of them",
                    path.display()
                );
            }
            found.sort();
            manifests.extend(found);
        } else {
            manifests.push(path.clone());
        }
    }
    Ok(manifests)
}

fn check_apps_can_share_a_host(apps: &[AppSpec]) -> anyhow::Result<()> {
    for (i, app) in apps.iter().enumerate() {
        for earlier in &apps[..i] {
            if earlier.name == app.name {
                bail!(
                    "{}: app `{}` is also defined by {}\n  help: give each app its own [app] name",
                    app.manifest.display(),
                    app.name,
                    earlier.manifest.display()
                );
            }
            for (t, trigger) in app.triggers.iter().enumerate() {
                let port = trigger.addr.port();
                let clash = earlier
                    .triggers
                    .iter()
                    .position(|other| port != 0 && other.addr.port() == port);
                if let Some(e) = clash {
                    bail!(
                        "{}: app `{}` triggers[{t}] wants port {port}, which app `{}` ({}) triggers[{e}] already uses\n  help: give each app its own ports",
                        app.manifest.display(),
                        app.name,
                        earlier.name,
                        earlier.manifest.display()
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::outbound::AllowedHost;
    use super::spec::ApiSpec;
    use super::*;

    const MANIFEST: &str = r#"
        [app]
        name = "demo"

        [properties]
        PORT = "9000"

        [flows.echo]
        component = "echo.wasm"

        [[triggers]]
        port = "${PORT}"

        [[triggers.handlers]]
        path = "/echo"
        flow = "echo"
    "#;

    /// [`MANIFEST`] with `extra` lines added to its `[flows.echo]` table.
    fn with_flow_settings(extra: &str) -> String {
        let (head, tail) = MANIFEST
            .split_once("[flows.echo]\n")
            .expect("the flow table");
        format!("{head}[flows.echo]\n{extra}\n{tail}")
    }

    fn parse_with(env: &[(&str, &str)]) -> AppSpec {
        let env: Environment = env.iter().copied().collect();
        parse(Path::new("dir/wsflow.toml"), MANIFEST, &env).unwrap()
    }

    #[test]
    fn validation_reads_the_environment_it_is_given() {
        let plain = parse_with(&[]);
        assert_eq!(plain.triggers[0].addr.port(), 9000);
        assert_eq!(plain.triggers[0].limits.ping_interval, None);

        let overridden = parse_with(&[
            ("WSFLOW_PROP_PORT", "9001"),
            ("FLOGO_WEBSOCKET_SERVERPING", "true"),
        ]);
        assert_eq!(overridden.triggers[0].addr.port(), 9001);
        assert_eq!(
            overridden.triggers[0].limits.ping_interval,
            Some(Duration::from_secs(5))
        );
        assert_eq!(overridden.properties["PORT"], "9001");
    }

    #[test]
    fn the_spec_carries_resolved_paths_and_build_settings() {
        let text = with_flow_settings("build = \"make\"");
        let spec = parse(Path::new("dir/wsflow.toml"), &text, &Environment::default()).unwrap();
        let flow = &spec.flows[0];
        assert_eq!(flow.component, Path::new("dir/echo.wasm"));
        let build = flow.build.as_ref().expect("a build command");
        assert_eq!(build.command, "make");
        assert_eq!(build.dir, Path::new("dir"));
        assert_eq!(
            build.sources,
            [Path::new("dir/src"), Path::new("dir/Cargo.toml")]
        );
    }

    /// `[flows.echo] allowed_outbound_hosts = ["${SERVICE}"]`, with the
    /// property `SERVICE` set to `service`.
    fn grants_with_service(service: &str) -> Vec<AllowedHost> {
        let text = with_flow_settings("allowed_outbound_hosts = [\"${SERVICE}\"]")
            .replace("PORT = \"9000\"", "PORT = \"9000\"\nSERVICE = \"\"");
        let env: Environment = [("WSFLOW_PROP_SERVICE", service)].into_iter().collect();
        let spec = parse(Path::new("wsflow.toml"), &text, &env).unwrap();
        spec.flows[0].grants.outbound_hosts.clone()
    }

    #[test]
    fn an_outbound_grant_empty_after_substitution_grants_nothing() {
        assert_eq!(grants_with_service(""), []);
        assert_eq!(grants_with_service("  "), []);
    }

    #[test]
    fn an_outbound_grant_with_a_path_grants_exactly_its_scheme_host_and_port() {
        let grants = grants_with_service("http://127.0.0.1:8080/check?strict=1");
        assert_eq!(
            grants,
            [AllowedHost::parse("http://127.0.0.1:8080").unwrap()]
        );
    }

    #[test]
    fn any_scalar_setting_may_come_from_a_property() {
        let text = format!(
            "{MANIFEST}\n[limits]\nmax_memory = \"${{MEM}}\"\nmax_executions = \"${{EXECS}}\"\n"
        );
        let env: Environment = [("WSFLOW_PROP_MEM", "2MiB"), ("WSFLOW_PROP_EXECS", "3")]
            .into_iter()
            .collect();
        let spec = parse(Path::new("wsflow.toml"), &text, &env).unwrap();
        assert_eq!(spec.limits.max_memory, 2 << 20);
        assert_eq!(spec.limits.max_executions, 3);
    }

    /// [`MANIFEST`] offering the API with `token = "${API_TOKEN}"` and
    /// `API_TOKEN = ""` in `[properties]`, in an environment that sets
    /// `WSFLOW_PROP_API_TOKEN` to `token`.
    fn with_api_token(token: &str) -> AppSpec {
        let text = format!("{MANIFEST}\n[api]\ntoken = \"${{API_TOKEN}}\"\n")
            .replace("PORT = \"9000\"", "PORT = \"9000\"\nAPI_TOKEN = \"\"");
        let env: Environment = [("WSFLOW_PROP_API_TOKEN", token)].into_iter().collect();
        parse(Path::new("wsflow.toml"), &text, &env).unwrap()
    }

    #[test]
    fn an_api_token_empty_after_substitution_keeps_the_app_off_the_api() {
        assert_eq!(with_api_token("").api, None);
        let on = with_api_token("0123456789abcdef0123");
        assert_eq!(
            on.api,
            Some(ApiSpec::with_token("0123456789abcdef0123".into()))
        );
        // The token is the host's: flows cannot read it as a property,
        // set or not.
        assert!(!on.properties.contains_key("API_TOKEN"));
        assert!(!with_api_token("").properties.contains_key("API_TOKEN"));
        assert_eq!(on.properties["PORT"], "9000");
        // A token that is set must still be a token.
        let text = format!("{MANIFEST}\n[api]\ntoken = \"${{API_TOKEN}}\"\n");
        let env: Environment = [("WSFLOW_PROP_API_TOKEN", "short")].into_iter().collect();
        let error = parse(Path::new("wsflow.toml"), &text, &env).unwrap_err();
        assert!(
            error.to_string().contains("at least 16 characters"),
            "{error}"
        );
    }

    #[test]
    fn history_is_read_with_its_defaults_and_checked() {
        let spec = parse(
            Path::new("dir/wsflow.toml"),
            &format!("{MANIFEST}\n[[history]]\ngroups = \"room:*\"\n[[history]]\ngroups = \"news\"\nsize = 5\nttl = \"2m\"\nposition_field = \"pos\"\n"),
            &Environment::default(),
        )
        .unwrap();
        assert_eq!(spec.history.len(), 2);
        assert!(spec.history[0].groups.matches("room:a"));
        assert!(!spec.history[0].groups.matches("news"));
        assert_eq!(spec.history[0].size, 100);
        assert_eq!(spec.history[0].ttl, Duration::from_secs(3600));
        assert_eq!(spec.history[0].position_field, None);
        assert!(spec.history[1].groups.matches("news"));
        assert!(!spec.history[1].groups.matches("newsy"));
        assert_eq!(spec.history[1].size, 5);
        assert_eq!(spec.history[1].position_field.as_deref(), Some("pos"));

        for (setting, problem) in [
            (
                "groups = \"no spaces\"",
                "history[0].groups: `no spaces` is not a group name",
            ),
            ("groups = \"a*b*\"", "is not a group name"),
            (
                "groups = \"r\"\nsize = 10001",
                "history[0].size: 10001 is more than 10000",
            ),
            ("groups = \"r\"\nsize = 0", "history[0].size"),
            (
                "groups = \"r\"\nttl = \"25h\"",
                "history[0].ttl: longer than 24h",
            ),
            (
                "groups = \"r\"\nposition_field = \"a\\\"b\"",
                "is not a plain field name",
            ),
            ("groups = \"r\"\nkeep = 1", "unknown field `keep`"),
        ] {
            let text = format!("{MANIFEST}\n[[history]]\n{setting}\n");
            let error = parse(Path::new("dir/wsflow.toml"), &text, &Environment::default())
                .unwrap_err()
                .to_string();
            assert!(error.contains(problem), "{setting}: {error}");
        }
    }
}
