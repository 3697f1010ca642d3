//! Lifecycle hooks through the `gate` program: `on_connect` admits or
//! refuses before the upgrade and starts a connection in its room;
//! `on_close` runs exactly once per connection it accepted, however the
//! connection ends.

use std::time::Duration;

use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use toml::toml;
use wsflow_tests::{
    Client, Manifest, TestServer, Trigger, connect, connect_at_once, next_close, next_text,
    programs, request, send_text, try_connect,
};

/// An app whose `/gate` handler runs the gate program as flow and hooks.
fn gate(name: &str) -> Manifest {
    Manifest::app(name)
        .flow("gate", programs::GATE)
        .trigger(Trigger::on_port(0).handler(toml! {
            path = "/gate"
            flow = "gate"
            on_connect = "gate"
            on_close = "gate"
        }))
}

/// How many `gate: closed` lines app `app` has logged for `name`.
fn closes_logged(server: &TestServer, app: &str, name: &str) -> Vec<String> {
    server
        .app_log_lines(app)
        .into_iter()
        .filter(|line| {
            let tail = format!("attachment={name}");
            line.contains("gate: closed")
                && (line.contains(&format!("{tail} ")) || line.ends_with(&tail))
        })
        .collect()
}

/// Wait for `name`'s `on_close` line, then check it stays the only one.
async fn the_one_close(server: &TestServer, app: &str, name: &str) -> String {
    let line = server
        .wait_for_app_log(app, &format!("attachment={name} "))
        .await;
    // A second call would come right after the first; give it every chance.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = closes_logged(server, app, name);
    assert_eq!(lines.len(), 1, "on_close ran more than once: {lines:?}");
    line
}

async fn join(server: &TestServer, query: &str) -> Client {
    connect(&format!("{}?{query}", server.url("/gate"))).await
}

#[tokio::test]
async fn on_connect_refuses_with_its_status_before_the_upgrade() {
    let app = "gate-refuse";
    let server = TestServer::start(&gate(app)).await;
    let url = server.url("/gate");
    let refused = try_connect(request(&format!("{url}?token=reject&name=eve"), &[]))
        .await
        .unwrap_err();
    assert_eq!(refused.status, 401);
    assert_eq!(refused.body, "bad token");

    // Decisions the host cannot carry out are the app's mistake: 500, and
    // the log says what was wrong.
    for (token, logged) in [
        ("teapot", "not 400-599"),
        ("trap", "on_connect trapped"),
        ("bad-proto", "which the client did not offer"),
        ("bad-group", "it chose the group `no spaces`"),
    ] {
        let refused = try_connect(request(&format!("{url}?token={token}"), &[]))
            .await
            .unwrap_err();
        assert_eq!(refused.status, 500, "{token}");
        assert_eq!(refused.body, "the app could not decide on this connection");
        server.wait_for_app_log(app, logged).await;
    }
    // A refused client never reached on_close; the app still serves.
    let mut client = join(&server, "name=ok").await;
    send_text(&mut client, "hi").await;
    assert_eq!(next_text(&mut client).await, "echo hi");
    assert!(closes_logged(&server, app, "eve").is_empty());
    assert!(
        server
            .app_log_lines(app)
            .iter()
            .all(|line| !line.contains("gate: closed")),
        "no on_close for refused clients"
    );
}

#[tokio::test]
async fn on_connect_chooses_the_subprotocol_attachment_and_groups() {
    let server = TestServer::start(&gate("gate-open")).await;
    let mut offer = format!("{}?name=ann&room=r1", server.url("/gate"))
        .into_client_request()
        .unwrap();
    offer
        .headers_mut()
        .insert("sec-websocket-protocol", "other, gate.v1".parse().unwrap());
    let (mut ann, response) = tokio_tungstenite::connect_async(offer).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "gate.v1");

    // Bob's on_connect announces him to the room Ann's on_connect put her in.
    let mut bob = join(&server, "name=bob&room=r1").await;
    assert_eq!(next_text(&mut ann).await, "joined bob");
    send_text(&mut bob, "who").await;
    // Listed in id order; ids are not handed out in connection order.
    let who = next_text(&mut bob).await;
    let mut names: Vec<&str> = who.strip_prefix("who ").unwrap().split(',').collect();
    names.sort_unstable();
    assert_eq!(names, ["ann", "bob"]);
    // Another room hears nothing of r1.
    let mut cy = join(&server, "name=cy&room=r2").await;
    send_text(&mut cy, "who").await;
    assert_eq!(next_text(&mut cy).await, "who cy");
}

