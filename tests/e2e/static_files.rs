//! `static_dir` on a trigger: plain HTTP requests get files, upgrade
//! requests on the same port still reach their handlers.

use tokio::io::AsyncWriteExt;
use toml::toml;
use wsflow_tests::{
    HttpResponse, Manifest, TestServer, Trigger, connect, http_request, next_text, programs,
    send_text, table,
};

async fn http(server: &TestServer, method: &str, path: &str, body: &[u8]) -> HttpResponse {
    http_request(server.endpoints()[0].addr, method, path, &[], body).await
}

async fn get(server: &TestServer, path: &str) -> HttpResponse {
    http(server, "GET", path, b"").await
}

#[tokio::test]
async fn plain_requests_get_files_and_upgrades_reach_their_handler() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("js")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>chat</h1>").unwrap();
    std::fs::write(site.join("js/app.js"), "connect()").unwrap();
    std::fs::write(site.join(".secret"), "hidden").unwrap();
    std::fs::write(dir.path().join("outside.txt"), "outside").unwrap();
    let manifest = Manifest::app("site")
        .flow("echo", programs::EXAMPLE_ECHO)
        .trigger(
            Trigger::on_port(0)
                .with(table([("static_dir", site.display().to_string().into())]))
                .handler(toml! { path = "/echo" flow = "echo" }),
        );
    let server = TestServer::start(&manifest).await;

    let index = get(&server, "/").await;
    assert_eq!((index.status, index.body.as_str()), (200, "<h1>chat</h1>"));
    assert_eq!(
        index.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let script = get(&server, "/js/app.js").await;
    assert_eq!((script.status, script.body.as_str()), (200, "connect()"));
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    let head = http(&server, "HEAD", "/js/app.js", b"").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("9"));
    assert_eq!(head.body, "");

    for outside in [
        "/missing.html",
        "/../outside.txt",
        "/js/../../outside.txt",
        "/%2e%2e/outside.txt",
        "/js%2f..%2f..%2foutside.txt",
        "/.secret",
        "/echo",
    ] {
        let response = get(&server, outside).await;
        assert_eq!(response.status, 404, "{outside}");
        assert!(!response.body.contains("outside") && !response.body.contains("hidden"));
    }
    let post = http(&server, "POST", "/", b"").await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));

    // The WebSocket side of the same port is untouched.
    let mut client = connect(&server.url("/echo")).await;
    send_text(&mut client, "still a WebSocket server").await;
    assert_eq!(next_text(&mut client).await, "still a WebSocket server");
}

#[tokio::test]
async fn clients_that_never_read_a_large_file_hold_no_handshake_slot() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "home").unwrap();
    // Far more than the socket buffers on both sides hold.
    std::fs::write(site.join("big.bin"), vec![7u8; 32 << 20]).unwrap();
    // Larger than any file served; sparse, so it costs no disk.
    std::fs::File::create(site.join("huge.bin"))
        .unwrap()
        .set_len(65 << 20)
        .unwrap();
    let manifest = Manifest::app("hoarders")
        .flow("echo", programs::EXAMPLE_ECHO)
        .trigger(
            Trigger::on_port(0)
                .with(table([
                    ("static_dir", site.display().to_string().into()),
                    ("max_pending_handshakes", 2.into()),
                    ("handshake_timeout", "60s".into()),
                ]))
                .handler(toml! { path = "/echo" flow = "echo" }),
        );
    let server = TestServer::start(&manifest).await;
    let addr = server.endpoints()[0].addr;

    // Twice as many clients as handshake slots ask for the big file and
    // never read a byte of it.
    let mut hoarders = Vec::new();
    for _ in 0..4 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut tcp = socket.connect(addr).await.unwrap();
        tcp.write_all(b"GET /big.bin HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        hoarders.push(tcp);
    }

    // The listener still answers: plain requests and upgrades.
    let index = get(&server, "/").await;
    assert_eq!((index.status, index.body.as_str()), (200, "home"));
    let mut client = connect(&server.url("/echo")).await;
    send_text(&mut client, "served").await;
    assert_eq!(next_text(&mut client).await, "served");

    let huge = get(&server, "/huge.bin").await;
    assert_eq!(huge.status, 403);
    assert!(
        huge.body.contains("larger than the largest file"),
        "{}",
        huge.body
    );
    let head = http(&server, "HEAD", "/huge.bin", b"").await;
    assert_eq!(head.status, 403);
    drop(hoarders);
}
