//! Hot reload: read the manifests again, build what is stale, compile, and
//! swap the new version in without dropping a connection.
//!
//! ```text
//! manifests --load_all--> specs --builder--> components --runtime--> flows
//!   --trigger--> new trigger versions   (all of it, or nothing changes)
//!   commit: flows into their slots (the next execution of every handler
//!           that names them runs the new version), triggers into their
//!           listeners (connections accepted from now on use them)
//! ```
//!
//! What a running host cannot change in place is reported, not applied:
//! apps added or removed, an app's listen addresses, its `[limits]`, its
//! properties, its key-value stores and its `[[history]]` (the app's
//! counters, budgets, hub
//! and stores live on across reloads, and the pool was sized for its
//! limits). Such an app keeps serving its
//! current version until the host restarts. A connection-mode flow runs to
//! its end on the version it started with; an `instance = "reuse"`
//! connection keeps its instance; a data-mode connection's next message
//! runs the new version.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;

use crate::app::AppInfo;
use crate::builder;
use crate::loader::{self, LoadOptions, LoadedApp};
use crate::manifest::{self, AppSpec};
use crate::runtime::{FlowPre, Lane, Role, Runtime};
use crate::trigger::{AppFlows, Listening, WsTrigger};

/// What a reload changed, and what it could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Apps now serving their new version.
    pub reloaded: Vec<String>,
    /// Changes that take a restart, each saying what and why.
    pub needs_restart: Vec<String>,
}

/// Reloads the apps of a running server; cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    live: Arc<Mutex<Live>>,
}

/// What the server runs, as a reload needs to know it.
pub(crate) struct Live {
    paths: Vec<PathBuf>,
    options: LoadOptions,
    runtime: Runtime,
    apps: Vec<LiveApp>,
}

/// One running app.
pub(crate) struct LiveApp {
    spec: AppSpec,
    info: Arc<AppInfo>,
    lane: Lane,
    flows: Arc<AppFlows>,
    /// Its listeners, in the order of its triggers.
    listeners: Vec<(SocketAddr, Arc<Listening>)>,
}

impl LiveApp {
    pub(crate) fn new(app: &LoadedApp, listeners: Vec<(SocketAddr, Arc<Listening>)>) -> Self {
        Self {
            spec: app.spec.clone(),
            info: Arc::clone(&app.info),
            lane: app.lane.clone(),
            flows: Arc::clone(&app.flows),
            listeners,
        }
    }
}

/// A reloaded app, ready to be swapped in.
struct Staged {
    app: usize,
    spec: AppSpec,
    flows: BTreeMap<String, FlowPre>,
    triggers: Vec<WsTrigger>,
}

impl Reloader {
    pub(crate) fn new(
        paths: Vec<PathBuf>,
        options: LoadOptions,
        runtime: Runtime,
        apps: Vec<LiveApp>,
    ) -> Self {
        Self {
            live: Arc::new(Mutex::new(Live {
                paths,
                options,
                runtime,
                apps,
            })),
        }
    }

    /// Reload every app from its manifest. On an error nothing changes and
    /// the current version keeps serving; the error says why.
    pub async fn reload(&self) -> anyhow::Result<ReloadReport> {
        let live = Arc::clone(&self.live);
        // Builds and compiles: off the async workers.
        tokio::task::spawn_blocking(move || live.lock().expect("not poisoned").reload())
            .await
            .context("reloading")?
    }

    /// The files whose change calls for a reload: the manifests, and every
    /// flow's component and build sources. A fingerprint of when each last
    /// changed.
    pub fn fingerprint(&self) -> Vec<(PathBuf, Option<SystemTime>)> {
        let live = self.live.lock().expect("not poisoned");
        let mut files: Vec<PathBuf> = manifest_files(&live.paths);
        for app in &live.apps {
            files.extend(builder::watched(&app.spec));
        }
        files
            .into_iter()
            .map(|file| {
                let changed = builder::last_change(&file);
                (file, changed)
            })
            .collect()
    }

    /// Log a reload's outcome, as `--watch` and SIGHUP report it.
    pub async fn reload_and_log(&self) {
        match self.reload().await {
            Ok(report) => {
                for change in &report.needs_restart {
                    tracing::warn!("reload: {change}");
                }
                if !report.reloaded.is_empty() {
                    tracing::info!("reloaded {}", report.reloaded.join(", "));
                }
            }
            Err(error) => {
                tracing::error!("reload failed; the current version keeps serving: {error:#}");
            }
        }
    }
}