#[tokio::test]
async fn on_close_runs_once_with_the_close_groups_and_attachment() {
    let app = "gate-close";
    let server = TestServer::start(&gate(app)).await;
    let mut ann = join(&server, "name=ann&room=r1").await;
    let mut bob = join(&server, "name=bob&room=r1").await;
    assert_eq!(next_text(&mut ann).await, "joined bob");

    // The client closes: its code and reason.
    bob.close(Some(CloseFrame {
        code: CloseCode::from(4000),
        reason: "see you".into(),
    }))
    .await
    .unwrap();
    assert_eq!(next_text(&mut ann).await, "left bob");
    let line = the_one_close(&server, app, "bob").await;
    assert!(
        line.contains("code=4000 reason=see you groups=r1 attachment=bob"),
        "{line}"
    );

    // The flow closes: the host's code and reason.
    let mut cy = join(&server, "name=cy&room=r1").await;
    assert_eq!(next_text(&mut ann).await, "joined cy");
    send_text(&mut cy, "bye 4001 done").await;
    assert_eq!(u16::from(next_close(&mut cy).await.code), 4001);
    assert_eq!(next_text(&mut ann).await, "left cy");
    let line = the_one_close(&server, app, "cy").await;
    assert!(line.contains("code=4001 reason=done groups=r1"), "{line}");

    // The flow traps: 1011, and on_close still runs, once.
    send_text(&mut ann, "trap").await;
    assert_eq!(u16::from(next_close(&mut ann).await.code), 1011);
    let line = the_one_close(&server, app, "ann").await;
    assert!(
        line.contains("code=1011 reason=internal error groups=r1"),
        "{line}"
    );
}

