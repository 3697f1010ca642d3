//! `examples/chat` doing real work: the room's topic and message count in
//! the app's key-value store (on one host, across a restart, across two
//! hosts of a cluster), and messages checked by a moderation service (a
//! real HTTP server on 127.0.0.1 started by the test) before the room gets
//! them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use wsflow_tests::nats::NatsServer;
use wsflow_tests::{
    Client, Manifest, Refused, TestServer, connect, http_request, next_json, programs, request,
    send_text, try_connect,
};

use crate::examples::example_table;

/// The chat example's manifest with `properties` set.
fn chat(properties: &[(&str, &str)]) -> Manifest {
    let mut table = example_table("chat", "chat", programs::EXAMPLE_CHAT);
    let declared = table["properties"].as_table_mut().expect("[properties]");
    for (name, value) in properties {
        assert!(
            declared.contains_key(*name),
            "the example has no property {name}"
        );
        declared.insert((*name).to_owned(), (*value).into());
    }
    Manifest::from_table(table)
}

/// `name` in `room` on `server`, past the room's topic and recent lines
/// that a newcomer gets first.
async fn join(server: &TestServer, room: &str, name: &str) -> Client {
    join_seeing(server, room, name).await.0
}

/// `name` in `room` on `server`, and the first message it got (the
/// topic); past the room's recent lines, which end with its own `joined`.
async fn join_seeing(server: &TestServer, room: &str, name: &str) -> (Client, Value) {
    let (client, first, _recent) = join_reading(server, room, name).await;
    (client, first)
}

/// `name` in `room` on `server`: the client, the topic it got first, and
/// the room's recent lines it got next (up to and without its own
/// `joined`).
async fn join_reading(server: &TestServer, room: &str, name: &str) -> (Client, Value, Vec<Value>) {
    let url = format!(
        "{}?name={name}",
        server.app_url("chat", &format!("/chat/{room}"))
    );
    let mut client = connect(&url).await;
    let first = next_json(&mut client).await;
    assert_eq!(first["type"], "topic", "{name}'s first message: {first}");
    let mut recent = Vec::new();
    loop {
        let line = next_json(&mut client).await;
        assert!(
            line["pos"].is_string(),
            "a room line without its position: {line}"
        );
        if line["type"] == "joined" && line["name"] == name {
            return (client, first, recent);
        }
        recent.push(line);
    }
}

/// A room line's position `EPOCH:OFFSET`, as the epoch and the offset.
fn position(line: &Value) -> (String, u64) {
    let pos = line["pos"]
        .as_str()
        .unwrap_or_else(|| panic!("no position: {line}"));
    let (epoch, offset) = pos.split_once(':').expect("EPOCH:OFFSET");
    (epoch.to_owned(), offset.parse().expect("an offset"))
}

/// `line` without its position.
fn without_position(mut line: Value) -> Value {
    if let Some(fields) = line.as_object_mut() {
        fields.remove("pos");
    }
    line
}

/// The next message that is not someone joining or leaving, without its
/// position (the tests of positions read them with [`next_json`]).
async fn next_said(client: &mut Client) -> Value {
    loop {
        let message = next_json(client).await;
        if !matches!(message["type"].as_str(), Some("joined" | "left")) {
            return without_position(message);
        }
    }
}

/// Send `command`; the answer.
async fn ask(client: &mut Client, command: &str) -> Value {
    send_text(client, command).await;
    next_said(client).await
}

fn said(from: &str, text: &str) -> Value {
    json!({ "type": "message", "from": from, "text": text })
}

fn stats(messages: u64) -> Value {
    json!({ "type": "stats", "messages": messages })
}

fn topic(text: &str, by: &str) -> Value {
    json!({ "type": "topic", "text": text, "by": by })
}

fn no_topic() -> Value {
    json!({ "type": "topic", "text": null, "by": null })
}

/// An error answer; its text.
fn error_text(answer: &Value) -> &str {
    assert_eq!(answer["type"], "error", "{answer}");
    answer["text"].as_str().expect("an error text")
}