/// The manifest files `paths` name: files, and the `*.toml` of directories.
fn manifest_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        match std::fs::read_dir(path) {
            Ok(entries) => {
                let mut found: Vec<PathBuf> = entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.path())
                    .filter(|file| file.extension().is_some_and(|ext| ext == "toml"))
                    .collect();
                found.sort();
                files.extend(found);
            }
            Err(_) => files.push(path.clone()),
        }
    }
    files
}

impl Live {
    fn reload(&mut self) -> anyhow::Result<ReloadReport> {
        let specs = manifest::load_all(&self.paths, &self.options.env)?;
        let generation = self.runtime.begin_load();
        if self.options.build {
            for spec in &specs {
                builder::build_stale(spec)?;
            }
        }
        let mut report = ReloadReport::default();
        let mut staged = Vec::new();
        for spec in specs {
            let Some(app) = self.apps.iter().position(|app| app.spec.name == spec.name) else {
                report.needs_restart.push(format!(
                    "app `{}` ({}) is new; restart wsflow to serve it",
                    spec.name,
                    spec.manifest.display()
                ));
                continue;
            };
            if let Some(what) = needs_restart(&self.apps[app].spec, &spec) {
                report.needs_restart.push(format!(
                    "app `{}`: {what} changed; restart wsflow to apply it (the app keeps serving its current version)",
                    spec.name
                ));
                continue;
            }
            staged.push(self.stage(app, spec)?);
        }
        for app in &self.apps {
            if !staged
                .iter()
                .any(|staged| staged.spec.name == app.spec.name)
                && !report
                    .needs_restart
                    .iter()
                    .any(|change| change.starts_with(&format!("app `{}`:", app.spec.name)))
            {
                report.needs_restart.push(format!(
                    "app `{}` is no longer in the manifests; it keeps serving until wsflow restarts",
                    app.spec.name
                ));
            }
        }
        // Everything loaded: swap it in.
        for Staged {
            app,
            spec,
            flows,
            triggers,
        } in staged
        {
            let live = &mut self.apps[app];
            live.flows.install(&flows);
            live.info.follow_triggers(&spec);
            for ((_, listening), trigger) in live.listeners.iter().zip(triggers) {
                listening.replace(trigger);
            }
            report.reloaded.push(spec.name.clone());
            live.spec = spec;
        }
        self.runtime.forget_unused_since(generation);
        Ok(report)
    }

    /// Compile app `app`'s new version and build its new triggers.
    fn stage(&self, app: usize, spec: AppSpec) -> anyhow::Result<Staged> {
        let live = &self.apps[app];
        let flows = loader::compile_flows(&self.runtime, &live.info, &live.lane, &spec)?;
        // Connections open on the current version may call a flow for what
        // it exported: a new version must still export it.
        for (name, flow) in &flows {
            if let Some(current) = live.flows.current(name) {
                for (role, what) in [
                    (Role::Handle, "the `handle` function"),
                    (Role::Hooks, "the lifecycle hooks"),
                ] {
                    if current.has(role) && !flow.has(role) {
                        anyhow::bail!(
                            "{}: flow `{name}` no longer exports {what}, which connections open on the current version may call; restart wsflow to apply this change",
                            loader::app_context(&spec)
                        );
                    }
                }
            }
        }
        let triggers = spec
            .triggers
            .iter()
            .zip(&live.listeners)
            .enumerate()
            .map(|(t, (trigger, (_, listening)))| {
                let open = listening.current().open_connections();
                WsTrigger::new(
                    Arc::clone(&live.info),
                    &format!("triggers[{t}]"),
                    trigger,
                    &flows,
                    &live.flows,
                    Some(open),
                )
                .with_context(|| loader::app_context(&spec))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Staged {
            app,
            spec,
            flows,
            triggers,
        })
    }
}

/// What changed between two versions of an app that a running host cannot
/// change in place, if anything.
fn needs_restart(current: &AppSpec, new: &AppSpec) -> Option<&'static str> {
    let addrs = |spec: &AppSpec| -> Vec<SocketAddr> {
        spec.triggers.iter().map(|trigger| trigger.addr).collect()
    };
    if addrs(current) != addrs(new) {
        Some("its listen addresses (`port`)")
    } else if current.limits != new.limits {
        Some("its `[limits]`")
    } else if current.properties != new.properties {
        Some("its `[properties]`")
    } else if current.api != new.api {
        Some("its `[api]`")
    } else if current.key_value_stores != new.key_value_stores {
        Some("its `[key_value.stores]`")
    } else if current.history != new.history {
        Some("its `[[history]]`")
    } else {
        None
    }
}