#[tokio::test]
async fn on_close_runs_once_for_every_connection_at_shutdown_and_when_dropped() {
    let app = "gate-shutdown";
    let server = TestServer::start(&gate(app)).await;
    // A client that vanishes without a close frame: 1006.
    let gone = join(&server, "name=gone").await;
    drop(gone);
    let line = the_one_close(&server, app, "gone").await;
    assert!(line.contains("code=1006"), "{line}");

    let mut clients = Vec::new();
    for n in 0..5 {
        let mut client = join(&server, &format!("name=c{n}&room=r{n}")).await;
        send_text(&mut client, "hi").await;
        assert_eq!(next_text(&mut client).await, "echo hi");
        clients.push(client);
    }
    server.begin_shutdown();
    for client in &mut clients {
        assert_eq!(u16::from(next_close(client).await.code), 1001);
    }
    // The shutdown waits for the connections, their on_close included.
    for n in 0..5 {
        let line = the_one_close(&server, app, &format!("c{n}")).await;
        assert!(
            line.contains(&format!(
                "code=1001 reason=server shutting down groups=r{n}"
            )),
            "{line}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_component_without_hooks_cannot_be_named_as_a_hook() {
    let manifest = Manifest::app("gate-legacy")
        .flow("legacy", programs::LEGACY)
        .flow("echo", programs::EXAMPLE_ECHO)
        .trigger(Trigger::on_port(0).handler(toml! {
            path = "/x"
            flow = "echo"
            on_close = "legacy"
        }));
    let error = TestServer::try_start(&manifest)
        .await
        .err()
        .expect("refused");
    let error = format!("{error:#}");
    assert!(
        error.contains("flow `legacy` does not export the `wsflow:flow/lifecycle` hooks"),
        "{error}"
    );
}

/// The status of the answer to a raw request head sent to `server`.
async fn raw_status(server: &TestServer, head: &str) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(server.endpoints()[0].addr)
        .await
        .unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(wsflow_tests::TIMEOUT, tcp.read_to_end(&mut raw))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let raw = String::from_utf8_lossy(&raw);
    raw.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn on_connect_runs_only_for_requests_that_can_be_upgraded() {
    let app = "gate-valid";
    let server = TestServer::start(&gate(app)).await;
    let mut member = join(&server, "name=member").await;
    let addr = server.endpoints()[0].addr;
    let valid_key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\n";
    // Each is an upgrade request no connection can come of; `gate`'s
    // `on_connect` would announce `joined ghost` to the room.
    let heads = [
        (
            426,
            format!(
                "GET /gate?name=ghost HTTP/1.1\r\nHost: {addr}\r\n{upgrade}Sec-WebSocket-Version: 12\r\n{valid_key}\r\n"
            ),
        ),
        (
            400,
            format!(
                "GET /gate?name=ghost HTTP/1.1\r\nHost: {addr}\r\n{upgrade}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n"
            ),
        ),
        (
            400,
            format!(
                "GET /gate?name=ghost HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n{valid_key}\r\n"
            ),
        ),
        (
            405,
            format!(
                "POST /gate?name=ghost HTTP/1.1\r\nHost: {addr}\r\n{upgrade}Sec-WebSocket-Version: 13\r\n{valid_key}\r\n"
            ),
        ),
    ];
    for _ in 0..3 {
        for (status, head) in &heads {
            assert_eq!(raw_status(&server, head).await, *status, "{head}");
        }
    }
    let stats = server.app_stats(app);
    assert_eq!(stats.connections_total, 1, "{stats:?}");

    // The first announcement the member sees is the next real client's.
    let _real = join(&server, "name=real").await;
    assert_eq!(next_text(&mut member).await, "joined real");
}

#[tokio::test]
async fn what_on_connect_hands_back_is_capped_before_the_host_copies_it() {
    let app = "gate-fuel";
    let server = TestServer::start(&gate(app)).await;
    let url = server.url("/gate");
    // 10 MiB of group names: refused while it is being copied out of the
    // guest, not after the host holds all of it.
    let refused = try_connect(request(&format!("{url}?token=many-groups"), &[]))
        .await
        .unwrap_err();
    assert_eq!(refused.status, 500);
    let line = server
        .wait_for_app_log(app, "too much data is being copied")
        .await;
    assert!(line.contains("on_connect trapped"), "{line}");
    // The app goes on.
    let mut client = join(&server, "name=after").await;
    send_text(&mut client, "hi").await;
    assert_eq!(next_text(&mut client).await, "echo hi");
}

#[tokio::test]
async fn with_unique_attachment_one_name_gets_into_a_room_once() {
    let app = "gate-unique";
    let manifest =
        Manifest::app(app)
            .flow("gate", programs::GATE)
            .trigger(Trigger::on_port(0).handler(toml! {
                path = "/gate"
                flow = "gate"
                on_connect = "gate"
                unique_attachment = true
            }));
    let server = TestServer::start(&manifest).await;
    let url = format!("{}?name=ann&room=lobby", server.url("/gate"));
    // `gate` accepts every name; the host keeps the second `ann` out of
    // the room, however close together they come.
    let admitted = connect_at_once(&url, 12, 409).await;
    let refusal = try_connect(request(&url, &[])).await.unwrap_err();
    assert!(
        refusal.body.contains("`lobby` has the same attachment"),
        "{}",
        refusal.body
    );
    assert_eq!(admitted.len(), 1);
    // Another room, or another name, is fine.
    let _kitchen = join(&server, "name=ann&room=kitchen").await;
    let _bob = join(&server, "name=bob&room=lobby").await;
    // The name is free again once its connection has ended.
    drop(admitted);
    let again = async {
        loop {
            match try_connect(request(&url, &[])).await {
                Ok(client) => return client,
                Err(refused) => assert_eq!(refused.status, 409),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let again = tokio::time::timeout(wsflow_tests::TIMEOUT, again).await;
    assert!(again.is_ok(), "the name was never given back");
}
