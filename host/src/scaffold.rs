//! `wsflow new`: a flow crate and the manifest that builds and serves it,
//! so that `cd NAME && wsflow up` works at once. The crate depends on the
//! SDK as a crate outside this repository would (a path or a git
//! dependency) and is a workspace of its own. The files are the templates
//! in `scaffold/`, filled in here.

use std::fmt;
use std::path::{Path, PathBuf};

/// The SDK this binary was built with, for crates made without `--sdk`.
const BUILT_WITH_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk");

const CARGO_TOML: &str = include_str!("scaffold/Cargo.toml.in");
const MANIFEST: &str = include_str!("scaffold/wsflow.toml.in");
const GITIGNORE: &str = include_str!("scaffold/gitignore");
const DATA_STRING: &str = include_str!("scaffold/data_string.rs");
const DATA_JSON: &str = include_str!("scaffold/data_json.rs");
const CONNECTION_STRING: &str = include_str!("scaffold/connection_string.rs");
const CONNECTION_JSON: &str = include_str!("scaffold/connection_json.rs");

/// The dependencies of flows that read and write JSON with serde.
const JSON_DEPENDENCIES: &str = "serde = { version = \"1\", features = [\"derive\"] }\n\
                                 serde_json = \"1\"\n";

/// Which kind of flow to start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// One execution per message.
    Data,
    /// One execution per connection, which receives and sends.
    Connection,
}

/// What the flow's messages are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Text (and binary) messages as they come.
    String,
    /// JSON text.
    Json,
}

/// Where the new crate gets `wsflow-sdk` from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sdk {
    /// A directory holding the SDK crate (its `Cargo.toml`).
    Path(PathBuf),
    /// A git repository holding the SDK crate.
    Git(String),
}

impl Sdk {
    /// The SDK next to the sources this binary was built from.
    pub(crate) fn built_with() -> Self {
        Self::Path(PathBuf::from(BUILT_WITH_SDK))
    }
}

/// A flow crate to create.
#[derive(Debug, Clone)]
pub(crate) struct NewFlow {
    /// The directory to create; its last component names the crate, the
    /// app and the flow.
    pub(crate) dir: PathBuf,
    pub(crate) mode: Mode,
    pub(crate) format: Format,
    pub(crate) sdk: Sdk,
}

/// Why a flow crate was not created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScaffoldError {
    #[error("{dir}: `{name}` cannot name a flow crate: {problem}\n  help: {help}")]
    InvalidName {
        dir: String,
        name: String,
        problem: String,
        help: String,
    },
    #[error(
        "{0}: the directory exists and is not empty\n  help: choose a new name, or empty or remove the directory"
    )]
    NotEmpty(String),
    #[error(
        "{path}: no wsflow-sdk crate there ({problem})\n  help: pass --sdk PATH with the `guest-sdk` directory of a wsflow checkout, or --sdk-git URL"
    )]
    SdkNotFound { path: String, problem: String },
    #[error("{path}: {action}: {source}")]
    Io {
        path: String,
        action: &'static str,
        source: std::io::Error,
    },
}

/// What [`create`] made.
#[derive(Debug)]
pub(crate) struct Created {
    /// The crate's (and the app's and flow's) name.
    pub(crate) name: String,
    /// How the crate depends on the SDK, as written in its `Cargo.toml`.
    pub(crate) sdk: String,
    /// The path a client connects to.
    pub(crate) path: String,
}

/// Create the flow crate `new` describes: `Cargo.toml`, `src/lib.rs`,
/// `wsflow.toml` and `.gitignore` in a new (or empty) directory.
pub(crate) fn create(new: &NewFlow) -> Result<Created, ScaffoldError> {
    let name = crate_name(&new.dir)?;
    let sdk_dependency = sdk_dependency(&new.sdk)?;
    ensure_empty(&new.dir)?;

    let files = render(&name, new.mode, new.format, &sdk_dependency);
    let io = |path: &Path, action: &'static str| {
        let path = path.display().to_string();
        move |source| ScaffoldError::Io {
            path,
            action,
            source,
        }
    };
    let src = new.dir.join("src");
    std::fs::create_dir_all(&src).map_err(io(&src, "cannot create the directory"))?;
    for (relative, contents) in files {
        let path = new.dir.join(relative);
        std::fs::write(&path, contents).map_err(io(&path, "cannot write the file"))?;
    }
    Ok(Created {
        path: format!("/{name}"),
        name,
        sdk: sdk_dependency,
    })
}

