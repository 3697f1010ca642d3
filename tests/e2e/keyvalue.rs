//! Key-value state (`wasi:keyvalue` on SQLite): values outlive connections
//! and the host, atomic operations are exact under concurrency, apps never
//! see each other's stores, grants and quotas are error values (counted),
//! an acknowledged write survives `kill -9`, and a hostile app stays in its
//! quotas without stalling another app's stores. With `--cluster` the
//! stores are JetStream buckets that every host shares (these tests need
//! `nats-server` on PATH, as the cluster tests do).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use toml::{Table, toml};
use wsflow::cluster::ClusterOptions;
use wsflow_tests::nats::NatsServer;
use wsflow_tests::{
    Client, Manifest, TIMEOUT, TestServer, component_cache, connect, next_text, programs,
    send_text, table,
};

/// App `name` declaring `stores`, whose flow (`kv` at `/kv`) is granted
/// `granted`, with `limits`.
fn kv_app(name: &str, stores: &[&str], granted: &[&str], limits: Table) -> Manifest {
    let grants = table([(
        "key_value_stores",
        granted
            .iter()
            .map(|store| (*store).into())
            .collect::<Vec<toml::Value>>()
            .into(),
    )]);
    let handler = table([("path", "/kv".into()), ("flow", "kv".into())]);
    Manifest::app(name)
        .flow_with("kv", programs::KV, grants)
        .trigger(wsflow_tests::Trigger::on_port(0).handler(handler))
        .key_value_stores(stores)
        .limits(limits)
}

fn default_app(name: &str) -> Manifest {
    kv_app(name, &["default"], &["default"], Table::new())
}

async fn ask(client: &mut Client, command: &str) -> String {
    send_text(client, command).await;
    next_text(client).await
}

async fn client(server: &TestServer, app: &str) -> Client {
    connect(&server.app_url(app, "/kv")).await
}

#[tokio::test]
async fn values_outlive_connections_and_a_host_restart() {
    let data = tempfile::tempdir().unwrap();
    let app = default_app("keep");
    let server = TestServer::start_with_data(&app, data.path()).await;
    let mut ann = client(&server, "keep").await;
    assert_eq!(ask(&mut ann, "set default topic rust").await, "ok");
    drop(ann);
    let mut bob = client(&server, "keep").await;
    assert_eq!(ask(&mut bob, "get default topic").await, "value rust");
    assert_eq!(ask(&mut bob, "get default other").await, "none");
    drop(bob);
    server.stop().await;

    let server = TestServer::start_with_data(&app, data.path()).await;
    let mut cid = client(&server, "keep").await;
    assert_eq!(ask(&mut cid, "get default topic").await, "value rust");
    assert_eq!(ask(&mut cid, "del default topic").await, "ok");
    assert_eq!(ask(&mut cid, "get default topic").await, "none");
    let database = data.path().join(format!("{}.sqlite3", app.name()));
    assert!(
        database.is_file(),
        "{} holds the app's data",
        database.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_from_many_concurrent_executions_add_up_exactly() {
    const CLIENTS: usize = 8;
    const EACH: usize = 25;
    let server = TestServer::start(&default_app("count")).await;
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = client(&server, "count").await;
        tasks.push(tokio::spawn(async move {
            // All sent before any answer is read: executions overlap.
            for _ in 0..EACH {
                send_text(&mut client, "incr default n 1").await;
            }
            let mut seen = Vec::new();
            for _ in 0..EACH {
                let answer = next_text(&mut client).await;
                let n: u64 = answer
                    .strip_prefix("ok ")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("not a count: {answer}"));
                seen.push(n);
            }
            seen
        }));
    }
    let mut seen = Vec::new();
    for task in tasks {
        seen.extend(task.await.unwrap());
    }
    seen.sort_unstable();
    let expected: Vec<u64> = (1..=(CLIENTS * EACH) as u64).collect();
    assert_eq!(seen, expected, "every increment saw a value of its own");
    let mut check = client(&server, "count").await;
    let total = CLIENTS * EACH;
    assert_eq!(
        ask(&mut check, "get default n").await,
        format!("value {total}")
    );
}

