//! Builds flow components whose file is missing or older than their sources,
//! by running the build command the manifest gives.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use anyhow::{Context as _, bail};

use crate::manifest::{FlowSection, ManifestFile};

/// What a flow is checked against when the manifest names no `sources`.
const DEFAULT_SOURCES: [&str; 2] = ["src", "Cargo.toml"];

/// Why a component needs building, if it does.
#[derive(Debug, PartialEq, Eq)]
pub enum Staleness {
    Missing,
    OlderThan(PathBuf),
    Fresh,
}

/// Decide whether `flow`'s component must be (re)built.
pub fn staleness(dir: &Path, flow: &FlowSection) -> Staleness {
    let component = dir.join(flow.component.get_ref());
    let Ok(built) = std::fs::metadata(&component).and_then(|m| m.modified()) else {
        return Staleness::Missing;
    };
    let sources: Vec<PathBuf> = match &flow.sources {
        Some(sources) => sources.iter().map(|s| dir.join(s)).collect(),
        None => DEFAULT_SOURCES.iter().map(|s| dir.join(s)).collect(),
    };
    for source in sources {
        if let Some((path, modified)) = newest(&source)
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

/// Run `name`'s build command if its component is stale. The command's
/// output goes to stderr so stdout stays reserved for `listening on` lines.
pub fn ensure_built(file: &ManifestFile, name: &str, flow: &FlowSection) -> anyhow::Result<()> {
    let component = file.dir.join(flow.component.get_ref());
    let reason = match staleness(&file.dir, flow) {
        Staleness::Fresh => return Ok(()),
        Staleness::Missing => format!("{} does not exist", component.display()),
        Staleness::OlderThan(source) => format!("{} changed", source.display()),
    };
    let Some(command) = &flow.build else {
        if std::fs::metadata(&component).is_ok() {
            return Ok(());
        }
        bail!(
            "{}: flow `{name}`: component {} does not exist\n  help: build it, or add a `build` command to [flows.{name}]",
            file.path.display(),
            component.display()
        );
    };
    tracing::info!(flow = name, "building flow: {reason}; running `{command}`");
    let status = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(&file.dir)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("running the build command of flow `{name}`: {command}"))?;
    if !status.success() {
        bail!(
            "{}: flow `{name}`: the build command `{command}` failed ({status})",
            file.path.display()
        );
    }
    if std::fs::metadata(&component).is_err() {
        bail!(
            "{}: flow `{name}`: the build command succeeded but {} still does not exist\n  help: check that [flows.{name}].component names the file the build produces",
            file.path.display(),
            component.display()
        );
    }
    Ok(())
}