/// The files of a new crate, by path relative to its directory.
fn render(
    name: &str,
    mode: Mode,
    format: Format,
    sdk_dependency: &str,
) -> [(&'static str, String); 4] {
    let (summary, try_it, source) = match (mode, format) {
        (Mode::Data, Format::String) => (
            "a data-mode flow that sends every message back",
            format!("then connect to ws://127.0.0.1:9998/{name}: every message comes back"),
            DATA_STRING,
        ),
        (Mode::Data, Format::Json) => (
            "a data-mode flow that answers JSON messages",
            format!(
                "then connect to ws://127.0.0.1:9998/{name} and send {{\"name\": \"ann\"}}: \
                 the answer is {{\"greeting\": \"hello, ann\"}}"
            ),
            DATA_JSON,
        ),
        (Mode::Connection, Format::String) => (
            "a connection-mode flow that holds a session",
            format!(
                "then connect to ws://127.0.0.1:9998/{name}: every message comes back \
                 numbered, `bye` ends the session"
            ),
            CONNECTION_STRING,
        ),
        (Mode::Connection, Format::Json) => (
            "a connection-mode flow that keeps a running total",
            format!(
                "then connect to ws://127.0.0.1:9998/{name} and send {{\"add\": 5}}: \
                 the answer is {{\"total\": 5}}, a total kept per connection"
            ),
            CONNECTION_JSON,
        ),
    };
    let handler_format = match (mode, format) {
        // The host parses messages in data mode only; a connection-mode
        // flow parses what it receives.
        (Mode::Connection, _) => "",
        (Mode::Data, Format::String) => "format = \"string\"\n",
        (Mode::Data, Format::Json) => "format = \"json\"\non_invalid = \"reply\"\n",
    };
    let extra_dependencies = match format {
        Format::String => "",
        Format::Json => JSON_DEPENDENCIES,
    };
    let mode = match mode {
        Mode::Data => "data",
        Mode::Connection => "connection",
    };
    let cargo_toml = fill(
        CARGO_TOML,
        &[
            ("name", name),
            ("sdk_dependency", sdk_dependency),
            ("extra_dependencies", extra_dependencies),
        ],
    );
    let manifest = fill(
        MANIFEST,
        &[
            ("name", name),
            ("summary", summary),
            ("try_it", &try_it),
            ("crate_file", &name.replace('-', "_")),
            ("mode", mode),
            ("handler_format", handler_format),
        ],
    );
    [
        ("Cargo.toml", cargo_toml),
        ("wsflow.toml", manifest),
        (".gitignore", GITIGNORE.to_owned()),
        ("src/lib.rs", source.to_owned()),
    ]
}

/// `template` with every `{{key}}` replaced by its value.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut text = template.to_owned();
    for (key, value) in values {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    debug_assert!(!text.contains("{{"), "a placeholder is left: {text}");
    text
}

/// The crate name `dir` gives: its last component, if cargo (and a
/// manifest) accept it as a name.
fn crate_name(dir: &Path) -> Result<String, ScaffoldError> {
    let shown = dir.display().to_string();
    let invalid = |name: &str, problem: String, help: String| ScaffoldError::InvalidName {
        dir: shown.clone(),
        name: name.to_owned(),
        problem,
        help,
    };
    const NAME_RULE: &str = "a flow crate's name starts with an ASCII letter, followed by \
                             letters, digits, `-` or `_`; e.g. `my-flow`";
    let Some(name) = dir.file_name().and_then(|name| name.to_str()) else {
        return Err(invalid(
            "",
            "the path does not end in a name".to_owned(),
            format!("give the directory to create, e.g. `wsflow new my-flow`; {NAME_RULE}"),
        ));
    };
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(invalid(
            name,
            format!("it contains `{bad}`"),
            NAME_RULE.to_owned(),
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(invalid(
            name,
            "it does not start with a letter".to_owned(),
            NAME_RULE.to_owned(),
        ));
    }
    let key = name.replace('-', "_");
    if RESERVED.contains(&key.as_str()) {
        return Err(invalid(
            name,
            "cargo refuses it as a package name (a Rust keyword, a standard crate or the SDK's \
             own name)"
                .to_owned(),
            format!("choose another name, e.g. `{name}-flow`"),
        ));
    }
    Ok(name.to_owned())
}

/// Names cargo refuses for a package (keywords, the standard crates), and
/// the SDK's, which the crate depends on.
const RESERVED: &[&str] = &[
    "abstract",
    "alloc",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "core",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "proc_macro",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "wsflow_sdk",
    "yield",
];

/// Fail unless `dir` is absent or an empty directory.
fn ensure_empty(dir: &Path) -> Result<(), ScaffoldError> {
    let shown = || dir.display().to_string();
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(ScaffoldError::NotEmpty(shown())),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        // A file of that name, say.
        Err(_) if dir.exists() => Err(ScaffoldError::NotEmpty(shown())),
        Err(source) => Err(ScaffoldError::Io {
            path: shown(),
            action: "cannot read the directory",
            source,
        }),
    }
}

/// The `wsflow-sdk = ...` line of the new crate's `Cargo.toml`. A path is
/// made absolute (the crate may live anywhere) and must hold the SDK.
fn sdk_dependency(sdk: &Sdk) -> Result<String, ScaffoldError> {
    match sdk {
        Sdk::Git(url) => Ok(format!("wsflow-sdk = {{ git = {} }}", toml_string(url))),
        Sdk::Path(path) => {
            let not_found = |problem: String| ScaffoldError::SdkNotFound {
                path: path.display().to_string(),
                problem,
            };
            let dir = std::fs::canonicalize(path).map_err(|error| not_found(error.to_string()))?;
            let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))
                .map_err(|error| not_found(format!("Cargo.toml: {error}")))?;
            let is_sdk = manifest
                .parse::<toml::Table>()
                .ok()
                .and_then(|table| {
                    let name = table.get("package")?.get("name")?.as_str()?.to_owned();
                    Some(name == "wsflow-sdk")
                })
                .unwrap_or(false);
            if !is_sdk {
                return Err(not_found(
                    "its Cargo.toml is not the `wsflow-sdk` package".to_owned(),
                ));
            }
            let dir = dir.to_str().ok_or_else(|| {
                not_found("the path is not valid UTF-8, which Cargo.toml cannot hold".to_owned())
            })?;
            Ok(format!("wsflow-sdk = {{ path = {} }}", toml_string(dir)))
        }
    }
}

