//! Builds every guest test program in `programs/` and every example flow in
//! `../examples/` to a `wasm32-wasip2` component and writes their paths as
//! constants into `$OUT_DIR/programs.rs` (`test-flaky` -> `FLAKY`,
//! `wsflow-example-orders` -> `EXAMPLE_ORDERS`), so `cargo test` needs no
//! manual build step.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap();
    for watched in [
        "programs",
        "../examples",
        "../guest-sdk",
        "../wit",
        "../Cargo.lock",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            manifest_dir.join(watched).display()
        );
    }

    let mut programs = program_packages(&manifest_dir.join("programs"));
    programs.extend(program_packages(&workspace.join("examples")));
    require_wasm_target();

    // A target dir of its own (the outer cargo holds a lock on the main
    // one), next to the outer build's profiles rather than in this run's
    // OUT_DIR: `cargo clippy` and `cargo test` run this script in different
    // OUT_DIRs, and would otherwise build every program twice from scratch.
    // OUT_DIR is `<target>/<profile>/build/<package>-<hash>/out`.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .unwrap_or(&out_dir)
        .join("wasm-programs");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    for (package, _) in &programs {
        build.args(["-p", package]);
    }
    // The outer build's flags and wrappers (clippy, coverage) are for the
    // host; guest programs are built plainly.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        build.env_remove(var);
    }
    let status = build
        .status()
        .expect("running cargo to build the guest test programs");
    assert!(status.success(), "building the guest test programs failed");

    let mut constants = String::new();
    for (package, crate_name) in &programs {
        let wasm = target_dir
            .join("wasm32-wasip2/release")
            .join(format!("{crate_name}.wasm"));
        assert!(wasm.exists(), "{} was not built", wasm.display());
        let constant = package
            .trim_start_matches("test-")
            .trim_start_matches("wsflow-")
            .replace('-', "_")
            .to_uppercase();
        constants.push_str(&format!(
            "/// The `{package}` component.\npub const {constant}: &str = {:?};\n",
            wasm.display().to_string()
        ));
    }
    fs::write(out_dir.join("programs.rs"), constants).unwrap();
}

/// `(package name, crate name)` of each program crate, from its Cargo.toml.
fn program_packages(dir: &Path) -> Vec<(String, String)> {
    let mut programs = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = fs::read_to_string(&manifest) else {
            continue;
        };
        let name = text
            .lines()
            .find_map(|line| line.strip_prefix("name = "))
            .map(|name| name.trim_matches('"').to_owned())
            .unwrap_or_else(|| panic!("{} has no package name", manifest.display()));
        let crate_name = name.replace('-', "_");
        programs.push((name, crate_name));
    }
    programs.sort();
    programs
}

fn require_wasm_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", "wasm32-wasip2"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let installed = libdir
        .is_some_and(|dir| fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()));
    assert!(
        installed,
        "the wasm32-wasip2 Rust target is not installed; guest test programs need it.\n\
         Install it with: rustup target add wasm32-wasip2"
    );
}
