//! Outbound HTTP (`wasi:http/outgoing-handler`) against a real HTTP server
//! on 127.0.0.1: grants, addresses reached through names, redirects,
//! timeouts, body limits, requests in flight, and hostile flows. Timeouts
//! are short in the manifests and the assertions are on outcomes (the
//! error the flow got, what the server saw, the counters), never on how
//! long anything took.

use serde_json::{Value, json};
use toml::{Table, toml};
use wsflow::Resolver;
use wsflow_tests::http_server::{HttpServer, TestResolver};
use wsflow_tests::{
    Client, Manifest, TestServer, Trigger, connect, next_close, next_json, programs, send_text,
};

/// App `fetch` whose flow may call `grants`, within `limits`.
fn fetch_app(grants: &[String], limits: Table) -> Manifest {
    let hosts = grants.iter().cloned().map(toml::Value::String).collect();
    let mut flow = Table::new();
    flow.insert("allowed_outbound_hosts".into(), toml::Value::Array(hosts));
    Manifest::app("fetch")
        .flow_with("main", programs::FETCH, flow)
        .trigger(Trigger::on_port(0).handler(toml! { path = "/fetch" mode = "data" flow = "main" }))
        .limits(limits)
}

/// Short timeouts: a test that waits for one does not wait long, and an
/// answer from loopback arrives well within them on a busy machine.
fn short_timeouts() -> Table {
    toml! {
        outbound_connect_timeout = "1s"
        outbound_first_byte_timeout = "1s"
        outbound_between_bytes_timeout = "1s"
    }
}

async fn ask(client: &mut Client, command: Value) -> Value {
    send_text(client, &command.to_string()).await;
    next_json(client).await
}

async fn fetch_client(server: &TestServer) -> Client {
    connect(&server.app_url("fetch", "/fetch")).await
}

#[tokio::test]
async fn a_granted_host_answers_and_is_counted() {
    let http = HttpServer::start().await;
    let server = TestServer::start(&fetch_app(&[http.url("")], Table::new())).await;
    let mut client = fetch_client(&server).await;

    let got = ask(&mut client, json!({ "get": http.url("/ok") })).await;
    assert_eq!(got, json!({ "status": 200, "body": "hello" }));
    let posted = ask(
        &mut client,
        json!({ "post": http.url("/echo"), "json": { "n": 1 } }),
    )
    .await;
    assert_eq!(posted, json!({ "status": 200, "body": "{\"n\":1}" }));

    let stats = server.app_stats("fetch");
    assert_eq!(stats.outbound_requests_ok, 2);
    assert_eq!(stats.outbound_requests_denied, 0);
    assert_eq!(http.requests(), 2);
}

#[tokio::test]
async fn an_ungranted_host_is_an_error_value_naming_the_url_and_the_grant() {
    let http = HttpServer::start().await;
    let other = HttpServer::start().await;
    let server = TestServer::start(&fetch_app(&[other.url("")], Table::new())).await;
    let mut client = fetch_client(&server).await;

    let url = http.url("/ok");
    let denied = ask(&mut client, json!({ "get": url })).await;
    assert_eq!(denied["error"], "Denied", "{denied}");
    let message = denied["message"].as_str().unwrap();
    assert!(message.contains(&url), "{message}");
    let grant = format!("add \"http://127.0.0.1:{}\"", http.port());
    assert!(message.contains(&grant), "{message}");
    // Another scheme or port of a granted host is another destination.
    let https = format!("https://127.0.0.1:{}/ok", other.port());
    let denied = ask(&mut client, json!({ "get": https })).await;
    assert_eq!(denied["error"], "Denied", "{denied}");

    let line = server.wait_for_app_log("fetch", "denied").await;
    assert!(line.contains(&url), "{line}");
    assert_eq!(http.requests() + other.requests(), 0);
    assert_eq!(server.app_stats("fetch").outbound_requests_denied, 2);
    // An error value, not a trap: the connection serves on.
    let got = ask(&mut client, json!({ "get": other.url("/ok") })).await;
    assert_eq!(got["status"], 200, "{got}");
}

#[tokio::test]
async fn a_name_that_resolves_to_an_internal_address_is_refused_after_resolution() {
    let http = HttpServer::start().await;
    let resolver = TestResolver::new()
        .with("internal.test", "127.0.0.1")
        .with("metadata.test", "169.254.169.254")
        .with("metadata6.test", "fd00:ec2::254")
        .with("localhost", "127.0.0.1");
    let grants = [
        http.url_as("internal.test", ""),
        http.url_as("metadata.test", ""),
        http.url_as("metadata6.test", ""),
        http.url_as("localhost", ""),
    ];
    let server = TestServer::start_resolving(
        &fetch_app(&grants, short_timeouts()),
        Resolver::new(resolver),
    )
    .await;
    let mut client = fetch_client(&server).await;

    for name in ["internal.test", "metadata.test", "metadata6.test"] {
        let refused = ask(&mut client, json!({ "get": http.url_as(name, "/ok") })).await;
        assert_eq!(refused["error"], "Prohibited", "{name}: {refused}");
    }
    assert_eq!(http.requests(), 0, "no connection was made");
    server
        .wait_for_app_log("fetch", "resolves to 127.0.0.1")
        .await;
    // A grant that names `localhost` reaches loopback.
    let got = ask(
        &mut client,
        json!({ "get": http.url_as("localhost", "/ok") }),
    )
    .await;
    assert_eq!(got["status"], 200, "{got}");
    let stats = server.app_stats("fetch");
    assert_eq!(stats.outbound_requests_denied, 3);
    assert_eq!(stats.outbound_requests_ok, 1);
}

