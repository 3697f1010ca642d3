//! Invalid manifests: each fixture `fixtures/manifests/NAME.toml` must fail
//! with exactly the text in `NAME.err`. Run with `UPDATE_SNAPSHOTS=1` to
//! rewrite the `.err` files after an intended change, then review the diff.

use std::path::Path;

use wsflow::manifest::{self, Environment};

#[test]
fn invalid_manifests_match_their_error_snapshots() {
    let dir = Path::new("fixtures/manifests");
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut fixtures: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    fixtures.sort();
    assert!(
        fixtures.len() >= 10,
        "expected the manifest fixtures in {}",
        dir.display()
    );

    let mut mismatches = Vec::new();
    for fixture in fixtures {
        let actual = match manifest::load(&fixture, &Environment::default()) {
            Ok(_) => format!("(no error: {} loaded)", fixture.display()),
            Err(error) => error.to_string(),
        };
        let snapshot = fixture.with_extension("err");
        if update {
            std::fs::write(&snapshot, format!("{actual}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&snapshot).unwrap_or_default();
        if expected.trim_end() != actual {
            mismatches.push(format!(
                "{}\n--- expected\n{}\n--- actual\n{actual}\n",
                fixture.display(),
                expected.trim_end()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn the_examples_are_valid() {
    for example in ["echo", "chat-session", "orders"] {
        let path = Path::new("../examples").join(example).join("wsflow.toml");
        if let Err(error) = manifest::load(&path, &Environment::default()) {
            panic!("{error}");
        }
    }
}

#[test]
fn the_sdk_carries_the_same_wit_as_the_host() {
    let host = Path::new("../wit");
    let sdk = Path::new("../guest-sdk/wit");
    /// Every file under `dir` (the vendored `deps/` included), relative.
    fn files(dir: &Path, under: &Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir.join(under)).unwrap() {
            let relative = under.join(entry.unwrap().file_name());
            if dir.join(&relative).is_dir() {
                files(dir, &relative, found);
            } else {
                found.push(relative);
            }
        }
    }
    let names = |dir: &Path| {
        let mut names = Vec::new();
        files(dir, Path::new(""), &mut names);
        names.sort();
        names
    };
    assert_eq!(names(host), names(sdk), "the same WIT files");
    assert!(
        names(host).contains(&Path::new("deps/keyvalue/store.wit").to_path_buf()),
        "wasi:keyvalue is vendored"
    );
    assert!(
        names(host).contains(&Path::new("deps/http.wit").to_path_buf()),
        "wasi:http is vendored"
    );
    for name in names(host) {
        assert_eq!(
            std::fs::read_to_string(host.join(&name)).unwrap(),
            std::fs::read_to_string(sdk.join(&name)).unwrap(),
            "guest-sdk/wit/{} differs from wit/: copy wit/ into guest-sdk/wit/",
            name.display()
        );
    }
}
