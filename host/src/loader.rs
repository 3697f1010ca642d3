//! Manifest -> loaded app: flows built if stale and compiled once, handlers
//! resolved to their flows, addresses resolved. The trigger never sees TOML.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;

use crate::builder;
use crate::manifest::{ManifestFile, PathPattern};
use crate::runtime::{FlowPre, Runtime};
use crate::trigger::{Handler, TriggerConfig};

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

/// Load a validated manifest: build (if asked) and compile its flows.
///
/// This compiles WebAssembly and may run build commands: call it from a
/// blocking context.
pub fn load(
    runtime: &Runtime,
    file: &ManifestFile,
    options: LoadOptions,
) -> anyhow::Result<LoadedApp> {
    let manifest = &file.manifest;
    let info = Arc::new(AppInfo {
        name: manifest.app.name.get_ref().as_str().into(),
        properties: manifest.properties.clone(),
        limits: AppLimits::default(),
    });

    let mut flows: BTreeMap<&str, FlowPre> = BTreeMap::new();
    for (name, flow) in &manifest.flows {
        if options.build {
            builder::ensure_built(file, name, flow)?;
        }
        let component = file.dir.join(flow.component.get_ref());
        let pre = runtime
            .load_flow(&info, name, &component)
            .with_context(|| format!("{}: flow `{name}`", file.path.display()))?;
        flows.insert(name, pre);
    }

    let mut triggers = Vec::new();
    for trigger in &manifest.triggers {
        let host = match &trigger.host {
            Some(host) => host.get_ref().parse().expect("validated host address"),
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let mut handlers = Vec::new();
        for handler in &trigger.handlers {
            let flow = flows
                .get(handler.flow.get_ref().as_str())
                .expect("validated flow reference")
                .clone();
            handlers.push(Arc::new(Handler {
                path: PathPattern::parse(handler.path.get_ref()).expect("validated path"),
                mode: handler.mode,
                format: handler.format,
                flow,
            }));
        }
        triggers.push(TriggerConfig {
            addr: SocketAddr::new(host, trigger.port()),
            handlers,
        });
    }
    Ok(LoadedApp { info, triggers })
}
