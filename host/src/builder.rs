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
///
/// `path` itself is followed if it is a symbolic link (the manifest named
/// it); links inside it are not: a link counts with its own time, so a
/// link out of the tree, or a loop, is never walked. At most
/// [`MAX_WALKED`] entries and [`MAX_DEPTH`] levels are looked at.
fn newest(path: &Path) -> Option<(PathBuf, SystemTime)> {
    let metadata = std::fs::metadata(path).ok()?;
    let mut budget = MAX_WALKED;
    newest_within(path, &metadata, MAX_DEPTH, &mut budget)
}

/// Entries a staleness check looks at, at most: a source tree is far
/// smaller; a `target/` directory among the sources may not be.
const MAX_WALKED: usize = 100_000;

/// Directory levels a staleness check descends, at most.
const MAX_DEPTH: usize = 32;

fn newest_within(
    path: &Path,
    metadata: &std::fs::Metadata,
    depth: usize,
    budget: &mut usize,
) -> Option<(PathBuf, SystemTime)> {
    if !metadata.is_dir() {
        return Some((path.to_path_buf(), metadata.modified().ok()?));
    }
    if depth == 0 {
        return None;
    }
    let mut found: Option<(PathBuf, SystemTime)> = None;
    for entry in std::fs::read_dir(path).ok()?.flatten() {
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        // Not followed: a link is a file with its own time here.
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        if let Some(candidate) = newest_within(&entry.path(), &metadata, depth - 1, budget)
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

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn links_inside_the_sources_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let sources = dir.path().join("src");
        std::fs::create_dir_all(sources.join("nested")).unwrap();
        std::fs::write(sources.join("nested/lib.rs"), "fn main() {}").unwrap();
        // A loop, a link to the root, and a link out of the tree to a
        // file written after everything else.
        symlink(&sources, sources.join("nested/loop")).unwrap();
        symlink("/", sources.join("root")).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let outside = dir.path().join("outside.rs");
        std::fs::write(&outside, "newer").unwrap();
        symlink(&outside, sources.join("out.rs")).unwrap();
        let (newest_path, _) = newest(&sources).expect("a newest file");
        assert_ne!(newest_path, outside);
        assert!(
            newest_path.starts_with(&sources),
            "{}",
            newest_path.display()
        );
        // The named path itself is followed.
        let named = dir.path().join("named");
        symlink(&sources, &named).unwrap();
        assert!(newest(&named).is_some());
    }

    #[test]
    fn a_deep_tree_is_walked_no_further_than_the_depth_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut deep = dir.path().to_path_buf();
        for _ in 0..MAX_DEPTH + 4 {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("deepest.rs"), "x").unwrap();
        assert_eq!(newest(dir.path()), None);
    }
}