#[tokio::test]
async fn compare_and_swap_swaps_only_the_expected_value() {
    let server = TestServer::start(&default_app("cas")).await;
    let mut ann = client(&server, "cas").await;
    assert_eq!(ask(&mut ann, "cas default owner - ann").await, "swapped");
    assert_eq!(ask(&mut ann, "cas default owner - bob").await, "conflict");
    assert_eq!(ask(&mut ann, "cas default owner bob cid").await, "conflict");
    assert_eq!(ask(&mut ann, "cas default owner ann cid").await, "swapped");
    assert_eq!(ask(&mut ann, "get default owner").await, "value cid");
}

#[tokio::test]
async fn an_app_never_reads_another_apps_store_of_the_same_name() {
    let data = tempfile::tempdir().unwrap();
    let (one, two) = (default_app("one"), default_app("two"));
    let server = TestServer::try_start_with(&[one.clone(), two.clone()], None, Some(data.path()))
        .await
        .unwrap();
    let mut first = client(&server, "one").await;
    let mut second = client(&server, "two").await;
    assert_eq!(ask(&mut first, "set default secret 1").await, "ok");
    assert_eq!(ask(&mut second, "get default secret").await, "none");
    assert_eq!(ask(&mut second, "set default secret 2").await, "ok");
    assert_eq!(ask(&mut first, "get default secret").await, "value 1");
    assert_eq!(ask(&mut second, "get default secret").await, "value 2");
    for app in [&one, &two] {
        let database = data.path().join(format!("{}.sqlite3", app.name()));
        assert!(
            database.is_file(),
            "{} is the app's own",
            database.display()
        );
    }
}

#[tokio::test]
async fn a_store_not_granted_or_not_declared_is_an_error_value() {
    let app = kv_app("grant", &["default", "private"], &["default"], Table::new());
    let server = TestServer::start(&app).await;
    let mut client = client(&server, "grant").await;
    let denied = ask(&mut client, "open private").await;
    assert_eq!(
        denied,
        "error key-value store `private` is not granted to this flow: \
         add it to the flow's `key_value_stores` in the manifest"
    );
    let missing = ask(&mut client, "get nope k").await;
    assert!(
        missing.starts_with("error the app has no key-value store `nope`"),
        "{missing}"
    );
    // No trap: the same connection goes on.
    assert_eq!(ask(&mut client, "set default k v").await, "ok");
    server
        .wait_for_app_log(
            "grant",
            "key-value store `private` refused: the flow is not granted",
        )
        .await;
    let stats = server.app_stats("grant");
    assert_eq!(stats.kv_denied, 2, "{stats:?}");
    assert_eq!(stats.executions_trapped, 0, "{stats:?}");
}

