//! `wsflow build`: build stale flows with the builder `wsflow up` uses and
//! compile their components into the cache it reads, printing a line per
//! flow and step.

use std::path::PathBuf;
use std::time::Instant;

use crate::builder::{self, Built};
use crate::manifest::{self, Environment};
use crate::runtime::{PoolSize, Precompiled, Runtime, RuntimeOptions};

/// Build and compile every flow of the apps in `manifests`. Stops at the
/// first flow that does not build or compile.
///
/// Compiles WebAssembly and runs build commands: call it from a blocking
/// context.
pub(super) fn run(
    manifests: &[PathBuf],
    cache_dir: Option<PathBuf>,
    env: &Environment,
) -> anyhow::Result<()> {
    let specs = manifest::load_all(manifests, env)?;
    // Set up as `wsflow up` sets it up for these apps, so its cache entries
    // are the ones `up` looks for.
    let runtime = Runtime::new(&RuntimeOptions {
        cache_dir,
        pool: PoolSize::for_apps(&specs),
    })?;
    for spec in &specs {
        for flow in &spec.flows {
            let label = format!("{}/{}", spec.name, flow.name);
            match builder::ensure_built(spec, flow)? {
                Built::NoBuildCommand => {}
                Built::UpToDate => println!("{label}: up to date"),
                Built::Rebuilt { reason, took } => {
                    println!("{label}: built in {:.1} s ({reason})", took.as_secs_f64())
                }
            }
            let started = Instant::now();
            let compiled = runtime.precompile(&flow.component).map_err(|error| {
                error.context(format!(
                    "{}: flow `{}`: the component does not compile",
                    spec.manifest.display(),
                    flow.name
                ))
            })?;
            let took = started.elapsed().as_secs_f64();
            match compiled {
                Precompiled::FromCache => {
                    println!("{label}: compiled already (cached), loaded in {took:.1} s")
                }
                Precompiled::Cached(dir) => println!(
                    "{label}: compiled in {took:.1} s, cached in {}",
                    dir.display()
                ),
                Precompiled::NotCached => println!(
                    "{label}: compiled in {took:.1} s; not cached (no cache directory: set \
                     --cache-dir or WSFLOW_CACHE_DIR)"
                ),
            }
        }
    }
    Ok(())
}