#[tokio::test]
async fn every_redirect_hop_is_checked_like_the_first_request() {
    let http = HttpServer::start().await;
    let resolver = TestResolver::new().with("internal.test", "127.0.0.1");
    let grants = [http.url(""), http.url_as("internal.test", "")];
    let server =
        TestServer::start_resolving(&fetch_app(&grants, Table::new()), Resolver::new(resolver))
            .await;
    let mut client = fetch_client(&server).await;

    let to_granted = http.url(&format!("/redirect?{}", http.url("/ok")));
    let got = ask(&mut client, json!({ "get": to_granted })).await;
    assert_eq!(got, json!({ "status": 200, "body": "hello" }));

    let ungranted = format!("http://127.0.0.2:{}/ok", http.port());
    let to_ungranted = http.url(&format!("/redirect?{ungranted}"));
    let denied = ask(&mut client, json!({ "get": to_ungranted })).await;
    assert_eq!(denied["error"], "Denied", "{denied}");
    assert!(
        denied["message"].as_str().unwrap().starts_with(&ungranted),
        "the hop is named: {denied}"
    );

    let to_internal = http.url(&format!(
        "/redirect?{}",
        http.url_as("internal.test", "/ok")
    ));
    let refused = ask(&mut client, json!({ "get": to_internal })).await;
    assert_eq!(refused["error"], "Prohibited", "{refused}");
    // The three redirects and the one granted hop reached the server.
    assert_eq!(http.requests(), 4);
}

#[tokio::test]
async fn slow_services_fail_the_call_at_each_timeout() {
    let http = HttpServer::start().await;
    let resolver = TestResolver::new().hanging("hang.test");
    let grants = [http.url(""), http.url_as("hang.test", "")];
    let server = TestServer::start_resolving(
        &fetch_app(&grants, short_timeouts()),
        Resolver::new(resolver),
    )
    .await;
    let mut client = fetch_client(&server).await;

    // Connect: a name that never resolves.
    let connect = ask(
        &mut client,
        json!({ "get": http.url_as("hang.test", "/ok") }),
    )
    .await;
    assert_eq!(connect["error"], "Timeout", "{connect}");
    assert!(
        connect["message"]
            .as_str()
            .unwrap()
            .contains("ConnectionTimeout")
    );
    // First byte: a server that reads the request and never answers.
    let first_byte = ask(&mut client, json!({ "get": http.url("/silent") })).await;
    assert_eq!(first_byte["error"], "Timeout", "{first_byte}");
    // Between bytes: a body that stops after five bytes.
    let between = ask(&mut client, json!({ "get": http.url("/stall") })).await;
    assert_eq!(between["error"], "Timeout", "{between}");
    // A timeout the flow asks for is honoured when shorter than the app's.
    let asked = ask(
        &mut client,
        json!({ "get": http.url("/silent"), "timeout_ms": 50 }),
    )
    .await;
    assert_eq!(asked["error"], "Timeout", "{asked}");

    let stats = server.app_stats("fetch");
    assert_eq!(stats.outbound_requests_timeout, 3, "{stats:?}");
    // The stalled body's headers came: its request counts as answered.
    assert_eq!(stats.outbound_requests_ok, 1, "{stats:?}");
    // Waiting is not CPU time: no execution was stopped.
    assert_eq!(stats.executions_limit_exceeded, 0);
}

#[tokio::test]
async fn bodies_over_the_limit_are_an_error() {
    let http = HttpServer::start().await;
    let limits = toml! { max_outbound_response_size = "64KiB" };
    let server = TestServer::start(&fetch_app(&[http.url("")], limits)).await;
    let mut client = fetch_client(&server).await;

    // Announced by its length: refused before the body is read.
    let announced = ask(&mut client, json!({ "get": http.url("/big") })).await;
    assert_eq!(announced["error"], "TooLarge", "{announced}");
    // Endless and chunked: cut at the limit.
    let endless = ask(&mut client, json!({ "get": http.url("/endless") })).await;
    assert_eq!(endless["error"], "TooLarge", "{endless}");
    let got = ask(&mut client, json!({ "get": http.url("/ok") })).await;
    assert_eq!(got["status"], 200, "{got}");
}

