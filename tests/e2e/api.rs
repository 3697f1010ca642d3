//! The server API: backends publish to groups, send to connections and
//! list groups with an app's bearer token; everything else is refused the
//! same way.

use std::net::SocketAddr;
use std::time::Duration;

use toml::{Table, toml};
use wsflow_tests::{HttpResponse, Manifest, TestServer, http_request};

use crate::groups::{Peer, room_app};

const TOKEN: &str = "chat-token-0123456789";
const OTHER_TOKEN: &str = "other-token-0123456789";

fn api_app(name: &str, token: &str, api: Table) -> Manifest {
    api_app_with(name, token, api, Table::new())
}

/// [`api_app`] with more trigger settings.
fn api_app_with(name: &str, token: &str, api: Table, trigger: Table) -> Manifest {
    let mut settings = Table::new();
    settings.insert("token".into(), token.into());
    settings.extend(api);
    room_app(name, "close", Table::new(), trigger).api(settings)
}

async fn post(
    api: SocketAddr,
    path: &str,
    token: &str,
    content_type: &str,
    body: &[u8],
) -> HttpResponse {
    let auth = format!("Bearer {token}");
    http_request(
        api,
        "POST",
        path,
        &[("authorization", &auth), ("content-type", content_type)],
        body,
    )
    .await
}

async fn get(api: SocketAddr, path: &str, token: &str) -> HttpResponse {
    let auth = format!("Bearer {token}");
    http_request(api, "GET", path, &[("authorization", &auth)], b"").await
}