#[tokio::test]
async fn stats_count_the_messages_published_in_the_room() {
    let server = TestServer::start(&chat(&[])).await;
    let mut ann = join(&server, "lobby", "ann").await;
    let mut bob = join(&server, "lobby", "bob").await;
    assert_eq!(ask(&mut ann, "/stats").await, stats(0));
    for n in 1..=3 {
        send_text(&mut ann, &format!("hello {n}")).await;
        assert_eq!(
            next_said(&mut bob).await,
            said("ann", &format!("hello {n}"))
        );
    }
    // Commands and blank lines are not messages of the room.
    assert_eq!(ask(&mut ann, "/who").await["type"], "who");
    send_text(&mut ann, "   ").await;
    assert_eq!(ask(&mut ann, "/stats").await, stats(3));
    send_text(&mut bob, "hi ann").await;
    assert_eq!(next_said(&mut ann).await, said("bob", "hi ann"));
    // Asked by the sender, whose messages run in order: after its message
    // is counted (the room may hear it before it is).
    assert_eq!(ask(&mut bob, "/stats").await, stats(4));
    // Another room counts its own.
    let mut cid = join(&server, "kitchen", "cid").await;
    assert_eq!(ask(&mut cid, "/stats").await, stats(0));
}

#[tokio::test]
async fn a_topic_is_set_told_to_the_room_and_read_back() {
    let server = TestServer::start(&chat(&[])).await;
    let mut ann = join(&server, "lobby", "ann").await;
    let mut bob = join(&server, "lobby", "bob").await;
    assert_eq!(ask(&mut ann, "/topic").await, no_topic());
    send_text(&mut ann, "/topic  Rust on wasm ").await;
    // The whole room hears it, the setter too.
    assert_eq!(next_said(&mut ann).await, topic("Rust on wasm", "ann"));
    assert_eq!(next_said(&mut bob).await, topic("Rust on wasm", "ann"));
    // Someone who comes later reads it.
    let mut cid = join(&server, "lobby", "cid").await;
    assert_eq!(ask(&mut cid, "/topic").await, topic("Rust on wasm", "ann"));
    // A room has its own.
    let mut dan = join(&server, "kitchen", "dan").await;
    assert_eq!(ask(&mut dan, "/topic").await, no_topic());
    // Setting the topic is not a message of the room.
    assert_eq!(ask(&mut cid, "/stats").await, stats(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_gets_the_topic_first_while_the_room_talks() {
    let server = TestServer::start(&chat(&[])).await;
    let (mut ann, first) = join_seeing(&server, "lobby", "ann").await;
    assert_eq!(first, no_topic());
    let mut bob = join(&server, "lobby", "bob").await;
    send_text(&mut ann, "/topic read me first").await;
    assert_eq!(next_said(&mut ann).await, topic("read me first", "ann"));
    assert_eq!(next_said(&mut bob).await, topic("read me first", "ann"));

    // Bob talks without pause (each message once Ann has it, so no
    // queue fills) until every newcomer has come in.
    let done = Arc::new(AtomicBool::new(false));
    let talking = tokio::spawn({
        let done = Arc::clone(&done);
        async move {
            let mut n = 0;
            while !done.load(Ordering::SeqCst) {
                n += 1;
                send_text(&mut bob, &format!("live {n}")).await;
                assert_eq!(next_said(&mut ann).await, said("bob", &format!("live {n}")));
            }
            n
        }
    });
    const NEWCOMERS: usize = 10;
    for i in 0..NEWCOMERS {
        let (mut newcomer, first) = join_seeing(&server, "lobby", &format!("new{i}")).await;
        assert_eq!(first, topic("read me first", "ann"), "newcomer {i}");
        // The room was talking as it came in: live messages follow.
        assert_eq!(next_said(&mut newcomer).await["from"], "bob");
    }
    done.store(true, Ordering::SeqCst);
    let sent = talking.await.unwrap();
    assert!(
        sent >= NEWCOMERS,
        "Bob sent {sent} messages while the newcomers came in"
    );
}

#[tokio::test]
async fn topic_and_count_survive_a_host_restart() {
    let data = tempfile::tempdir().unwrap();
    let app = chat(&[]);
    let server = TestServer::start_with_data(&app, data.path()).await;
    let mut ann = join(&server, "lobby", "ann").await;
    send_text(&mut ann, "/topic kept on disk").await;
    assert_eq!(next_said(&mut ann).await, topic("kept on disk", "ann"));
    send_text(&mut ann, "one").await;
    send_text(&mut ann, "two").await;
    assert_eq!(ask(&mut ann, "/stats").await, stats(2));
    drop(ann);
    server.stop().await;

    let server = TestServer::start_with_data(&app, data.path()).await;
    let (mut bob, first) = join_seeing(&server, "lobby", "bob").await;
    assert_eq!(first, topic("kept on disk", "ann"));
    assert_eq!(ask(&mut bob, "/topic").await, topic("kept on disk", "ann"));
    assert_eq!(ask(&mut bob, "/stats").await, stats(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_and_count_are_shared_by_two_hosts_of_a_cluster() {
    let Some(nats) = NatsServer::start_jetstream().await else {
        return;
    };
    let app = chat(&[]);
    let a = TestServer::start_in_cluster(&app, &nats.url()).await;
    let b = TestServer::start_in_cluster(&app, &nats.url()).await;
    let mut ann = join(&a, "lobby", "ann").await;
    let mut bob = join(&b, "lobby", "bob").await;
    send_text(&mut ann, "/topic across hosts").await;
    assert_eq!(next_said(&mut ann).await, topic("across hosts", "ann"));
    assert_eq!(next_said(&mut bob).await, topic("across hosts", "ann"));
    for text in ["one", "two"] {
        send_text(&mut ann, text).await;
        assert_eq!(next_said(&mut bob).await, said("ann", text));
    }
    send_text(&mut bob, "three").await;
    assert_eq!(next_said(&mut ann).await, said("bob", "three"));
    // A newcomer on the other host gets the topic set on the first one,
    // first, and reads what was counted on both.
    // Each sender's question comes after its own messages are counted.
    ask(&mut ann, "/stats").await;
    assert_eq!(ask(&mut bob, "/stats").await, stats(3));
    let (mut cid, first) = join_seeing(&b, "lobby", "cid").await;
    assert_eq!(first, topic("across hosts", "ann"));
    assert_eq!(ask(&mut cid, "/stats").await, stats(3));
    let mut dan = join(&a, "lobby", "dan").await;
    assert_eq!(ask(&mut dan, "/stats").await, stats(3));
}

#[tokio::test]
async fn hostile_topics_and_a_flood_of_stats_are_answered_and_change_nothing() {
    let server = TestServer::start(&chat(&[])).await;
    let mut ann = join(&server, "lobby", "ann").await;
    let mut bob = join(&server, "lobby", "bob").await;
    // A topic of 1 MiB (the largest message a client may send).
    let huge = format!("/topic {}", "x".repeat((1 << 20) - "/topic ".len()));
    let answer = ask(&mut ann, &huge).await;
    assert!(error_text(&answer).contains("at most"), "{answer}");
    for hostile in [
        "/topic bell\u{7}",
        "/topic two\nlines",
        "/topic \u{1b}[2Jclear",
    ] {
        let answer = ask(&mut ann, hostile).await;
        assert!(error_text(&answer).contains("control"), "{answer}");
    }
    assert_eq!(ask(&mut bob, "/topic").await, no_topic());

    const FLOOD: usize = 3000;
    for _ in 0..FLOOD {
        send_text(&mut ann, "/stats").await;
    }
    for _ in 0..FLOOD {
        assert_eq!(next_said(&mut ann).await, stats(0));
    }
    // The room still works, and counts what it published.
    send_text(&mut bob, "still here").await;
    assert_eq!(next_said(&mut ann).await, said("bob", "still here"));
    assert_eq!(ask(&mut bob, "/stats").await, stats(1));
}

/// A moderation service on 127.0.0.1: `POST /check` with the message as
/// JSON; the message's text decides the answer.
///
/// | text contains | answer |
/// | --- | --- |
/// | `spam` | `{"allow": false}` |
/// | `garbage` | 200, `this is not JSON` |
/// | `shapeless` | 200, `{"allow": "yes"}` |
/// | `broken` | 500 |
/// | `slow` | none, ever (until the client gives up) |
/// | `hold` | `{"allow": true}` once [`Moderation::release`] is called (or none, if the client gives up first) |
/// | anything else | `{"allow": true}` |
struct Moderation {
    addr: SocketAddr,
    /// The bodies of the requests received, parsed.
    checked: Arc<Mutex<Vec<Value>>>,
    /// Requests waiting for an answer whose client has not given up:
    /// `hold` and `slow` ones.
    waiting: watch::Receiver<usize>,
    release: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Moderation {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Moderation {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let checked = Arc::new(Mutex::new(Vec::new()));
        let (waiting_tx, waiting) = watch::channel(0);
        let waiting_tx = Arc::new(waiting_tx);
        let (release, released) = watch::channel(false);
        let task = tokio::spawn({
            let checked = Arc::clone(&checked);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let checked = Arc::clone(&checked);
                    let waiting = Arc::clone(&waiting_tx);
                    let released = released.clone();
                    tokio::spawn(async move {
                        let _ = moderate(stream, &checked, &waiting, released).await;
                    });
                }
            }
        });
        Self {
            addr,
            checked,
            waiting,
            release,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/check", self.addr)
    }

    fn checked(&self) -> Vec<Value> {
        self.checked.lock().unwrap().clone()
    }

    /// Wait until `n` requests wait for an answer.
    async fn wait_for_waiting(&mut self, n: usize) {
        tokio::time::timeout(wsflow_tests::TIMEOUT, self.waiting.wait_for(|w| *w == n))
            .await
            .unwrap_or_else(|_| panic!("{n} moderation requests never waited at once"))
            .unwrap();
    }

    /// Answer every `hold` request, now and from now on.
    fn release(&self) {
        let _ = self.release.send(true);
    }
}

async fn moderate(
    mut stream: TcpStream,
    checked: &Mutex<Vec<Value>>,
    waiting: &watch::Sender<usize>,
    mut released: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0; 8192];
    let (head_end, length) = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&request[..at]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (at + 4, length);
        }
    };
    while request.len() < head_end + length {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let body: Value = serde_json::from_slice(&request[head_end..]).unwrap_or(Value::Null);
    checked.lock().unwrap().push(body.clone());
    let text = body["text"].as_str().unwrap_or_default();
    let (status, answer) = if text.contains("spam") {
        ("200 OK", r#"{"allow": false}"#)
    } else if text.contains("garbage") {
        ("200 OK", "this is not JSON")
    } else if text.contains("shapeless") {
        ("200 OK", r#"{"allow": "yes"}"#)
    } else if text.contains("broken") {
        ("500 Internal Server Error", "")
    } else if text.contains("slow") || text.contains("hold") {
        // Waits until released (`hold` only) or until the client gives up.
        waiting.send_modify(|n| *n += 1);
        let hold = text.contains("hold");
        let released = tokio::select! {
            _ = released.wait_for(|released| *released), if hold => true,
            _ = stream.read(&mut buf) => false,
        };
        waiting.send_modify(|n| *n -= 1);
        if !released {
            return Ok(());
        }
        ("200 OK", r#"{"allow": true}"#)
    } else {
        ("200 OK", r#"{"allow": true}"#)
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{answer}",
        answer.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[tokio::test]
async fn moderation_sees_each_message_and_keeps_what_it_refuses_from_the_room() {
    let moderation = Moderation::start().await;
    let server = TestServer::start(&chat(&[("MODERATION_URL", &moderation.url())])).await;
    let mut ann = join(&server, "lobby", "ann").await;
    let mut bob = join(&server, "lobby", "bob").await;
    send_text(&mut ann, "hello").await;
    assert_eq!(next_said(&mut bob).await, said("ann", "hello"));
    assert_eq!(
        moderation.checked(),
        [json!({ "room": "lobby", "from": "ann", "text": "hello" })]
    );

    let answer = ask(&mut ann, "buy spam now").await;
    assert!(error_text(&answer).contains("not sent"), "{answer}");
    // Bob never got it: the next thing he hears is what came after.
    send_text(&mut ann, "sorry").await;
    assert_eq!(next_said(&mut bob).await, said("ann", "sorry"));
    assert_eq!(moderation.checked().len(), 3);
    // Commands are not moderated, refused messages not counted (asked by
    // the sender: after its messages are counted).
    assert_eq!(ask(&mut ann, "/stats").await, stats(2));
    assert_eq!(moderation.checked().len(), 3);
}

#[tokio::test]
async fn moderation_fails_closed_when_the_service_is_down_slow_or_answers_garbage() {
    let moderation = Moderation::start().await;
    // A port nothing listens on: connections are refused.
    let down = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/check", listener.local_addr().unwrap())
    };
    for (url, texts) in [
        (down.as_str(), &["anyone there?"][..]),
        (
            moderation.url().as_str(),
            &["slow down", "garbage in", "shapeless", "broken"][..],
        ),
    ] {
        let server = TestServer::start(&chat(&[("MODERATION_URL", url)])).await;
        let mut ann = join(&server, "lobby", "ann").await;
        let mut bob = join(&server, "lobby", "bob").await;
        for text in texts {
            let answer = ask(&mut ann, text).await;
            assert!(error_text(&answer).contains("not sent"), "{text}: {answer}");
        }
        // Nothing reached the room: Bob's own question is answered first.
        assert_eq!(ask(&mut bob, "/stats").await, stats(0));
        // One warning per message not sent, naming the service.
        let warnings = server
            .app_log_lines("chat")
            .into_iter()
            .filter(|line| line.contains("moderation") && line.contains(url))
            .count();
        assert_eq!(warnings, texts.len(), "{:#?}", server.app_log_lines("chat"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_moderation_answer_holds_up_no_other_connections_messages() {
    let mut moderation = Moderation::start().await;
    // Long enough that Ann's check is still waiting when Bob's message
    // has gone round, however busy the machine.
    let server = TestServer::start(&chat(&[
        ("MODERATION_URL", &moderation.url()),
        ("MODERATION_TIMEOUT_MS", "9000"),
    ]))
    .await;
    let mut ann = join(&server, "lobby", "ann").await;
    let mut bob = join(&server, "lobby", "bob").await;
    let mut cid = join(&server, "lobby", "cid").await;
    send_text(&mut ann, "hold this").await;
    moderation.wait_for_waiting(1).await;
    send_text(&mut bob, "meanwhile").await;
    assert_eq!(next_said(&mut cid).await, said("bob", "meanwhile"));
    assert_eq!(
        *moderation.waiting.borrow(),
        1,
        "Ann's check was still waiting while Bob's message went round"
    );
    moderation.release();
    assert_eq!(next_said(&mut cid).await, said("ann", "hold this"));
    assert_eq!(next_said(&mut bob).await, said("ann", "hold this"));
    // Counted: asked by Ann, whose messages run in order, so after her
    // message is published and counted (Bob may hear it before it is).
    assert_eq!(next_said(&mut ann).await, said("bob", "meanwhile"));
    assert_eq!(ask(&mut ann, "/stats").await, stats(2));
}

/// `name` back in `room` after a drop, with `since`: the client and the
/// topic it got first. While the host still holds the old connection, the
/// name is taken (409): it tries again, as the page does.
async fn come_back(server: &TestServer, room: &str, name: &str, since: &str) -> (Client, Value) {
    let url = format!(
        "{}?name={name}&since={since}",
        server.app_url("chat", &format!("/chat/{room}"))
    );
    let deadline = tokio::time::Instant::now() + wsflow_tests::TIMEOUT;
    loop {
        match try_connect(request(&url, &[])).await {
            Ok(mut client) => {
                let first = next_json(&mut client).await;
                assert_eq!(first["type"], "topic", "{name}'s first message: {first}");
                return (client, first);
            }
            Err(Refused { status: 409, .. }) if tokio::time::Instant::now() < deadline => {
                // Not a wait for anything: a pause between tries.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(refused) => panic!("{name} could not come back: {refused:?}"),
        }
    }
}

#[tokio::test]
async fn a_newcomer_gets_the_topic_then_the_rooms_recent_lines_then_live_ones() {
    let server = TestServer::start(&chat(&[])).await;
    let mut ann = join(&server, "lobby", "ann").await;
    send_text(&mut ann, "/topic history").await;
    assert_eq!(next_said(&mut ann).await, topic("history", "ann"));
    for n in 1..=60 {
        send_text(&mut ann, &format!("m{n}")).await;
    }
    // Every message is published once its count is (the count follows).
    assert_eq!(ask(&mut ann, "/stats").await, stats(60));

    let (mut bob, first, recent) = join_reading(&server, "lobby", "bob").await;
    assert_eq!(first, topic("history", "ann"));
    // The room kept `ann joined`, the topic and m1..m60, then `bob
    // joined`: the newest 50 end with Bob's own, so 49 before it.
    let texts: Vec<Value> = recent.iter().cloned().map(without_position).collect();
    let expected: Vec<Value> = (12..=60).map(|n| said("ann", &format!("m{n}"))).collect();
    assert_eq!(texts, expected);
    let offsets: Vec<u64> = recent.iter().map(|line| position(line).1).collect();
    assert_eq!(offsets, (14..=62).collect::<Vec<_>>());

    send_text(&mut ann, "live").await;
    let live = next_json(&mut bob).await;
    assert_eq!(without_position(live.clone()), said("ann", "live"));
    assert_eq!(position(&live).1, 64, "after Bob's own joined (63): {live}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_with_since_gets_every_line_once_in_order_while_others_talk() {
    let server = TestServer::start(&chat(&[])).await;
    let mut ann = join(&server, "lobby", "ann").await;
    let mut bob = join(&server, "lobby", "bob").await;
    let mut cid = join(&server, "lobby", "cid").await;
    // Bob hears Cid come in, then Ann's first messages.
    assert_eq!(without_position(next_json(&mut bob).await)["name"], "cid");

    // Ann talks without pause, each message once Cid has it, until told
    // to stop; Cid hears nothing else: Bob's drop and return are not
    // announced.
    let done = Arc::new(AtomicBool::new(false));
    let talking = tokio::spawn({
        let done = Arc::clone(&done);
        async move {
            let mut n = 0;
            while !done.load(Ordering::SeqCst) {
                n += 1;
                send_text(&mut ann, &n.to_string()).await;
                let heard = without_position(next_json(&mut cid).await);
                assert_eq!(heard, said("ann", &n.to_string()));
            }
            (n, ann, cid)
        }
    });
    let mut last = (0, String::new());
    while last.0 < 3 {
        let line = next_json(&mut bob).await;
        last = (
            line["text"].as_str().unwrap().parse().unwrap(),
            line["pos"].as_str().unwrap().to_owned(),
        );
    }
    // Bob's connection drops (no close frame), and he comes back.
    drop(bob);
    let (mut bob, _topic) = come_back(&server, "lobby", "bob", &last.1).await;

    let mut expected = last.0 + 1;
    let mut offset = position(&json!({ "pos": last.1 })).1 + 1;
    let mut recovered = false;
    let mut live = 0;
    let stop_at = loop {
        let line = next_json(&mut bob).await;
        if line["type"] == "recovered" {
            assert!(!recovered, "recovered twice");
            assert_eq!(line, json!({ "type": "recovered", "complete": true }));
            recovered = true;
            continue;
        }
        assert_eq!(
            without_position(line.clone()),
            said("ann", &expected.to_string())
        );
        assert_eq!(position(&line).1, offset, "{line}");
        expected += 1;
        offset += 1;
        if recovered {
            live += 1;
            if live == 20 {
                done.store(true, Ordering::SeqCst);
                let (sent, _ann, _cid) = talking.await.unwrap();
                break sent;
            }
        }
    };
    // What Ann sent until she stopped, each once, in order.
    while expected <= stop_at {
        let line = next_json(&mut bob).await;
        assert_eq!(without_position(line), said("ann", &expected.to_string()));
        expected += 1;
    }
    assert!(recovered);
}

#[tokio::test]
async fn a_client_back_from_a_position_the_room_no_longer_has_is_told_and_gets_what_it_has() {
    let server = TestServer::start(&chat(&[])).await;
    let (mut ann, _topic, _recent) = join_reading(&server, "lobby", "ann").await;
    let bob = join(&server, "lobby", "bob").await;
    drop(bob);
    send_text(&mut ann, "one").await;
    send_text(&mut ann, "two").await;
    assert_eq!(ask(&mut ann, "/stats").await, stats(2));
    // A position of another epoch: as after a restart of the host.
    let url = server.app_url("chat", "/chat/lobby?name=ann2&since=1:1");
    let mut probe = connect(&url).await;
    let mut lines = Vec::new();
    loop {
        let line = next_json(&mut probe).await;
        if line["type"] == "recovered" {
            assert_eq!(line, json!({ "type": "recovered", "complete": false }));
            break;
        }
        lines.push(line);
    }
    // The topic, then every line the room still has, oldest first.
    let (epoch, _) = position(&lines[1]);
    assert_ne!(epoch, "1");
    let lines: Vec<Value> = lines.into_iter().map(without_position).collect();
    assert_eq!(
        lines,
        [
            no_topic(),
            json!({ "type": "joined", "name": "ann" }),
            json!({ "type": "joined", "name": "bob" }),
            said("ann", "one"),
            said("ann", "two"),
        ]
    );
    // Then live.
    send_text(&mut ann, "three").await;
    assert_eq!(next_said(&mut probe).await, said("ann", "three"));

    // A `since` that is not a position is refused.
    for bad in ["yesterday", "12", "x:1"] {
        let url = server.app_url("chat", &format!("/chat/lobby?name=dan&since={bad}"));
        let refused = try_connect(request(&url, &[])).await.unwrap_err();
        assert_eq!(refused.status, 400, "since={bad}: {refused:?}");
        assert!(refused.body.contains("EPOCH:OFFSET"), "{}", refused.body);
    }
}

#[tokio::test]
async fn a_backend_announcement_through_the_api_reaches_the_room_with_its_position() {
    const TOKEN: &str = "chat-api-token-0123456789";
    let server = TestServer::start(&chat(&[("API_TOKEN", TOKEN)])).await;
    let app = server.app_name("chat").to_owned();
    let api = server.start_api().await;
    let mut ann = join(&server, "lobby", "ann").await;
    let announcement = json!({ "type": "message", "from": "ops", "text": "deploy at 18:00" });
    let published = http_request(
        api,
        "POST",
        &format!("/v1/apps/{app}/groups/room%3Alobby/publish"),
        &[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("content-type", "application/json"),
        ],
        announcement.to_string().as_bytes(),
    )
    .await;
    assert_eq!(published.status, 200, "{}", published.body);
    let published = published.json();
    assert_eq!(published["delivered"], 1);
    let heard = next_json(&mut ann).await;
    assert_eq!(without_position(heard.clone()), announcement);
    assert_eq!(heard["pos"], published["position"]);
    // Kept like any line: a newcomer gets it.
    let (_bob, _topic, recent) = join_reading(&server, "lobby", "bob").await;
    assert_eq!(recent.last(), Some(&heard));
}

#[tokio::test]
async fn without_a_token_the_chat_is_not_on_the_api() {
    let server = TestServer::start(&chat(&[])).await;
    let app = server.app_name("chat").to_owned();
    let api = server.start_api().await;
    let refused = http_request(
        api,
        "POST",
        &format!("/v1/apps/{app}/groups/room%3Alobby/publish"),
        &[("authorization", "Bearer "), ("content-type", "text/plain")],
        b"anyone?",
    )
    .await;
    assert_eq!(refused.status, 401, "{}", refused.body);
}

#[tokio::test]
async fn a_room_of_large_lines_still_lets_newcomers_and_returning_clients_in() {
    let server = TestServer::start(&chat(&[])).await;
    let (mut ann, _topic, _recent) = join_reading(&server, "lobby", "ann").await;
    let bob = join(&server, "lobby", "bob").await;
    drop(bob);
    // Four lines of 300 kB: more than a connection's outbound queue (1 MiB)
    // holds together.
    let big = |n: usize| format!("{n}{}", "x".repeat(300_000));
    for n in 1..=4 {
        send_text(&mut ann, &big(n)).await;
    }
    assert_eq!(ask(&mut ann, "/stats").await, stats(4));

    // A newcomer gets the newest lines that fit well within its queue.
    let (mut cid, _topic, recent) = join_reading(&server, "lobby", "cid").await;
    let recent: Vec<Value> = recent.into_iter().map(without_position).collect();
    assert_eq!(recent, [said("ann", &big(4))]);
    send_text(&mut ann, "small").await;
    assert_eq!(next_said(&mut cid).await, said("ann", "small"));

    // A client back from before them gets the newest that fit, and is
    // told that it missed some.
    let url = server.app_url("chat", "/chat/lobby?name=dan");
    let mut dan = connect(&url).await;
    let mut since = None;
    while since.is_none() {
        let line = next_json(&mut dan).await;
        if line["type"] == "joined" && line["name"] == "dan" {
            since = line["pos"].as_str().map(str::to_owned);
        }
    }
    drop(dan);
    for n in 5..=7 {
        send_text(&mut ann, &big(n)).await;
    }
    assert_eq!(ask(&mut ann, "/stats").await, stats(8));
    let (mut dan, _topic) = come_back(&server, "lobby", "dan", &since.unwrap()).await;
    let missed = without_position(next_json(&mut dan).await);
    assert_eq!(missed, said("ann", &big(7)));
    assert_eq!(
        next_json(&mut dan).await,
        json!({ "type": "recovered", "complete": false })
    );
    send_text(&mut ann, "after").await;
    assert_eq!(next_said(&mut dan).await, said("ann", "after"));
}
