//! Data mode: one execution per message, in order per connection, in
//! parallel across connections.

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::{self, Message};
use toml::toml;
use wsflow_tests::{
    Manifest, Refused, TestServer, connect, next_message, next_text, programs, request, send_text,
    try_connect,
};

fn echo_server_manifest() -> Manifest {
    Manifest::one_flow(
        "echo",
        programs::EXAMPLE_ECHO,
        toml! { path = "/echo" mode = "data" },
    )
}

#[tokio::test]
async fn echoes_text_as_text_and_binary_as_binary() {
    let server = TestServer::start(&echo_server_manifest()).await;
    let mut client = connect(&server.url("/echo")).await;

    send_text(&mut client, "hello").await;
    assert_eq!(next_message(&mut client).await, Message::text("hello"));

    let bytes = vec![0u8, 1, 2, 255];
    client.send(Message::binary(bytes.clone())).await.unwrap();
    assert_eq!(next_message(&mut client).await, Message::binary(bytes));

    send_text(&mut client, "").await;
    assert_eq!(next_message(&mut client).await, Message::text(""));
}

#[tokio::test]
async fn thousand_messages_on_one_connection_arrive_in_order() {
    let server = TestServer::start(&echo_server_manifest()).await;
    let mut client = connect(&server.url("/echo")).await;
    for i in 0..1000 {
        client
            .feed(Message::text(format!("message {i}")))
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    for i in 0..1000 {
        assert_eq!(next_text(&mut client).await, format!("message {i}"));
    }
}

#[tokio::test]
async fn fifty_connections_in_parallel() {
    let server = TestServer::start(&echo_server_manifest()).await;
    let url = server.url("/echo");
    let clients = (0..50).map(|c| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut client = connect(&url).await;
            for i in 0..20 {
                send_text(&mut client, &format!("{c}/{i}")).await;
            }
            for i in 0..20 {
                assert_eq!(next_text(&mut client).await, format!("{c}/{i}"));
            }
        })
    });
    for client in clients.collect::<Vec<_>>() {
        client.await.unwrap();
    }
}

#[tokio::test]
async fn unknown_path_is_refused_with_404_before_the_upgrade() {
    let server = TestServer::start(&echo_server_manifest()).await;
    let error = tokio_tungstenite::connect_async(server.url("/nowhere"))
        .await
        .expect_err("the upgrade must be refused");
    let tungstenite::Error::Http(response) = error else {
        panic!("expected an HTTP error response, got {error}");
    };
    assert_eq!(response.status(), 404);
    let body = String::from_utf8(response.body().clone().unwrap()).unwrap();
    assert_eq!(body, "no handler for path /nowhere");
}

#[tokio::test]
async fn flow_sees_path_query_and_header_params() {
    let manifest = Manifest::one_flow(
        "params",
        programs::PARAMS,
        toml! { path = "/rooms/{room}/{user}" mode = "data" },
    );
    let server = TestServer::start(&manifest).await;
    let url = server.url("/rooms/blue%20sky/ann?tag=a&tag=b&q=x+y");
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    request
        .headers_mut()
        .insert("X-Client", "tests".parse().unwrap());
    let (mut client, _) = tokio_tungstenite::connect_async(request).await.unwrap();

    send_text(&mut client, "hi").await;
    let reply: serde_json::Value = serde_json::from_str(&next_text(&mut client).await).unwrap();
    assert_eq!(
        reply,
        serde_json::json!({
            "mode": "data",
            "content": { "text": "hi" },
            "path": { "room": "blue sky", "user": "ann" },
            "query": { "tag": ["a", "b"], "q": "x y" },
            "headers": { "x-client": "tests" },
            "properties": {},
            "inputs": {},
        })
    );
}

async fn counts(url: &str, messages: usize) -> Vec<String> {
    let mut client = connect(url).await;
    let mut replies = Vec::new();
    for _ in 0..messages {
        send_text(&mut client, "count").await;
        replies.push(next_text(&mut client).await);
    }
    replies
}

#[tokio::test]
async fn each_message_gets_a_fresh_instance_by_default() {
    let server = TestServer::start(&Manifest::one_flow(
        "counter",
        programs::COUNTER,
        toml! { path = "/count" },
    ))
    .await;
    assert_eq!(counts(&server.url("/count"), 3).await, ["1", "1", "1"]);
}

#[tokio::test]
async fn instance_reuse_keeps_state_per_connection_only() {
    let manifest = Manifest::one_flow(
        "counter",
        programs::COUNTER,
        toml! { path = "/count" instance = "reuse" },
    );
    let server = TestServer::start(&manifest).await;
    let url = server.url("/count");
    assert_eq!(counts(&url, 3).await, ["1", "2", "3"]);
    assert_eq!(counts(&url, 2).await, ["1", "2"]);
}