#[tokio::test]
async fn every_quota_over_is_an_error_value_and_counted() {
    let limits = toml! {
        max_kv_key_size = 16
        max_kv_value_size = 64
        max_kv_bytes = 150
        max_kv_keys = 3
    };
    let server = TestServer::start(&kv_app("quota", &["default"], &["default"], limits)).await;
    let mut client = client(&server, "quota").await;
    let key = ask(&mut client, "set default #17 v").await;
    assert!(
        key.contains("a key of 17 bytes is over the app's max_kv_key_size of 16"),
        "{key}"
    );
    let value = ask(&mut client, "set default k #65").await;
    assert!(
        value.contains("a value of 65 bytes is over the app's max_kv_value_size of 64"),
        "{value}"
    );
    for key in ["a", "b", "c"] {
        assert_eq!(
            ask(&mut client, &format!("set default {key} v")).await,
            "ok"
        );
    }
    let keys = ask(&mut client, "set default d v").await;
    assert!(keys.contains("4 keys, over its max_kv_keys of 3"), "{keys}");
    // Each entry is 2 bytes; growing them takes the app to 69, 132, then 195.
    assert_eq!(ask(&mut client, "set default a #64").await, "ok");
    assert_eq!(ask(&mut client, "set default b #64").await, "ok");
    let bytes = ask(&mut client, "set default c #64").await;
    assert!(
        bytes.contains("would hold 195 bytes, over its max_kv_bytes of 150"),
        "{bytes}"
    );
    // Nothing over a quota was written; the rest still works.
    assert_eq!(ask(&mut client, "get default c").await, "value v");
    assert_eq!(ask(&mut client, "get default d").await, "none");
    let stats = server.app_stats("quota");
    assert_eq!(stats.kv_quota_exceeded, 4, "{stats:?}");
    assert_eq!((stats.kv_keys, stats.kv_bytes), (3, 132), "{stats:?}");
    assert_eq!(stats.executions_trapped, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_app_stays_within_its_quotas_and_does_not_stall_another_apps_store() {
    let limits = toml! {
        max_kv_value_size = "64KiB"
        max_kv_bytes = "1MiB"
        max_kv_keys = 100
    };
    let hog = kv_app("hog", &["default"], &["default"], limits);
    let calm = default_app("calm");
    let server = TestServer::start_apps(&[hog, calm]).await;
    let mut calm = client(&server, "calm").await;
    let calm_round = async |calm: &mut Client, round: usize| {
        let started = Instant::now();
        let command = format!("set default k{} v{round}", round % 10);
        assert_eq!(ask(calm, &command).await, "ok");
        let read = ask(calm, &format!("get default k{}", round % 10)).await;
        assert_eq!(read, format!("value v{round}"));
        started.elapsed()
    };
    let mut before = Duration::ZERO;
    for round in 0..10 {
        before = before.max(calm_round(&mut calm, round).await);
    }

    let mut hogs = Vec::new();
    for h in 0..3 {
        let mut hog = client(&server, "hog").await;
        hogs.push(tokio::spawn(async move {
            // Largest values, more keys than allowed, again and again:
            // overwrites of its own keys keep writing once the quota holds.
            for _ in 0..20 {
                let answer = ask(&mut hog, &format!("fill default h{h}- 60 #65536")).await;
                assert!(answer.starts_with("filled"), "{answer}");
            }
        }));
    }
    let mut during = Duration::ZERO;
    let mut round = 10;
    while !hogs.iter().all(|hog| hog.is_finished()) {
        during = during.max(calm_round(&mut calm, round).await);
        round += 1;
    }
    for hog in hogs {
        hog.await.unwrap();
    }
    let stats = server.app_stats("hog");
    assert!(stats.kv_bytes <= 1 << 20, "{stats:?}");
    assert!(stats.kv_keys <= 100, "{stats:?}");
    assert!(
        stats.kv_quota_exceeded > 0,
        "the hog met its quota: {stats:?}"
    );
    eprintln!(
        "calm app's slowest set+get: {before:?} alone, {during:?} beside the hog \
         ({} rounds; hog wrote {} entries)",
        round - 10,
        stats.kv_operations_ok
    );
}

/// A `wsflow up` process serving `manifest` with `--data-dir`; killed
/// (SIGKILL) when dropped.
struct HostProcess {
    child: tokio::process::Child,
    url: String,
    admin: String,
}

impl HostProcess {
    async fn start(manifest: &Path, data_dir: &Path) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsflow-host"))
            .arg("up")
            .arg(manifest)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--cache-dir")
            .arg(component_cache())
            .args(["--admin", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting wsflow-host");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next_line = async || {
            // Compiling the flow on a cold cache takes a while.
            tokio::time::timeout(TIMEOUT * 20, lines.next_line())
                .await
                .expect("wsflow printed no line in time")
                .unwrap()
                .expect("wsflow ended before it was ready")
        };
        let line = next_line().await;
        let url = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("not the ready line: {line}"))
            .to_owned();
        let line = next_line().await;
        let admin = line
            .strip_prefix("stats on http://")
            .and_then(|rest| rest.strip_suffix("/stats"))
            .unwrap_or_else(|| panic!("not the admin line: {line}"))
            .to_owned();
        // Read the rest, so the host never writes to a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, url, admin }
    }

    /// `GET /metrics` of the host's admin endpoint.
    async fn metrics(&self) -> String {
        let mut stream = tokio::net::TcpStream::connect(&self.admin).await.unwrap();
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.admin
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_acknowledged_to_a_client_survives_kill_9_of_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let app = default_app("durable");
    let manifest = dir.path().join("wsflow.toml");
    std::fs::write(&manifest, app.to_toml()).unwrap();

    let mut host = HostProcess::start(&manifest, &data).await;
    let mut client = connect(&host.url).await;
    assert_eq!(ask(&mut client, "incr default n 7").await, "ok 7");
    for i in 0..20 {
        assert_eq!(
            ask(&mut client, &format!("set default k{i} v{i}")).await,
            "ok"
        );
    }
    // SIGKILL as soon as the last write is acknowledged: no shutdown, no
    // flush, no checkpoint.
    host.child.kill().await.unwrap();
    drop(client);

    let host = HostProcess::start(&manifest, &data).await;
    let mut client = connect(&host.url).await;
    for i in 0..20 {
        let answer = ask(&mut client, &format!("get default k{i}")).await;
        assert_eq!(answer, format!("value v{i}"));
    }
    assert_eq!(ask(&mut client, "incr default n 1").await, "ok 8");
    let metrics = host.metrics().await;
    let name = app.name();
    for sample in [
        format!("wsflow_kv_operations_total{{app=\"{name}\",outcome=\"ok\"}} 21"),
        format!("wsflow_kv_operation_duration_seconds_count{{app=\"{name}\"}} 21"),
        format!("wsflow_kv_keys{{app=\"{name}\"}} 21"),
    ] {
        assert!(metrics.contains(&sample), "{sample} in:\n{metrics}");
    }
}

/// Start `wsflow up --cluster URL` serving `manifest`, as a process.
async fn cluster_host_process(
    manifest: &Path,
    nats: &NatsServer,
) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsflow-host"))
        .arg("up")
        .arg(manifest)
        .arg("--cluster")
        .arg(nats.url())
        .arg("--cache-dir")
        .arg(component_cache())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting wsflow-host");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(TIMEOUT * 20, lines.next_line())
        .await
        .expect("wsflow printed no line in time")
        .unwrap()
        .expect("wsflow ended before it was ready");
    let url = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("not the ready line: {line}"))
        .to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_of_a_cluster_share_key_value_state_in_jetstream() {
    let Some(nats) = NatsServer::start_jetstream().await else {
        return;
    };
    let app = default_app("shared");
    let other = default_app("other");
    let a = TestServer::try_start_in(
        &[app.clone(), other.clone()],
        Some(ClusterOptions {
            servers: vec![nats.url()],
            ..ClusterOptions::default()
        }),
    )
    .await
    .unwrap();
    let b = TestServer::start_in_cluster(&app, &nats.url()).await;
    let mut on_a = client(&a, "shared").await;
    let mut on_b = client(&b, "shared").await;
    assert_eq!(ask(&mut on_a, "set default topic rust").await, "ok");
    assert_eq!(ask(&mut on_b, "get default topic").await, "value rust");
    assert_eq!(ask(&mut on_b, "set default topic wasm").await, "ok");
    assert_eq!(ask(&mut on_a, "get default topic").await, "value wasm");
    // The same store name in another app is another bucket.
    let mut stranger = client(&a, "other").await;
    assert_eq!(ask(&mut stranger, "get default topic").await, "none");

    // Compare-and-swap and increments by revision, across the hosts.
    assert_eq!(ask(&mut on_a, "cas default owner - ann").await, "swapped");
    assert_eq!(ask(&mut on_b, "cas default owner - bob").await, "conflict");
    assert_eq!(ask(&mut on_b, "cas default owner ann bob").await, "swapped");
    assert_eq!(ask(&mut on_a, "get default owner").await, "value bob");
    const EACH: usize = 10;
    let mut tasks = Vec::new();
    for server in [&a, &b, &a, &b] {
        let mut client = client(server, "shared").await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..EACH {
                send_text(&mut client, "incr default n 1").await;
            }
            let mut seen = Vec::new();
            for _ in 0..EACH {
                let answer = next_text(&mut client).await;
                let n: u64 = answer
                    .strip_prefix("ok ")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("not a count: {answer}"));
                seen.push(n);
            }
            seen
        }));
    }
    let mut seen = Vec::new();
    for task in tasks {
        seen.extend(task.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=(4 * EACH) as u64).collect::<Vec<_>>());
    assert_eq!(
        ask(&mut on_b, "get default n").await,
        format!("value {}", 4 * EACH)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_a_write_acknowledged_survives_kill_9_of_its_host() {
    let Some(nats) = NatsServer::start_jetstream().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let app = default_app("lost-host");
    let manifest = dir.path().join("wsflow.toml");
    std::fs::write(&manifest, app.to_toml()).unwrap();
    let (mut doomed, url) = cluster_host_process(&manifest, &nats).await;
    let mut client = connect(&url).await;
    for i in 0..10 {
        assert_eq!(
            ask(&mut client, &format!("set default k{i} v{i}")).await,
            "ok"
        );
    }
    doomed.kill().await.unwrap();
    drop(client);

    let survivor = TestServer::start_in_cluster(&app, &nats.url()).await;
    let mut client = self::client(&survivor, "lost-host").await;
    for i in 0..10 {
        let answer = ask(&mut client, &format!("get default k{i}")).await;
        assert_eq!(answer, format!("value v{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_quotas_are_error_values_and_counted() {
    let Some(nats) = NatsServer::start_jetstream().await else {
        return;
    };
    let limits = toml! {
        max_kv_value_size = 64
        max_kv_bytes = 4096
    };
    let app = kv_app("full", &["default"], &["default"], limits);
    let server = TestServer::start_in_cluster(&app, &nats.url()).await;
    let mut client = client(&server, "full").await;
    let value = ask(&mut client, "set default k #65").await;
    assert!(
        value.contains("over the app's max_kv_value_size of 64"),
        "{value}"
    );
    let filled = ask(&mut client, "fill default f 1000 #64").await;
    assert!(
        filled.contains("error key-value store `default`: quota: the store is full"),
        "{filled}"
    );
    assert_eq!(
        ask(&mut client, "get default f0").await,
        format!("value {}", "v".repeat(64))
    );
    let stats = server.app_stats("full");
    assert_eq!(stats.kv_quota_exceeded, 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_without_jetstream_stores_are_unavailable_and_nothing_traps() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let server = TestServer::start_in_cluster(&default_app("no-js"), &nats.url()).await;
    let mut client = client(&server, "no-js").await;
    let answer = ask(&mut client, "set default k v").await;
    assert!(
        answer.starts_with("error key-value store `default`: the key-value store is unavailable"),
        "{answer}"
    );
    assert_eq!(ask(&mut client, "open default").await, "ok");
    let stats = server.app_stats("no-js");
    assert_eq!(stats.kv_operations_failed, 1, "{stats:?}");
    assert_eq!(stats.executions_trapped, 0, "{stats:?}");
}

#[tokio::test]
async fn a_reload_that_changes_the_declared_stores_waits_for_a_restart() {
    let app = default_app("redeclare");
    let server = TestServer::start(&app).await;
    let mut client = client(&server, "redeclare").await;
    assert_eq!(ask(&mut client, "set default k v").await, "ok");
    let more = kv_app(
        "redeclare",
        &["default", "extra"],
        &["default", "extra"],
        Table::new(),
    );
    let report = server.reload_with(0, &more).await.unwrap();
    assert!(report.reloaded.is_empty(), "{report:?}");
    assert!(
        report.needs_restart[0].contains("its `[key_value.stores]` changed"),
        "{report:?}"
    );
    // The running version, and its grants, stay as they were.
    let missing = ask(&mut client, "open extra").await;
    assert!(
        missing.starts_with("error the app has no key-value store `extra`"),
        "{missing}"
    );
    assert_eq!(ask(&mut client, "get default k").await, "value v");
}
