//! Sandboxed multi-tenancy: hostile flows in one app, a well-behaved echo
//! app next to them. Each hostile program is stopped by the limit meant for
//! it, only its own connection is closed, and the echo app keeps answering
//! while the hostile one runs and after it is stopped.

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use toml::{Table, toml};
use wsflow_tests::{
    Client, Manifest, Refused, TIMEOUT, TestServer, Trigger, connect, local_addr, merged,
    next_close, next_json, next_message, next_text, programs, request, send_text, table,
    try_connect,
};

/// App `name` serving `component` at `path` in `mode`, with `limits`.
fn app_manifest(name: &str, component: &str, path: &str, mode: &str, limits: Table) -> Manifest {
    let handler = table([("path", path.into()), ("mode", mode.into())]);
    Manifest::one_flow(name, component, handler).limits(limits)
}

fn victim() -> Manifest {
    app_manifest(
        "victim",
        programs::EXAMPLE_ECHO,
        "/echo",
        "data",
        Table::new(),
    )
}

/// Start the echo app next to `hostile` and connect a client to the echo.
async fn with_victim(hostile: Manifest) -> (TestServer, Client) {
    let server = TestServer::start_apps(&[victim(), hostile]).await;
    let mut victim = connect(&server.app_url("victim", "/echo")).await;
    assert_victim_answers(&mut victim, "before").await;
    (server, victim)
}

async fn assert_victim_answers(victim: &mut Client, tag: &str) {
    for i in 0..5 {
        let text = format!("{tag} {i}");
        send_text(victim, &text).await;
        assert_eq!(next_text(victim).await, text);
    }
}