#[tokio::test]
async fn a_backend_publishes_sends_and_lists_through_the_apps_hub() {
    let server = TestServer::start(&api_app("api-chat", TOKEN, Table::new())).await;
    let app = server.app_name("api-chat").to_owned();
    let api = server.start_api().await;
    let url = server.url("/room");
    let mut ann = Peer::connect(&url).await;
    let mut bob = Peer::connect(&url).await;
    for (peer, name) in [(&mut ann, "ann"), (&mut bob, "bob")] {
        peer.ok("join lobby").await;
        peer.ok(&format!("name {name}")).await;
    }
    let ann_id = ann.id().await;
    let bob_id = bob.id().await;

    let published = post(
        api,
        &format!("/v1/apps/{app}/groups/lobby/publish"),
        TOKEN,
        "text/plain; charset=utf-8",
        b"the build is green",
    )
    .await;
    assert_eq!(published.status, 200, "{}", published.body);
    assert_eq!(published.json()["delivered"], 2);
    assert_eq!(ann.delivery().await, "the build is green");
    assert_eq!(bob.delivery().await, "the build is green");

    // Binary unless the content type says text; `except` skips one member.
    let published = post(
        api,
        &format!("/v1/apps/{app}/groups/lobby/publish?except={ann_id}"),
        TOKEN,
        "application/octet-stream",
        b"bytes",
    )
    .await;
    assert_eq!(published.json()["delivered"], 1);
    assert_eq!(bob.delivery().await, "binary bytes");

    let sent = post(
        api,
        &format!("/v1/apps/{app}/connections/{ann_id}/send"),
        TOKEN,
        "application/json",
        br#"{"to":"ann"}"#,
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert_eq!(ann.delivery().await, r#"{"to":"ann"}"#);

    let listed = get(api, &format!("/v1/apps/{app}/groups/lobby"), TOKEN).await;
    let listed = listed.json();
    assert_eq!(listed["count"], 2);
    let members = listed["members"].as_array().unwrap();
    assert!(members.contains(&serde_json::json!({ "id": ann_id, "attachment": "ann" })));
    assert!(members.contains(&serde_json::json!({ "id": bob_id, "attachment": "bob" })));

    let batch = post(
        api,
        &format!("/v1/apps/{app}/batch"),
        TOKEN,
        "application/json",
        br#"[{"group": "lobby", "text": "one"}, {"group": "lobby", "binary": "dHdv", "except": 0}]"#,
    )
    .await;
    assert_eq!(batch.status, 200, "{}", batch.body);
    assert_eq!(batch.json()["results"].as_array().unwrap().len(), 2);
    assert_eq!(ann.delivery().await, "one");
    assert_eq!(ann.delivery().await, "binary two");

    let stats = server.app_stats("api-chat");
    assert_eq!(
        (
            stats.api_publish,
            stats.api_send,
            stats.api_group,
            stats.api_batch
        ),
        (2, 1, 1, 1)
    );
}

#[tokio::test]
async fn what_the_hub_refuses_is_answered_with_its_error() {
    let server = TestServer::start(&api_app("api-errors", TOKEN, Table::new())).await;
    let app = server.app_name("api-errors").to_owned();
    let api = server.start_api().await;
    let missing = post(
        api,
        &format!("/v1/apps/{app}/connections/999999/send"),
        TOKEN,
        "text/plain",
        b"hi",
    )
    .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "not-found");
    let bad_group = post(
        api,
        &format!("/v1/apps/{app}/groups/no%20spaces/publish"),
        TOKEN,
        "text/plain",
        b"hi",
    )
    .await;
    assert_eq!(bad_group.status, 400);
    assert_eq!(bad_group.json()["error"], "invalid-name");
    let not_utf8 = post(
        api,
        &format!("/v1/apps/{app}/groups/lobby/publish"),
        TOKEN,
        "text/plain",
        b"\xff\xfe",
    )
    .await;
    assert_eq!(not_utf8.status, 400);
    // A batch with one bad item publishes nothing.
    let url = server.url("/room");
    let mut ann = Peer::connect(&url).await;
    ann.ok("join lobby").await;
    let batch = post(
        api,
        &format!("/v1/apps/{app}/batch"),
        TOKEN,
        "application/json",
        br#"[{"group": "lobby", "text": "first"}, {"group": "bad name", "text": "second"}]"#,
    )
    .await;
    assert_eq!(batch.status, 400, "{}", batch.body);
    assert!(
        batch.json()["detail"]
            .as_str()
            .unwrap()
            .starts_with("[1].group")
    );
    for garbage in [&b"not json"[..], b"{}", br#"[{"group": "lobby"}]"#] {
        let refused = post(
            api,
            &format!("/v1/apps/{app}/batch"),
            TOKEN,
            "application/json",
            garbage,
        )
        .await;
        assert_eq!(refused.status, 400, "{}", refused.body);
    }
    ann.ok("count lobby").await;
    assert!(ann.inbox.is_empty(), "{:?}", ann.inbox);
}

#[tokio::test]
async fn no_token_a_wrong_one_or_another_apps_are_refused_alike() {
    let server = TestServer::start_apps(&[
        api_app("api-mine", TOKEN, Table::new()),
        api_app("api-other", OTHER_TOKEN, Table::new()),
        room_app("api-none", "close", Table::new(), Table::new()),
    ])
    .await;
    let mine = server.app_name("api-mine").to_owned();
    let none = server.app_name("api-none").to_owned();
    let api = server.start_api().await;
    let publish = |app: &str| format!("/v1/apps/{app}/groups/lobby/publish");
    let mut refusals = Vec::new();
    for (path, token) in [
        (publish(&mine), "wrong-token-0123456789"),
        (publish(&mine), OTHER_TOKEN),
        (publish(&mine), ""),
        (publish("no-such-app"), TOKEN),
        (publish(&none), TOKEN),
    ] {
        refusals.push(post(api, &path, token, "text/plain", b"hi").await);
    }
    let unauthenticated = http_request(api, "POST", &publish(&mine), &[], b"hi").await;
    refusals.push(unauthenticated);
    for refusal in &refusals {
        assert_eq!(refusal.status, 401);
        assert_eq!(refusal.body, refusals[0].body, "every 401 reads the same");
    }
    let right = post(api, &publish(&mine), TOKEN, "text/plain", b"hi").await;
    assert_eq!(right.status, 200, "{}", right.body);
}

#[tokio::test]
async fn bodies_and_request_rates_are_capped_per_app() {
    let api_limits = toml! { requests_per_second = 1 burst = 3 };
    let manifest = api_app_with(
        "api-limits",
        TOKEN,
        api_limits,
        toml! { max_message_size = 1024 },
    );
    let server = TestServer::start(&manifest).await;
    let app = server.app_name("api-limits").to_owned();
    let api = server.start_api().await;
    let path = format!("/v1/apps/{app}/groups/lobby/publish");
    let too_large = post(api, &path, TOKEN, "text/plain", &[b'x'; 2048]).await;
    assert_eq!(too_large.status, 413, "{}", too_large.body);
    assert_eq!(too_large.json()["error"], "too-large");
    // The 413 took one of the burst of 3; two more pass, then 429.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(post(api, &path, TOKEN, "text/plain", b"hi").await);
    }
    assert_eq!(statuses[0].status, 200);
    assert_eq!(statuses[1].status, 200);
    let limited = statuses.iter().find(|response| response.status == 429);
    let limited = limited.expect("the burst ran out");
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(limited.json()["error"], "rate-limited");
    assert!(server.app_stats("api-limits").api_refused >= 2);
}