/// `text` as a TOML string, quoted and escaped.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Data => "data",
            Mode::Connection => "connection",
        })
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::String => "string",
            Format::Json => "json",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{self, Environment};

    fn new_flow(dir: PathBuf, mode: Mode, format: Format) -> NewFlow {
        NewFlow {
            dir,
            mode,
            format,
            sdk: Sdk::built_with(),
        }
    }

    #[test]
    fn every_kind_of_flow_gets_a_valid_manifest_and_crate() {
        let temp = tempfile::tempdir().unwrap();
        for mode in [Mode::Data, Mode::Connection] {
            for format in [Format::String, Format::Json] {
                let name = format!("{mode}-{format}");
                let dir = temp.path().join(&name);
                let created = create(&new_flow(dir.clone(), mode, format)).unwrap();
                assert_eq!(created.name, name);
                assert_eq!(created.path, format!("/{name}"));

                let specs = manifest::load_all(&[dir.join("wsflow.toml")], &Environment::default())
                    .unwrap_or_else(|error| panic!("{name}: {error:#}"));
                let flow = &specs[0].flows[0];
                assert_eq!(flow.name, name);
                let file = format!("{}.wasm", name.replace('-', "_"));
                assert_eq!(
                    flow.component,
                    dir.join("target/wasm32-wasip2/release").join(file)
                );

                let cargo: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml"))
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(cargo["package"]["name"].as_str(), Some(name.as_str()));
                assert!(cargo.contains_key("workspace"), "a workspace of its own");
                let sdk = cargo["dependencies"]["wsflow-sdk"]["path"]
                    .as_str()
                    .unwrap();
                assert!(Path::new(sdk).is_absolute(), "{sdk}");
                assert!(Path::new(sdk).join("Cargo.toml").is_file(), "{sdk}");
                assert_eq!(
                    cargo["dependencies"].get("serde_json").is_some(),
                    format == Format::Json
                );
                let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
                assert!(lib.contains("wsflow_sdk::export!"), "{lib}");
            }
        }
    }

    #[test]
    fn a_git_sdk_is_a_git_dependency() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("flow");
        let mut new = new_flow(dir.clone(), Mode::Data, Format::String);
        new.sdk = Sdk::Git("https://example.invalid/wsflow.git".to_owned());
        create(&new).unwrap();
        let cargo: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            cargo["dependencies"]["wsflow-sdk"]["git"].as_str(),
            Some("https://example.invalid/wsflow.git")
        );
    }

    #[test]
    fn names_cargo_refuses_are_refused_with_the_rule() {
        for (name, problem) in [
            ("my flow", "it contains ` `"),
            ("9lives", "it does not start with a letter"),
            ("-x", "it does not start with a letter"),
            ("fn", "cargo refuses it as a package name"),
            ("wsflow-sdk", "cargo refuses it as a package name"),
            ("caf\u{e9}", "it contains `\u{e9}`"),
        ] {
            let error = crate_name(Path::new(name)).unwrap_err().to_string();
            assert!(error.contains(problem), "{name}: {error}");
            assert!(error.contains("help: "), "{name}: {error}");
        }
        assert_eq!(crate_name(Path::new("a/b/my_flow-2")).unwrap(), "my_flow-2");
        assert!(crate_name(Path::new("..")).is_err());
    }

    #[test]
    fn a_directory_with_files_is_not_overwritten() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("taken");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        let error = create(&new_flow(dir.clone(), Mode::Data, Format::String)).unwrap_err();
        assert!(matches!(error, ScaffoldError::NotEmpty(_)), "{error}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

        // An empty directory is used.
        let empty = temp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        create(&new_flow(empty.clone(), Mode::Data, Format::String)).unwrap();
        assert!(empty.join("wsflow.toml").is_file());
    }

    #[test]
    fn a_path_that_is_not_the_sdk_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let mut new = new_flow(temp.path().join("flow"), Mode::Data, Format::String);
        new.sdk = Sdk::Path(temp.path().to_path_buf());
        let error = create(&new).unwrap_err().to_string();
        assert!(error.contains("no wsflow-sdk crate there"), "{error}");
        assert!(error.contains("--sdk PATH"), "{error}");
        assert!(!temp.path().join("flow").exists());
    }
}