/// Keep checking the echo app, round after round, until `done` finishes.
async fn victim_answers_while<F: Future>(victim: &mut Client, done: F) -> F::Output {
    tokio::pin!(done);
    loop {
        let round = assert_victim_answers(victim, "during");
        tokio::pin!(round);
        tokio::select! {
            output = &mut done => {
                // Finish the round in flight so no echo is left unread.
                round.await;
                return output;
            }
            () = &mut round => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_is_stopped_by_the_cpu_limit() {
    let hostile = app_manifest(
        "hostile-an-endless-loop",
        programs::SPIN,
        "/spin",
        "data",
        toml! { cpu_time = "500ms" },
    );
    let (server, mut victim) = with_victim(hostile).await;
    let mut spinner = connect(&server.app_url("hostile-an-endless-loop", "/spin")).await;
    let started = Instant::now();
    send_text(&mut spinner, "go").await;
    let close = victim_answers_while(&mut victim, next_close(&mut spinner)).await;
    let stopped_after = started.elapsed();
    eprintln!("runaway loop stopped {stopped_after:?} after its message was sent (cpu_time 500ms)");
    assert_eq!(u16::from(close.code), 1011);
    assert!(
        stopped_after >= Duration::from_millis(500),
        "{stopped_after:?}"
    );
    let line = server
        .wait_for_app_log(
            "hostile-an-endless-loop",
            "execution stopped: CPU time limit",
        )
        .await;
    assert!(
        line.contains(&format!(
            "app=\"{}\"",
            server.app_name("hostile-an-endless-loop")
        )),
        "{line}"
    );
    assert_eq!(
        server
            .app_stats("hostile-an-endless-loop")
            .executions_limit_exceeded,
        1
    );
    assert_eq!(server.app_stats("victim").executions_limit_exceeded, 0);
    assert_victim_answers(&mut victim, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_stopped_by_the_memory_limit() {
    let hostile = app_manifest(
        "hostile-a-memory-bomb",
        programs::BOMB,
        "/bomb",
        "data",
        toml! { max_memory = "16MiB" },
    );
    let (server, mut victim) = with_victim(hostile).await;
    let mut bomber = connect(&server.app_url("hostile-a-memory-bomb", "/bomb")).await;
    send_text(&mut bomber, "go").await;
    let close = victim_answers_while(&mut victim, next_close(&mut bomber)).await;
    assert_eq!(u16::from(close.code), 1011);
    let line = server
        .wait_for_app_log("hostile-a-memory-bomb", "execution stopped: memory limit")
        .await;
    assert!(line.contains("over the limit of 16777216"), "{line}");
    assert_eq!(
        server
            .app_stats("hostile-a-memory-bomb")
            .executions_limit_exceeded,
        1
    );
    assert_victim_answers(&mut victim, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_recursion_traps_on_the_stack_limit() {
    let hostile = app_manifest(
        "hostile-unbounded-recursion-traps",
        programs::RECURSE,
        "/deep",
        "data",
        Table::new(),
    );
    let (server, mut victim) = with_victim(hostile).await;
    let mut diver = connect(&server.app_url("hostile-unbounded-recursion-traps", "/deep")).await;
    send_text(&mut diver, "go").await;
    let close = victim_answers_while(&mut victim, next_close(&mut diver)).await;
    assert_eq!(u16::from(close.code), 1011);
    // Rust keeps large frames on a shadow stack in linear memory, which runs
    // out first (an out-of-bounds access); small frames exhaust the wasm
    // call stack. Either way the guest traps.
    let line = server
        .wait_for_app_log(
            "hostile-unbounded-recursion-traps",
            "flow trapped: wasm trap:",
        )
        .await;
    assert!(
        line.contains("call stack exhausted") || line.contains("out of bounds memory access"),
        "{line}"
    );
    assert_eq!(
        server
            .app_stats("hostile-unbounded-recursion-traps")
            .executions_trapped,
        1
    );
    assert_victim_answers(&mut victim, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_flood_to_a_client_that_never_reads_is_cut_off() {
    let hostile = app_manifest(
        "hostile-a-send-flood",
        programs::FLOOD,
        "/flood",
        "connection",
        toml! { slow_client_timeout = "1s" },
    );
    let (server, mut victim) = with_victim(hostile).await;
    let mut sink = connect(&server.app_url("hostile-a-send-flood", "/flood")).await;
    send_text(&mut sink, "100000 65536").await;
    // The client never reads; the flow fills the queue and waits in send.
    // Whichever notices first cuts it off: the send that waited
    // `slow_client_timeout` (the execution stops, limit exceeded), or the
    // connection whose bytes went unacknowledged that long (dropped; the
    // flow's send then returns `closed`).
    let app = server.app_name("hostile-a-send-flood").to_owned();
    let cut_off = async {
        loop {
            let lines = server.app_log_lines("hostile-a-send-flood");
            if let Some(line) = lines.into_iter().find(|line| {
                line.contains("execution stopped: slow client")
                    || line.contains("client does not read")
            }) {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let line = victim_answers_while(&mut victim, async {
        tokio::time::timeout(TIMEOUT, cut_off)
            .await
            .expect("the flood is cut off")
    })
    .await;
    assert!(line.contains(&format!("app=\"{app}\"")), "{line}");
    let stats = server.app_stats("hostile-a-send-flood");
    if line.contains("execution stopped") {
        assert_eq!(stats.executions_limit_exceeded, 1, "{stats:?}");
    }
    // The connection was dropped: reading drains what was buffered, then ends.
    let drained = tokio::time::timeout(TIMEOUT, async {
        use futures_util::StreamExt;
        let mut messages = 0u64;
        while let Some(Ok(_)) = sink.next().await {
            messages += 1;
        }
        messages
    })
    .await
    .expect("the connection ends");
    assert!(
        drained < 100_000,
        "only what was buffered arrives: {drained}"
    );
    assert_victim_answers(&mut victim, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_flood_is_rate_limited() {
    // 6,000 lines, twelve times the burst: enough to show the budget,
    // few enough to be pushed through a debug build of the host well
    // within the client's wait on a busy machine. All of it is charged to
    // the flow: lift CPU and wall-clock time, so the flow runs to its end
    // on any machine and only the budget is under test.
    let hostile = app_manifest(
        "hostile-an-output-flood",
        programs::CHATTER,
        "/chatter",
        "data",
        toml! {
            log_lines_per_second = 50
            cpu_time = "1h"
            wall_time = "1h"
        },
    );
    let (server, mut victim) = with_victim(hostile).await;
    let mut chatter = connect(&server.app_url("hostile-an-output-flood", "/chatter")).await;
    let started = Instant::now();
    send_text(&mut chatter, "2000").await;
    let reply = victim_answers_while(&mut victim, next_text(&mut chatter)).await;
    assert_eq!(reply, "done");
    let seconds = started.elapsed().as_secs() + 1;
    let logged = server
        .app_log_lines("hostile-an-output-flood")
        .iter()
        // The guest's own lines, not the host's about them: every line of
        // the connection carries `path=/chatter`.
        .filter(|line| {
            [
                "chatter stdout line ",
                "chatter stderr line ",
                "chatter log line ",
            ]
            .iter()
            .any(|guest| line.contains(guest))
        })
        .count();
    // A burst of 500 lines plus 50 a second of refill, while it ran.
    let allowed = 500 + 50 * seconds as usize;
    assert!(
        logged <= allowed,
        "{logged} of 6000 lines reached the log in {seconds} s (allowed {allowed})"
    );
    let dropped = server
        .app_stats("hostile-an-output-flood")
        .log_lines_dropped;
    assert!(
        dropped >= 6_000u64.saturating_sub(allowed as u64),
        "{dropped} lines dropped"
    );
    assert_victim_answers(&mut victim, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flow_that_never_returns_is_stopped_once_it_spins() {
    let hostile = app_manifest(
        "hostile-a-connection-flow",
        programs::STUCK,
        "/stuck",
        "connection",
        toml! { cpu_time = "300ms" },
    );
    let (server, mut victim) = with_victim(hostile).await;
    let mut client = connect(&server.app_url("hostile-a-connection-flow", "/stuck")).await;
    assert_eq!(next_text(&mut client).await, "ready");
    // Waiting in receive is not charged: well past the CPU limit, it runs.
    // Nothing happening is the point, so only waiting can show it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        server
            .app_stats("hostile-a-connection-flow")
            .executions_limit_exceeded,
        0
    );
    send_text(&mut client, "still there").await;
    // Once the client is gone, `receive` returns at once and the flow spins.
    client.close(None).await.unwrap();
    drop(client);
    victim_answers_while(
        &mut victim,
        server.wait_for_app_log(
            "hostile-a-connection-flow",
            "execution stopped: CPU time limit",
        ),
    )
    .await;
    assert_eq!(
        server
            .app_stats("hostile-a-connection-flow")
            .executions_limit_exceeded,
        1
    );
    assert_victim_answers(&mut victim, "after").await;
}

/// Start a connection-mode `poll` flow of app `app` doing `what`
/// (`receive` or `send`) next to the echo app, and expect the CPU limit to
/// stop it although it never waits for its client.
async fn assert_polling_is_charged(app: &str, what: &str) {
    let hostile = app_manifest(
        app,
        programs::POLL,
        "/poll",
        "connection",
        toml! { cpu_time = "300ms" },
    );
    let (server, mut victim) = with_victim(hostile).await;
    let mut poller = connect(&server.app_url(app, "/poll")).await;
    assert_eq!(next_text(&mut poller).await, "ready");
    send_text(&mut poller, what).await;
    // Reads every `tick` a sending flow sends, until the close. Work the
    // host does in a host call is the flow's CPU time: it must stop.
    let stopped = tokio::time::timeout(TIMEOUT, next_close(&mut poller));
    let close = victim_answers_while(&mut victim, stopped)
        .await
        .expect("the flow was not stopped by its CPU limit");
    assert_eq!(u16::from(close.code), 1011);
    server
        .wait_for_app_log(app, "execution stopped: CPU time limit")
        .await;
    assert_eq!(server.app_stats(app).executions_limit_exceeded, 1);
    assert_victim_answers(&mut victim, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_polling_receive_without_waiting_is_stopped_by_the_cpu_limit() {
    assert_polling_is_charged("hostile-polling-receive", "receive").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_sending_without_end_to_a_reading_client_is_stopped_by_the_cpu_limit() {
    assert_polling_is_charged("hostile-sending-without-end", "send").await;
}

/// Wait until app `app` has logged `count` lines containing `needle`.
async fn wait_for_app_log_count(server: &TestServer, app: &str, needle: &str, count: usize) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let seen = server
            .app_log_lines(app)
            .iter()
            .filter(|line| line.contains(needle))
            .count();
        if seen >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{seen} of {count} lines containing {needle:?} from app {app}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_spent_behind_another_apps_executions_is_not_charged_as_cpu_time() {
    // The busy flow needs a few tens of milliseconds of CPU, far below its
    // limit on any machine; next to 96 spinning executions of another app,
    // it waits far longer than its limit for its turns. Only the time it
    // runs counts.
    const SPINNERS: usize = 96;
    let hostile = app_manifest(
        "hostile-spinning-executions",
        programs::SPIN,
        "/spin",
        "data",
        toml! {
            cpu_time = "1h"
            wall_time = "1h"
        },
    );
    let honest = app_manifest(
        "honest-busy",
        programs::BUSY,
        "/busy",
        "data",
        toml! { cpu_time = "1s" },
    );
    let server = TestServer::start_apps(&[honest, hostile]).await;
    let spin_url = server.app_url("hostile-spinning-executions", "/spin");
    let mut spinners = Vec::new();
    for _ in 0..SPINNERS {
        let mut spinner = connect(&spin_url).await;
        send_text(&mut spinner, "go").await;
        spinners.push(spinner);
    }
    wait_for_app_log_count(&server, "hostile-spinning-executions", "spinning", SPINNERS).await;
    let mut busy = connect(&server.app_url("honest-busy", "/busy")).await;
    let started = Instant::now();
    send_text(&mut busy, "10").await;
    assert_eq!(next_text(&mut busy).await, "done 10");
    eprintln!(
        "busy flow answered {:?} after its message, next to {SPINNERS} spinning executions",
        started.elapsed()
    );
    assert_eq!(server.app_stats("honest-busy").executions_limit_exceeded, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_in_the_middle_of_sending_closes_after_what_was_sent() {
    let hostile = app_manifest(
        "hostile-a-trap-in",
        programs::FLAKY,
        "/flaky",
        "data",
        Table::new(),
    );
    let (server, mut victim) = with_victim(hostile).await;
    let mut client = connect(&server.app_url("hostile-a-trap-in", "/flaky")).await;
    send_text(&mut client, "send-then-panic").await;
    assert_eq!(next_text(&mut client).await, "partial 1");
    assert_eq!(next_text(&mut client).await, "partial 2");
    assert_eq!(u16::from(next_close(&mut client).await.code), 1011);
    server
        .wait_for_app_log(
            "hostile-a-trap-in",
            "asked to panic in the middle of sending",
        )
        .await;
    assert_victim_answers(&mut victim, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_connection_handles_reach_nothing() {
    let hostile = app_manifest(
        "hostile-forged-connection-handles",
        programs::FORGE,
        "/forge",
        "data",
        Table::new(),
    );
    let (server, mut victim) = with_victim(hostile).await;
    // Another connection of the same app, which a forged handle might hit.
    let mut neighbour =
        connect(&server.app_url("hostile-forged-connection-handles", "/forge")).await;
    let mut forger = connect(&server.app_url("hostile-forged-connection-handles", "/forge")).await;
    send_text(&mut forger, "go").await;
    assert_eq!(u16::from(next_close(&mut forger).await.code), 1011);
    let line = server
        .wait_for_app_log("hostile-forged-connection-handles", "flow trapped")
        .await;
    assert!(
        line.contains(&format!(
            "app=\"{}\"",
            server.app_name("hostile-forged-connection-handles")
        )),
        "{line}"
    );
    assert_victim_answers(&mut victim, "after").await;
    // Nothing arrived at the neighbour: the next thing it sees is its own
    // close at shutdown.
    server.begin_shutdown();
    assert_eq!(
        next_message(&mut neighbour).await,
        Message::Close(next_close_frame(1001))
    );
}

fn next_close_frame(code: u16) -> Option<tokio_tungstenite::tungstenite::protocol::CloseFrame> {
    Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: code.into(),
        reason: "server shutting down".into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_connection_limit_is_refused_while_others_are_served() {
    let hostile = app_manifest(
        "hostile-a-tenant-at",
        programs::EXAMPLE_ECHO,
        "/echo",
        "data",
        toml! { max_connections = 3 },
    );
    let (server, mut victim) = with_victim(hostile).await;
    let url = server.app_url("hostile-a-tenant-at", "/echo");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&url).await);
    }
    let refused = try_connect(request(&url, &[]))
        .await
        .expect_err("a fourth is refused");
    assert_eq!(
        refused,
        Refused {
            status: 503,
            body: "the app is at its limit of 3 connections; try again later".into()
        }
    );
    assert_eq!(
        server.app_stats("hostile-a-tenant-at").connections_refused,
        1
    );
    let mut newcomer = connect(&server.app_url("victim", "/echo")).await;
    assert_victim_answers(&mut newcomer, "new").await;
    assert_victim_answers(&mut victim, "after").await;
    assert_eq!(server.app_stats("victim").connections_open, 2);
}

/// App `probe` whose flow is granted `grants` (`env`, `read_only_dir`).
fn probe_manifest(grants: Table) -> Manifest {
    Manifest::app("probe")
        .flow_with("main", programs::PROBE, grants)
        .trigger(Trigger::on_port(0).handler(toml! { path = "/probe" mode = "data" flow = "main" }))
        .limits(Table::new())
}

/// A listener on loopback for the probe to try; it must accept nothing.
struct Bait(std::net::TcpListener);

impl Bait {
    fn new() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Self(listener)
    }

    fn addr(&self) -> String {
        self.0.local_addr().unwrap().to_string()
    }

    /// Called after the probe has replied: a connection it made would be
    /// waiting in the backlog by then.
    fn assert_untouched(&self) {
        match self.0.accept() {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => panic!("accept failed: {error}"),
            Ok((_, peer)) => panic!("the flow connected to the host from {peer}"),
        }
    }
}

/// What the guest's standard library reports for a socket WASI denies.
const NETWORK_DENIED: &str = "permission denied";

#[tokio::test]
async fn flows_see_no_files_network_or_host_environment() {
    let server = TestServer::start(&probe_manifest(Table::new())).await;
    let bait = Bait::new();
    let mut client = connect(&server.url("/probe")).await;
    send_text(&mut client, &bait.addr()).await;
    let seen = next_json(&mut client).await;
    assert_eq!(seen["env"], json!({}));
    assert!(seen["etc_hostname"]["error"].is_string(), "{seen}");
    assert!(seen["granted"]["error"].is_string(), "{seen}");
    assert_eq!(seen["network"], NETWORK_DENIED, "{seen}");
    bait.assert_untouched();
}

#[tokio::test]
async fn flows_see_exactly_what_the_manifest_grants() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello from the host").unwrap();
    let grants = merged(
        toml! { env = { GREETING = "hi" } },
        table([("read_only_dir", dir.path().display().to_string().into())]),
    );
    let server = TestServer::start(&probe_manifest(grants)).await;
    let bait = Bait::new();
    let mut client = connect(&server.url("/probe")).await;
    send_text(&mut client, &bait.addr()).await;
    let seen = next_json(&mut client).await;
    assert_eq!(seen["env"], json!({ "GREETING": "hi" }));
    assert_eq!(seen["granted"], json!({ "ok": "hello from the host" }));
    assert!(seen["escape"]["error"].is_string(), "{seen}");
    assert!(seen["etc_hostname"]["error"].is_string(), "{seen}");
    assert_eq!(seen["network"], NETWORK_DENIED, "{seen}");
    bait.assert_untouched();
}

#[tokio::test]
async fn apps_may_not_share_a_port_or_a_name() {
    let on_port_9911 = |name: &str, path: &str| {
        let handler = table([
            ("path", path.into()),
            ("mode", "data".into()),
            ("flow", "main".into()),
        ]);
        Manifest::app(name)
            .limits(Table::new())
            .flow("main", programs::EXAMPLE_ECHO)
            .trigger(Trigger::on_port(9911).handler(handler))
    };
    let first = on_port_9911("first", "/a");
    let second = on_port_9911("second", "/b");
    let error = TestServer::try_start_apps(&[first.clone(), second.clone()])
        .await
        .err()
        .unwrap();
    let message = format!("{error:#}");
    assert!(
        message.contains(&format!(
            "app `{}` triggers[0] wants port 9911, which app `{}`",
            second.name(),
            first.name()
        )),
        "{message}"
    );
    assert!(message.contains("app0.toml"), "{message}");
    assert!(message.contains("app1.toml"), "{message}");

    let twin = app_manifest("first", programs::EXAMPLE_ECHO, "/c", "data", Table::new())
        .named_like(&first);
    let error = TestServer::try_start_apps(&[victim(), twin, first.clone()])
        .await
        .err()
        .unwrap();
    let message = format!("{error:#}");
    assert!(
        message.contains(&format!("app `{}` is also defined by", first.name())),
        "{message}"
    );
}

#[tokio::test]
async fn apps_keep_their_own_properties() {
    let with_property = |name: &str, value: &str| {
        app_manifest(name, programs::PARAMS, "/p", "data", Table::new())
            .properties(table([("SECRET", value.into())]))
    };
    let server =
        TestServer::start_apps(&[with_property("one", "1"), with_property("two", "2")]).await;
    for (app, secret) in [("one", "1"), ("two", "2")] {
        let mut client = connect(&server.app_url(app, "/p")).await;
        send_text(&mut client, "?").await;
        assert_eq!(
            next_json(&mut client).await["properties"],
            json!({ "SECRET": secret })
        );
    }
    let _ = local_addr;
}

#[tokio::test]
async fn guest_text_cannot_forge_log_lines() {
    let app = "hostile-guest-text";
    let server = TestServer::start(&app_manifest(
        app,
        programs::SPOOF,
        "/spoof",
        "data",
        Table::new(),
    ))
    .await;
    let mut client = connect(&server.url("/spoof")).await;
    let tag = "spoofed-by-guest";
    send_text(&mut client, tag).await;
    let error = server.wait_for_app_log(app, "flow returned an error").await;
    assert!(
        error.contains(&format!(
            "failed\\n WARN wsflow::flow: {tag}-error app=\"other\""
        )),
        "{error}"
    );
    // Each piece of guest text is one line of its own record, which carries
    // its app: no line starts where the guest put a newline.
    let logged: Vec<String> = server
        .app_log_lines(app)
        .into_iter()
        .filter(|line| line.contains(tag))
        .collect();
    assert_eq!(logged.len(), 3, "{logged:#?}");
    for line in &logged {
        assert!(
            ["hello\\n", "out\\r", "failed\\n"]
                .iter()
                .any(|start| line.contains(start)),
            "{line}"
        );
    }
    let log = server.wait_for_app_log(app, &format!("{tag}-log")).await;
    assert!(
        log.contains(&format!("hello\\n INFO wsflow::flow: {tag}-log")),
        "{log}"
    );
    let stdout = server.wait_for_app_log(app, &format!("{tag}-stdout")).await;
    assert!(
        stdout.contains(&format!(
            "out\\r INFO wsflow::flow: {tag}-stdout app=\"other\"\\u{{1b}}[2K"
        )),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_flows_errors_count_against_its_log_budget() {
    let app = "hostile-error-flood";
    let server = TestServer::start(&app_manifest(
        app,
        programs::FLAKY,
        "/flaky",
        "data",
        toml! { log_lines_per_second = 1 },
    ))
    .await;
    let mut client = connect(&server.url("/flaky")).await;
    let started = Instant::now();
    let failures = 40;
    for _ in 0..failures {
        send_text(&mut client, "fail").await;
    }
    // Executions of a connection run in order: the echo comes after them.
    send_text(&mut client, "done").await;
    assert_eq!(next_text(&mut client).await, "done");
    let seconds = started.elapsed().as_secs() + 1;
    let logged = server
        .app_log_lines(app)
        .iter()
        .filter(|line| line.contains("flow returned an error"))
        .count();
    // A burst of 10 lines plus 1 a second of refill, while it ran.
    let allowed = 10 + seconds as usize;
    assert!(
        logged <= allowed,
        "{logged} of {failures} errors reached the log in {seconds} s (allowed {allowed})"
    );
    let dropped = server.app_stats(app).log_lines_dropped;
    assert!(dropped >= (failures - allowed) as u64, "{dropped} dropped");
}