/// The replies of the scribble program to `messages` messages on one new
/// connection: `clean` while the instance's memory is as the component
/// says it starts.
async fn scribbles(url: &str, messages: usize) -> Vec<String> {
    let mut client = connect(url).await;
    let mut replies = Vec::new();
    for _ in 0..messages {
        send_text(&mut client, "scribble").await;
        replies.push(next_text(&mut client).await);
    }
    replies
}

#[tokio::test]
async fn a_fresh_instance_never_sees_memory_an_earlier_one_wrote() {
    let server = TestServer::start(&Manifest::one_flow(
        "scribble",
        programs::SCRIBBLE,
        toml! { path = "/scribble" },
    ))
    .await;
    let url = server.url("/scribble");
    // Each execution writes 1 MiB of statics; the pool's slots are reused
    // from one message to the next and between connections.
    assert_eq!(scribbles(&url, 4).await, ["clean"; 4]);
    assert_eq!(scribbles(&url, 4).await, ["clean"; 4]);
}

#[tokio::test]
async fn a_reused_instance_keeps_its_memory_for_its_connection_only() {
    let server = TestServer::start(&Manifest::one_flow(
        "scribble",
        programs::SCRIBBLE,
        toml! { path = "/scribble" instance = "reuse" },
    ))
    .await;
    let url = server.url("/scribble");
    let dirty = "dirty: small at 0, large at 0, initialised at 0";
    assert_eq!(scribbles(&url, 2).await, ["clean", dirty]);
    assert_eq!(scribbles(&url, 2).await, ["clean", dirty]);
}

#[tokio::test]
async fn reused_instances_are_capped_per_app_before_the_upgrade() {
    let manifest = Manifest::one_flow(
        "counter",
        programs::COUNTER,
        toml! { path = "/count" instance = "reuse" },
    )
    .limits(toml! { max_reused_instances = 2 });
    let server = TestServer::start(&manifest).await;
    let url = server.url("/count");
    let mut first = connect(&url).await;
    let mut second = connect(&url).await;
    let refused = try_connect(request(&url, &[]))
        .await
        .expect_err("a third instance is over the cap");
    assert_eq!(
        refused,
        Refused {
            status: 503,
            body:
                "the app is at its limit of 2 connections with a reused instance; try again later"
                    .into()
        }
    );
    for client in [&mut first, &mut second] {
        send_text(client, "count").await;
        assert_eq!(next_text(client).await, "1");
    }
    drop(first);
    server
        .wait_for_stats("counter", "down to one open connection", |stats| {
            stats.connections_open == 1
        })
        .await;
    let mut third = try_connect(request(&url, &[]))
        .await
        .expect("the freed instance slot takes a third connection");
    send_text(&mut third, "count").await;
    assert_eq!(next_text(&mut third).await, "1");
}

#[tokio::test]
async fn the_apps_instances_together_stay_within_its_app_memory() {
    let manifest = Manifest::one_flow(
        "scribble",
        programs::SCRIBBLE,
        toml! { path = "/scribble" instance = "reuse" },
    )
    .limits(toml! { app_memory = "8MiB" });
    let server = TestServer::start(&manifest).await;
    let url = server.url("/scribble");
    // Each reused instance holds more than 1 MiB (its statics alone), for
    // its connection's life: far fewer than 20 fit in 8 MiB.
    let mut clients = Vec::new();
    let (mut served, mut stopped) = (0, 0);
    for _ in 0..20 {
        let mut client = connect(&url).await;
        send_text(&mut client, "scribble").await;
        match next_message(&mut client).await {
            Message::Text(text) => {
                assert_eq!(text.as_str(), "clean");
                served += 1;
            }
            Message::Close(Some(close)) => {
                assert_eq!(u16::from(close.code), 1011);
                stopped += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
        clients.push(client);
    }
    assert!(
        served > 0 && stopped > 0,
        "served {served}, stopped {stopped}"
    );
    let line = server
        .wait_for_log("execution stopped: app memory limit")
        .await;
    assert!(line.contains("over its app_memory of 8388608"), "{line}");
    let stats = server.app_stats("scribble");
    assert!(stats.guest_memory <= 8 << 20, "{stats:?}");

    // Their memory comes back with their connections.
    drop(clients);
    server
        .wait_for_stats("scribble", "no guest memory held", |stats| {
            stats.guest_memory == 0
        })
        .await;
    let mut next = connect(&url).await;
    send_text(&mut next, "scribble").await;
    assert_eq!(next_text(&mut next).await, "clean");
}
