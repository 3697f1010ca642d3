//! Builds flow components whose file is missing or older than their
//! sources, by running the build command the app spec carries.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};

use crate::manifest::AppSpec;
use crate::manifest::spec::{BuildSpec, FlowSpec};

/// Why a component needs building, if it does.
#[derive(Debug, PartialEq, Eq)]
enum Staleness {
    Missing,
    OlderThan(PathBuf),
    Fresh,
}

/// Decide whether a component must be (re)built from `sources`.
fn staleness(component: &Path, sources: &[PathBuf]) -> Staleness {
    let Ok(built) = std::fs::metadata(component).and_then(|m| m.modified()) else {
        return Staleness::Missing;
    };
    for source in sources {
        if let Some((path, modified)) = newest(source)
            && modified > built
        {
            return Staleness::OlderThan(path);
        }
    }
    Staleness::Fresh
}

/// The most recently modified file under `path` (itself if a file).
fn newest(path: &Path) -> Option<(PathBuf, SystemTime)> {
    let metadata = std::fs::metadata(path).ok()?;
    if metadata.is_file() {
        return Some((path.to_path_buf(), metadata.modified().ok()?));
    }
    let mut found: Option<(PathBuf, SystemTime)> = None;
    for entry in std::fs::read_dir(path).ok()?.flatten() {
        if let Some(candidate) = newest(&entry.path())
            && found.as_ref().is_none_or(|(_, time)| candidate.1 > *time)
        {
            found = Some(candidate);
        }
    }
    found
}

/// The files and directories whose change means `app` should be loaded
/// again: each flow's component and its build sources.
pub(crate) fn watched(app: &AppSpec) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for flow in &app.flows {
        paths.push(flow.component.clone());
        if let Some(build) = &flow.build {
            paths.extend(build.sources.iter().cloned());
        }
    }
    paths
}

/// When the file, or the newest file under the directory, `path` last
/// changed; `None` if there is none.
pub(crate) fn last_change(path: &Path) -> Option<SystemTime> {
    newest(path).map(|(_, modified)| modified)
}

/// What [`ensure_built`] did for a flow.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Built {
    /// The flow has no build command and its component exists.
    NoBuildCommand,
    /// The component is newer than its sources.
    UpToDate,
    /// The build command ran, because of `reason`, for `took`.
    Rebuilt { reason: String, took: Duration },
}

/// Build every flow of `app` whose component is missing or stale.
pub(crate) fn build_stale(app: &AppSpec) -> anyhow::Result<()> {
    for flow in &app.flows {
        ensure_built(app, flow)?;
    }
    Ok(())
}

/// Run `flow`'s build command if its component is stale. The command's
/// output goes to stderr so stdout stays reserved for `listening on` lines.
pub(crate) fn ensure_built(app: &AppSpec, flow: &FlowSpec) -> anyhow::Result<Built> {
    let name = &flow.name;
    let component = &flow.component;
    let Some(BuildSpec {
        command,
        dir,
        sources,
    }) = &flow.build
    else {
        if std::fs::metadata(component).is_ok() {
            return Ok(Built::NoBuildCommand);
        }
        bail!(
            "{}: flow `{name}`: component {} does not exist\n  help: build it, or add a `build` command to [flows.{name}]",
            app.manifest.display(),
            component.display()
        );
    };
    let reason = match staleness(component, sources) {
        Staleness::Fresh => return Ok(Built::UpToDate),
        Staleness::Missing => format!("{} does not exist", component.display()),
        Staleness::OlderThan(source) => format!("{} changed", source.display()),
    };
    tracing::info!(flow = %name, "building flow: {reason}; running `{command}`");
    let started = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("running the build command of flow `{name}`: {command}"))?;
    if !status.success() {
        bail!(
            "{}: flow `{name}`: the build command `{command}` failed ({status})",
            app.manifest.display()
        );
    }
    if std::fs::metadata(component).is_err() {
        bail!(
            "{}: flow `{name}`: the build command succeeded but {} still does not exist\n  help: check that [flows.{name}].component names the file the build produces",
            app.manifest.display(),
            component.display()
        );
    }
    Ok(Built::Rebuilt {
        reason,
        took: started.elapsed(),
    })
}
