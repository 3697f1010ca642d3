//! Manifest -> loaded app: flows built if stale and compiled once, schemas
//! compiled, TLS configured, handlers resolved to their flows. The trigger
//! never sees TOML.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;

use crate::builder;
use crate::manifest::ManifestFile;
use crate::runtime::{FlowPre, Runtime};
use crate::trigger::{Handler, TriggerConfig, tls};

/// Limits applied to every execution of an app.
#[derive(Debug, Clone)]
pub struct AppLimits {
    /// Linear memory a single execution may grow to.
    pub max_memory_bytes: usize,
}

impl Default for AppLimits {
    fn default() -> Self {
        Self {
            // Enough for a Rust flow with serde and a few MiB of data; small
            // enough that thousands of concurrent executions fit in RAM.
            max_memory_bytes: 64 << 20,
        }
    }
}

/// What an execution knows about the app it belongs to.
#[derive(Debug)]
pub struct AppInfo {
    pub name: Arc<str>,
    pub properties: BTreeMap<String, String>,
    pub limits: AppLimits,
}

/// An app ready to serve.
pub struct LoadedApp {
    pub info: Arc<AppInfo>,
    pub triggers: Vec<TriggerConfig>,
}

/// How to load an app.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Run build commands for components that are missing or stale.
    pub build: bool,
}

/// Load a validated manifest: build (if asked) and compile its flows,
/// compile its schemas, set up TLS.
///
/// This compiles WebAssembly and may run build commands: call it from a
/// blocking context.
pub fn load(
    runtime: &Runtime,
    file: &ManifestFile,
    options: LoadOptions,
) -> anyhow::Result<LoadedApp> {
    let spec = &file.spec;
    let info = Arc::new(AppInfo {
        name: spec.name.as_str().into(),
        properties: file.properties.values().clone(),
        limits: AppLimits::default(),
    });
    let context = || format!("{} (app `{}`)", file.path.display(), spec.name);

    let mut flows: BTreeMap<&str, FlowPre> = BTreeMap::new();
    for flow in &spec.flows {
        if options.build {
            builder::ensure_built(file, &flow.name, &file.manifest.flows[&flow.name])?;
        }
        let pre = runtime
            .load_flow(&info, &flow.name, &flow.component)
            .with_context(|| format!("{}: flow `{}`", context(), flow.name))?;
        flows.insert(&flow.name, pre);
    }

    let mut triggers = Vec::new();
    for (t, trigger) in spec.triggers.iter().enumerate() {
        let tls = match &trigger.tls {
            Some(tls_spec) => Some(
                tls::server_config(tls_spec)
                    .with_context(|| format!("{}: triggers[{t}].tls", context()))?,
            ),
            None => None,
        };
        let mut handlers = Vec::new();
        for (h, handler) in trigger.handlers.iter().enumerate() {
            let schema = match &handler.schema {
                Some(schema) => {
                    Some(jsonschema::validator_for(&schema.schema).map_err(|error| {
                        anyhow::anyhow!(
                            "{}: triggers[{t}].handlers[{h}].schema: {}: {error}",
                            context(),
                            schema.origin
                        )
                    })?)
                }
                None => None,
            };
            let flow = flows[handler.flow.as_str()].clone();
            handlers.push(Arc::new(Handler {
                spec: handler.clone(),
                schema,
                flow,
            }));
        }
        triggers.push(TriggerConfig {
            addr: trigger.addr,
            tls,
            limits: trigger.limits.clone(),
            allowed_origins: trigger.allowed_origins.clone(),
            handlers,
        });
    }
    Ok(LoadedApp { info, triggers })
}