#[tokio::test]
async fn requests_in_flight_are_limited_per_app_and_given_back() {
    let http = HttpServer::start().await;
    let limits = toml! { max_outbound_requests_in_flight = 4 };
    let server = TestServer::start(&fetch_app(&[http.url("")], limits)).await;
    let mut client = fetch_client(&server).await;

    let command = json!({ "burst": http.url("/hold"), "count": 12 });
    send_text(&mut client, &command.to_string()).await;
    wait_until(|| http.held() == 4).await;
    http.release();
    let burst = next_json(&mut client).await;
    assert_eq!(
        burst,
        json!({ "ok": 4, "errors": { "ConnectionLimitReached": 8 } })
    );
    let stats = server.app_stats("fetch");
    assert_eq!(stats.outbound_requests_limited, 8);
    assert_eq!(stats.outbound_requests_ok, 4);
    // The slots came back when the responses were read.
    let again = ask(&mut client, json!({ "burst": http.url("/ok"), "count": 4 })).await;
    assert_eq!(again, json!({ "ok": 4, "errors": {} }));
}

#[tokio::test]
async fn hostile_flows_cannot_flood_the_service_or_hold_the_host() {
    let http = HttpServer::start().await;
    let limits = toml! {
        max_outbound_requests_in_flight = 8
        max_outbound_requests_per_execution = 100
        cpu_time = "10s"
        outbound_first_byte_timeout = "1s"
    };
    let server = TestServer::start(&fetch_app(&[http.url("")], limits)).await;
    let mut client = fetch_client(&server).await;

    // Thousands of requests in a loop: the service sees the first 100.
    let looped = ask(
        &mut client,
        json!({ "loop": http.url("/ok"), "count": 3000 }),
    )
    .await;
    assert_eq!(looped, json!({ "ok": 100, "Limited": 2900 }));
    assert_eq!(http.requests(), 100);

    // Endless bodies it never reads: 8 in flight, the rest refused; the
    // slots come back when the execution ends.
    let unread = ask(
        &mut client,
        json!({ "burst": http.url("/endless"), "count": 50, "read": false }),
    )
    .await;
    assert_eq!(
        unread,
        json!({ "ok": 8, "errors": { "ConnectionLimitReached": 42 } })
    );
    let got = ask(&mut client, json!({ "get": http.url("/ok") })).await;
    assert_eq!(got["status"], 200, "{got}");

    // Many servers that never answer, at once: each times out.
    let silent = ask(
        &mut client,
        json!({ "burst": http.url("/silent"), "count": 8 }),
    )
    .await;
    assert_eq!(
        silent,
        json!({ "ok": 0, "errors": { "ConnectionReadTimeout": 8 } })
    );

    // Huge headers: over wasmtime-wasi-http's bound on header fields
    // (128 KiB), or over the app's hostcall fuel, trap that execution only
    // (1011); the host and the other connection serve on.
    for size in [200usize << 10, 4 << 20] {
        let mut hostile = fetch_client(&server).await;
        let command = json!({ "header": http.url("/ok"), "size": size });
        send_text(&mut hostile, &command.to_string()).await;
        let close = next_close(&mut hostile).await;
        assert_eq!(u16::from(close.code), 1011, "a {size}-byte header");
    }
    let got = ask(&mut client, json!({ "get": http.url("/ok") })).await;
    assert_eq!(got["status"], 200, "{got}");
}

/// Wait (up to the harness's timeout) until `condition` holds.
async fn wait_until(condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + wsflow_tests::TIMEOUT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "condition not met");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn waiting_on_the_network_is_wall_time_not_cpu_time() {
    let http = HttpServer::start().await;
    // The flow waits far longer than its CPU time for a silent server: it
    // gets a timeout, and is not stopped.
    let limits = toml! {
        cpu_time = "200ms"
        outbound_first_byte_timeout = "1s"
    };
    let server = TestServer::start(&fetch_app(&[http.url("")], limits)).await;
    let mut client = fetch_client(&server).await;

    let silent = ask(
        &mut client,
        json!({ "burst": http.url("/silent"), "count": 3 }),
    )
    .await;
    assert_eq!(
        silent,
        json!({ "ok": 0, "errors": { "ConnectionReadTimeout": 3 } })
    );
    let stats = server.app_stats("fetch");
    assert_eq!(stats.executions_limit_exceeded, 0);
    assert_eq!(stats.outbound_requests_timeout, 3);
}

#[tokio::test]
async fn https_verifies_the_server_against_the_webpki_roots() {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    // A TLS server whose certificate is signed by a test CA no public
    // root vouches for.
    let dir = tempfile::tempdir().unwrap();
    let pki = wsflow_tests::pki::Pki::generate(dir.path());
    let chain: Vec<CertificateDer> =
        CertificateDer::pem_slice_iter(pki.server_chain_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (hello, mut hellos) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let hello = hello.clone();
            tokio::spawn(async move {
                let _ = hello.send(());
                let _ = acceptor.accept(stream).await;
            });
        }
    });

    let url = format!("https://127.0.0.1:{port}/ok");
    let server = TestServer::start(&fetch_app(
        &[format!("https://127.0.0.1:{port}")],
        Table::new(),
    ))
    .await;
    let mut client = fetch_client(&server).await;
    let refused = ask(&mut client, json!({ "get": url })).await;
    assert_eq!(refused["error"], "Failed", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("Tls"),
        "{refused}"
    );
    hellos
        .recv()
        .await
        .expect("the host connected and spoke TLS");
    assert_eq!(server.app_stats("fetch").outbound_requests_failed, 1);
}
