//! Manifest -> loaded app: flows built if stale and compiled once, schemas
//! compiled, TLS configured, handlers resolved to their flows. The trigger
//! never sees TOML.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};

use crate::app::AppInfo;
use crate::builder;
use crate::manifest::{Instance, ManifestFile};
use crate::runtime::{FlowPre, PoolSize, Runtime};
use crate::trigger::{Handler, TriggerConfig, tls};

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
    let info = Arc::new(AppInfo::new(
        &spec.name,
        file.path.display().to_string(),
        file.properties.values().clone(),
        spec.limits.clone(),
    ));
    let context = || format!("{} (app `{}`)", file.path.display(), spec.name);

    let mut flows: BTreeMap<&str, FlowPre> = BTreeMap::new();
    for flow in &spec.flows {
        if options.build {
            builder::ensure_built(file, &flow.name, &file.manifest.flows[&flow.name])?;
        }
        let pre = runtime
            .load_flow(&info, &flow.name, &flow.component, flow.grants.clone())
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

/// The manifests `paths` name: files as given, and every `*.toml` file of
/// a directory (sorted by name).
pub fn manifest_paths(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
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

/// Parse and validate every manifest and check that the apps can share one
/// host (distinct names, distinct ports).
pub fn parse_all(paths: &[PathBuf]) -> anyhow::Result<Vec<ManifestFile>> {
    let mut files: Vec<ManifestFile> = Vec::new();
    for path in manifest_paths(paths)? {
        files.push(ManifestFile::load(&path)?);
    }
    check_apps_can_share_a_host(&files)?;
    Ok(files)
}

/// [`parse_all`], then load every app. Nothing is served unless every app
/// loads.
pub fn load_all(
    runtime: &Runtime,
    paths: &[PathBuf],
    options: LoadOptions,
) -> anyhow::Result<Vec<LoadedApp>> {
    parse_all(paths)?
        .iter()
        .map(|file| load(runtime, file, options))
        .collect()
}

/// The instance pool the apps need: each app's execution slots, plus a
/// long-lived instance per connection where a handler reuses instances.
pub fn pool_size(files: &[ManifestFile]) -> Option<PoolSize> {
    let mut instances: u64 = 0;
    let mut max_memory = 0;
    for file in files {
        let limits = &file.spec.limits;
        instances += limits.max_executions as u64;
        let reuses = file
            .spec
            .triggers
            .iter()
            .flat_map(|trigger| &trigger.handlers)
            .any(|handler| handler.instance == Instance::Reuse);
        if reuses {
            instances += limits.max_connections as u64;
        }
        max_memory = max_memory.max(limits.max_memory);
    }
    PoolSize::for_instances(instances, max_memory)
}

fn check_apps_can_share_a_host(files: &[ManifestFile]) -> anyhow::Result<()> {
    for (i, file) in files.iter().enumerate() {
        for earlier in &files[..i] {
            if earlier.spec.name == file.spec.name {
                bail!(
                    "{}: app `{}` is also defined by {}\n  help: give each app its own [app] name",
                    file.path.display(),
                    file.spec.name,
                    earlier.path.display()
                );
            }
            for (t, trigger) in file.spec.triggers.iter().enumerate() {
                let port = trigger.addr.port();
                let clash = earlier
                    .spec
                    .triggers
                    .iter()
                    .position(|other| port != 0 && other.addr.port() == port);
                if let Some(e) = clash {
                    bail!(
                        "{}: app `{}` triggers[{t}] wants port {port}, which app `{}` ({}) triggers[{e}] already uses\n  help: give each app its own ports",
                        file.path.display(),
                        file.spec.name,
                        earlier.spec.name,
                        earlier.path.display()
                    );
                }
            }
        }
    }
    Ok(())
}