#[tokio::test]
async fn a_backend_that_never_finishes_its_body_holds_one_place_in_flight_only() {
    use tokio::io::AsyncWriteExt as _;
    let manifest = api_app("api-in-flight", TOKEN, toml! { max_in_flight = 1 });
    let server = TestServer::start(&manifest).await;
    let app = server.app_name("api-in-flight").to_owned();
    let api = server.start_api().await;
    let path = format!("/v1/apps/{app}/groups/lobby/publish");
    // Half a body, never finished: its request is in flight.
    let mut stalled = tokio::net::TcpStream::connect(api).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: api\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: text/plain\r\ncontent-length: 100\r\n\r\nhalf"
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    let busy = loop {
        let response = post(api, &path, TOKEN, "text/plain", b"hi").await;
        if response.status == 429 {
            break response;
        }
        // The stalled request may not have reached the server yet.
        assert_eq!(response.status, 200, "{}", response.body);
        tokio::task::yield_now().await;
    };
    assert_eq!(busy.json()["error"], "too-many-in-flight");
    assert_eq!(busy.header("retry-after"), Some("1"));
    drop(stalled);
    let after = loop {
        let response = post(api, &path, TOKEN, "text/plain", b"hi").await;
        if response.status == 200 {
            break response;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(after.json()["delivered"], 0);
}

#[tokio::test]
async fn a_backend_closes_a_connection_with_its_code_and_reason() {
    let server = TestServer::start(&api_app("api-close", TOKEN, Table::new())).await;
    let app = server.app_name("api-close").to_owned();
    let api = server.start_api().await;
    let mut ann = Peer::connect(&server.url("/room")).await;
    let id = ann.id().await;
    let path = format!("/v1/apps/{app}/connections/{id}/close");
    for (body, problem) in [
        (&br#"{"code": 1005}"#[..], "not a close code"),
        (br#"{"code": 4000, "reason": "#, "a close is"),
        (br#"{"code": 4000, "why": "x"}"#, "a close is"),
    ] {
        let refused = post(api, &path, TOKEN, "application/json", body).await;
        assert_eq!(refused.status, 400, "{}", refused.body);
        assert!(
            refused.json()["detail"].as_str().unwrap().contains(problem),
            "{}",
            refused.body
        );
    }
    let long = format!(r#"{{"code": 4000, "reason": "{}"}}"#, "x".repeat(124));
    let refused = post(api, &path, TOKEN, "application/json", long.as_bytes()).await;
    assert_eq!(refused.status, 400, "{}", refused.body);

    let closed = post(
        api,
        &path,
        TOKEN,
        "application/json",
        br#"{"code": 4000, "reason": "account suspended"}"#,
    )
    .await;
    assert_eq!(closed.status, 200, "{}", closed.body);
    assert_eq!(
        ann.server_close().await,
        (4000, "account suspended".to_owned())
    );
    // Gone: a second close finds nothing.
    let again = async {
        loop {
            let response = post(api, &path, TOKEN, "application/json", b"").await;
            if response.status == 404 {
                return response;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let again = tokio::time::timeout(wsflow_tests::TIMEOUT, again)
        .await
        .expect("the closed connection is gone from the hub");
    assert_eq!(again.json()["error"], "not-found");
    assert!(server.app_stats("api-close").api_close >= 6);
}

#[tokio::test]
async fn in_a_cluster_the_api_of_one_host_reaches_connections_on_another() {
    let Some(nats) = wsflow_tests::nats::NatsServer::start().await else {
        return;
    };
    let manifest = api_app("api-cluster", TOKEN, Table::new());
    let a = TestServer::start_in_cluster(&manifest, &nats.url()).await;
    let b = TestServer::start_in_cluster(&manifest, &nats.url()).await;
    let app = a.app_name("api-cluster").to_owned();
    let api = a.start_api().await;
    let mut bob = Peer::connect(&b.app_url("api-cluster", "/room")).await;
    bob.ok("join lobby").await;
    let id = bob.id().await;
    // Host a learns that host b holds `lobby` within a heartbeat or two.
    let delivered = async {
        loop {
            let published = post(
                api,
                &format!("/v1/apps/{app}/groups/lobby/publish"),
                TOKEN,
                "text/plain",
                b"from the backend",
            )
            .await;
            assert_eq!(published.status, 200, "{}", published.body);
            if let Ok(Ok(text)) = tokio::time::timeout(Duration::from_millis(200), async {
                Ok::<_, ()>(bob.delivery().await)
            })
            .await
            {
                return text;
            }
        }
    };
    let text = tokio::time::timeout(wsflow_tests::TIMEOUT, delivered)
        .await
        .expect("a publish on host a reaches a member on host b");
    assert_eq!(text, "from the backend");
    let sent = post(
        api,
        &format!("/v1/apps/{app}/connections/{id}/send"),
        TOKEN,
        "text/plain",
        b"just you",
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    let closed = post(
        api,
        &format!("/v1/apps/{app}/connections/{id}/close"),
        TOKEN,
        "application/json",
        br#"{"code": 4001, "reason": "moved"}"#,
    )
    .await;
    assert_eq!(closed.status, 200, "{}", closed.body);
    assert_eq!(bob.server_close().await, (4001, "moved".to_owned()));
    assert!(
        bob.inbox.iter().any(|text| text == "just you"),
        "{:?}",
        bob.inbox
    );
}
