//! The one way apps are loaded, by the binary and by the tests:
//!
//! ```text
//! manifests --manifest::load_all--> AppSpec (plain data)
//!           --builder--> components built if stale (when asked)
//!           --runtime--> one engine sized for all apps, flows compiled
//!           --trigger--> listeners' handlers, TLS set up
//! ```
//!
//! Each stage reads only the app spec and what the stages before it made.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

use crate::app::{AppInfo, HostHubs};
use crate::builder;
use crate::cluster::Cluster;
use crate::manifest::{self, AppSpec, Environment};
use crate::runtime::http::Resolver;
use crate::runtime::{FlowPre, Lane, PoolSize, Runtime, RuntimeOptions};
use crate::trigger::{AppFlows, WsTrigger};

/// How to load apps.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Run build commands for components that are missing or stale.
    pub build: bool,
    /// Keep compiled components in this directory, so a restart does not
    /// compile them again; `None`: compile every component at load.
    pub cache_dir: Option<PathBuf>,
    /// The environment manifests are validated in (property overrides,
    /// `FLOGO_WEBSOCKET_SERVERPING`).
    pub env: Environment,
    /// The cluster this host serves its apps in, if any: their groups,
    /// ids and counts then span its hosts.
    pub cluster: Option<Cluster>,
    /// How flows' outbound HTTP resolves host names (the system's
    /// resolver by default).
    pub resolver: Resolver,
    /// Where apps keep their key-value stores (one SQLite database per
    /// app); `None`: in memory, gone when the host stops.
    pub data_dir: Option<PathBuf>,
}

impl LoadOptions {
    /// The default cache directory: `$WSFLOW_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/wsflow`, else `$HOME/.cache/wsflow`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        RuntimeOptions::default_cache_dir()
    }

    /// The default data directory: `$XDG_DATA_HOME/wsflow`, else
    /// `$HOME/.local/share/wsflow`.
    pub fn default_data_dir() -> Option<PathBuf> {
        let xdg = std::env::var_os("XDG_DATA_HOME").filter(|dir| !dir.is_empty());
        match xdg {
            Some(dir) => Some(PathBuf::from(dir).join("wsflow")),
            None => std::env::var_os("HOME")
                .filter(|dir| !dir.is_empty())
                .map(|home| PathBuf::from(home).join(".local/share/wsflow")),
        }
    }
}

/// Apps compiled and ready to bind, with the runtime they run in and
/// where they came from (for a reload).
pub struct LoadedApps {
    pub(crate) paths: Vec<PathBuf>,
    pub(crate) options: LoadOptions,
    pub(crate) runtime: Runtime,
    pub(crate) apps: Vec<LoadedApp>,
}

/// One app ready to bind: its spec, its running state, its flows (in the
/// slots its handlers read) and one trigger per listen address.
pub(crate) struct LoadedApp {
    pub(crate) spec: AppSpec,
    pub(crate) info: Arc<AppInfo>,
    pub(crate) lane: Lane,
    pub(crate) flows: Arc<AppFlows>,
    pub(crate) triggers: Vec<(SocketAddr, WsTrigger)>,
}

/// Load every app the manifests in `paths` describe (files, or directories
/// of `*.toml`). Nothing is returned unless every app loads.
///
/// This compiles WebAssembly and may run build commands: call it from a
/// blocking context.
pub fn load(paths: &[PathBuf], options: &LoadOptions) -> anyhow::Result<LoadedApps> {
    let specs = manifest::load_all(paths, &options.env)?;
    if options.build {
        for spec in &specs {
            builder::build_stale(spec)?;
        }
    }
    let runtime = Runtime::new(&RuntimeOptions {
        cache_dir: options.cache_dir.clone(),
        pool: PoolSize::for_apps(&specs),
    })?;
    let mut host = HostHubs::new(options.cluster.as_ref());
    host.resolver = options.resolver.clone();
    let apps = specs
        .into_iter()
        .map(|spec| load_app(&runtime, &host, options.data_dir.as_deref(), spec))
        .collect::<anyhow::Result<_>>()?;
    Ok(LoadedApps {
        paths: paths.to_vec(),
        options: options.clone(),
        runtime,
        apps,
    })
}

/// Compile an app's flows and set up its triggers.
fn load_app(
    runtime: &Runtime,
    host: &HostHubs,
    data_dir: Option<&std::path::Path>,
    spec: AppSpec,
) -> anyhow::Result<LoadedApp> {
    let lane = runtime.lane();
    let info = Arc::new(AppInfo::in_host(&spec, host, &lane, data_dir));
    if !spec.key_value_stores.is_empty() {
        // A data directory that cannot be used stops the start, not a
        // flow's first write.
        info.key_value
            .open_now()
            .with_context(|| app_context(&spec))?;
    }
    let flows = compile_flows(runtime, &info, &lane, &spec)?;
    let slots = Arc::new(AppFlows::default());
    let triggers = spec
        .triggers
        .iter()
        .enumerate()
        .map(|(t, trigger)| {
            let key = format!("triggers[{t}]");
            let built = WsTrigger::new(Arc::clone(&info), &key, trigger, &flows, &slots, None)
                .with_context(|| app_context(&spec))?;
            Ok((trigger.addr, built))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(LoadedApp {
        spec,
        info,
        lane,
        flows: slots,
        triggers,
    })
}

/// `MANIFEST (app `NAME`)`, for messages.
pub(crate) fn app_context(spec: &AppSpec) -> String {
    format!("{} (app `{}`)", spec.manifest.display(), spec.name)
}

/// Compile the flows of `spec` for the app `info`, whose guest work runs
/// in `lane`.
pub(crate) fn compile_flows(
    runtime: &Runtime,
    info: &Arc<AppInfo>,
    lane: &Lane,
    spec: &AppSpec,
) -> anyhow::Result<BTreeMap<String, FlowPre>> {
    let context = || app_context(spec);
    let mut flows = BTreeMap::new();
    for flow in &spec.flows {
        let pre = runtime
            .load_flow(info, lane, &flow.name, &flow.component, flow.grants.clone())
            .with_context(|| format!("{}: flow `{}`", context(), flow.name))?;
        flows.insert(flow.name.clone(), pre);
    }
    Ok(flows)
}
