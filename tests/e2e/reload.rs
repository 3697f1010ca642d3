//! Hot reload: a new version of an app is swapped in while its clients stay
//! connected; a version that does not load changes nothing.

use toml::toml;
use wsflow_tests::{Manifest, TestServer, Trigger, connect, next_text, programs, send_text};

/// `/x` runs `main` (data mode), `/s` runs `session` (connection mode).
fn app(main: &str, session: &str) -> Manifest {
    Manifest::app("reload")
        .flow("main", main)
        .flow("session", session)
        .trigger(
            Trigger::on_port(0)
                .handler(toml! { path = "/x" flow = "main" })
                .handler(toml! { path = "/s" flow = "session" mode = "connection" }),
        )
}

#[tokio::test]
async fn fifty_connections_stay_open_across_a_reload_and_get_the_new_version() {
    let server = TestServer::start(&app(programs::EXAMPLE_ECHO, programs::SESSION)).await;
    let url = server.url("/x");
    let mut clients = Vec::new();
    for n in 0..50 {
        let mut client = connect(&url).await;
        send_text(&mut client, &format!("v1 {n}")).await;
        assert_eq!(next_text(&mut client).await, format!("v1 {n}"));
        clients.push(client);
    }
    let mut session = connect(&server.url("/s")).await;
    assert_eq!(next_text(&mut session).await, "ready");

    // The new version: `main` is now the gate program, whose flow answers
    // `echo TEXT`; `session` is the gate program too.
    let report = server
        .reload_with(0, &app(programs::GATE, programs::GATE))
        .await
        .expect("the new version loads");
    assert_eq!(report.reloaded, [server.app_name("reload")]);
    assert!(report.needs_restart.is_empty(), "{report:?}");

    // Every open data-mode connection: still open, next message on the new
    // version.
    for (n, client) in clients.iter_mut().enumerate() {
        send_text(client, &format!("v2 {n}")).await;
        assert_eq!(next_text(client).await, format!("echo v2 {n}"));
    }
    // A connection-mode flow that started before goes on on its version.
    send_text(&mut session, "hi").await;
    assert_eq!(next_text(&mut session).await, "1:hi");
    // New connections get the new version.
    let mut fresh = connect(&url).await;
    send_text(&mut fresh, "new").await;
    assert_eq!(next_text(&mut fresh).await, "echo new");
    let stats = server.app_stats("reload");
    assert_eq!(stats.connections_open, 52, "no connection was dropped");
    assert_eq!(
        stats.executions_trapped + stats.executions_limit_exceeded,
        0
    );
}

#[tokio::test]
async fn a_version_that_does_not_load_changes_nothing() {
    let server = TestServer::start(&app(programs::EXAMPLE_ECHO, programs::SESSION)).await;
    let mut client = connect(&server.url("/x")).await;

    let error = server
        .reload_with(0, &app("/nowhere/missing.wasm", programs::SESSION))
        .await
        .expect_err("a missing component does not load");
    let message = format!("{error:#}");
    assert!(message.contains("/nowhere/missing.wasm"), "{message}");
    send_text(&mut client, "still v1").await;
    assert_eq!(next_text(&mut client).await, "still v1");

    // What cannot change in place is reported, and the app stays as it is.
    let limited = app(programs::GATE, programs::SESSION).limits(toml! { max_executions = 8 });
    let report = server.reload_with(0, &limited).await.unwrap();
    assert!(report.reloaded.is_empty(), "{report:?}");
    assert_eq!(report.needs_restart.len(), 1, "{report:?}");
    assert!(
        report.needs_restart[0].contains("its `[limits]` changed; restart wsflow to apply it"),
        "{report:?}"
    );
    send_text(&mut client, "still v1").await;
    assert_eq!(next_text(&mut client).await, "still v1");
    assert_eq!(server.app_stats("reload").connections_open, 1);
}
