//! Group history: positions, reads, joins from a position with nothing
//! lost or doubled at the seam, messages sent first from `on_connect`, and
//! what a hostile flow gets for extreme arguments.

use std::collections::BTreeSet;

use toml::toml;
use wsflow_tests::{
    Client, Manifest, TestServer, Trigger, connect, http_request, next_text, programs, request,
    send_text, try_connect,
};

pub(crate) fn recall(name: &str, size: i64) -> Manifest {
    Manifest::app(name)
        .flow("recall", programs::RECALL)
        .trigger(Trigger::on_port(0).handler(toml! {
            path = "/recall/{room}"
            flow = "recall"
            on_connect = "recall"
        }))
        .history(toml! {
            groups = "room:*"
            size = size
            ttl = "10m"
            position_field = "pos"
        })
}

/// Send `command` and read until its answer (`ok ...` or `error ...`),
/// keeping what the room delivered meanwhile in `delivered`.
pub(crate) async fn ask(client: &mut Client, command: &str, delivered: &mut Vec<String>) -> String {
    send_text(client, command).await;
    loop {
        let text = next_text(client).await;
        if text.starts_with("ok ") || text.starts_with("error ") {
            return text;
        }
        delivered.push(text);
    }
}

/// The position in an answer `ok pos EPOCH:OFFSET`.
pub(crate) fn position(answer: &str) -> String {
    answer
        .strip_prefix("ok pos ")
        .unwrap_or_else(|| panic!("not a position: {answer}"))
        .to_owned()
}

/// The `n` of a delivered `{"pos":...,"n":N}`.
pub(crate) fn number(line: &str) -> u64 {
    let value: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"));
    value["n"]
        .as_u64()
        .unwrap_or_else(|| panic!("no n: {line}"))
}

#[tokio::test]
async fn positions_grow_by_one_and_reads_say_when_they_cannot_reach_back() {
    let app = "history-positions";
    let server = TestServer::start(&recall(app, 5)).await;
    let mut client = connect(&server.url("/recall/a")).await;
    let mut delivered = Vec::new();
    let mut positions = Vec::new();
    for n in 1..=7 {
        let answer = ask(&mut client, &format!(r#"pub {{"n":{n}}}"#), &mut delivered).await;
        positions.push(position(&answer));
    }
    let (epoch, _) = positions[0].split_once(':').unwrap();
    let offsets: Vec<String> = positions
        .iter()
        .map(|p| p.strip_prefix(&format!("{epoch}:")).unwrap().to_owned())
        .collect();
    assert_eq!(offsets, ["1", "2", "3", "4", "5", "6", "7"]);
    // The member got each message with its position added.
    let mut live = delivered.clone();
    while live.len() < 7 {
        live.push(next_text(&mut client).await);
    }
    assert_eq!(live[0], format!(r#"{{"pos":"{}","n":1}}"#, positions[0]));

    // Five kept: after 3, all of 4..7; after 1, 2 is gone.
    let read = ask(&mut client, &format!("read {} 10", positions[2]), &mut live).await;
    assert!(
        read.starts_with(&format!("ok read complete=true head={} N=4 ", positions[6])),
        "{read}"
    );
    let read = ask(&mut client, &format!("read {} 10", positions[0]), &mut live).await;
    assert!(
        read.starts_with("ok read complete=false") && read.contains("N=5"),
        "{read}"
    );
    // Newest two; a position of another epoch; one from the future.
    let read = ask(&mut client, "read - 2", &mut live).await;
    assert!(
        read.contains("N=2") && read.contains(r#""n":6"#) && read.contains(r#""n":7"#),
        "{read}"
    );
    let read = ask(&mut client, "read 1:3 10", &mut live).await;
    assert!(read.starts_with("ok read complete=false"), "{read}");
    let read = ask(&mut client, &format!("read {epoch}:99 10"), &mut live).await;
    assert!(read.starts_with("ok read complete=false"), "{read}");
    // A group no [[history]] names.
    let answer = ask(&mut client, "plain lobby hi", &mut live).await;
    assert_eq!(answer, "ok pos none");
}

/// Read `count` lines of numbered room messages, adding their numbers to
/// `seen`; a `recovered` line between them must say `complete=true` and
/// does not count. Answers the position of the last message.
pub(crate) async fn read_numbered(
    client: &mut Client,
    count: usize,
    seen: &mut Vec<u64>,
    round: usize,
) -> String {
    let mut last = String::new();
    let mut read = 0;
    while read < count {
        let line = next_text(client).await;
        if line.starts_with("recovered") {
            assert_eq!(line, "recovered complete=true", "round {round}");
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        last = value["pos"].as_str().unwrap().to_owned();
        seen.push(number(&line));
        read += 1;
    }
    last
}

#[tokio::test]
async fn a_reconnecting_client_gets_every_message_once_and_in_order_while_others_publish() {
    let app = "history-seam";
    let server = TestServer::start(&recall(app, 1000)).await;
    let url = server.url("/recall/seam");
    let total: u64 = 400;
    let mut publisher = connect(&url).await;
    let mut watcher = connect(&url).await;
    let publishing = tokio::spawn(async move {
        let mut ignored = Vec::new();
        for n in 1..=total {
            let answer = ask(&mut publisher, &format!(r#"pub {{"n":{n}}}"#), &mut ignored).await;
            assert!(answer.starts_with("ok pos "), "{answer}");
        }
        publisher
    });

    // The watcher reads a while, remembers the last position, goes away
    // and comes back several times while the publisher goes on.
    let mut seen: Vec<u64> = Vec::new();
    let mut last;
    for round in 0..4 {
        last = read_numbered(&mut watcher, 20, &mut seen, round).await;
        drop(watcher);
        watcher = connect(&format!("{url}?since={last}")).await;
    }
    // Read on until the last message.
    while seen.last() != Some(&total) {
        let line = next_text(&mut watcher).await;
        if line.starts_with("recovered") {
            assert_eq!(line, "recovered complete=true");
            continue;
        }
        seen.push(number(&line));
    }
    publishing.await.unwrap();
    let first = seen[0];
    let expected: Vec<u64> = (first..=total).collect();
    assert_eq!(
        seen, expected,
        "every message once, in order, across four reconnects"
    );
}

/// The numbers of the next `count` messages, which must all be room
/// messages.
async fn numbers(client: &mut Client, count: usize) -> Vec<u64> {
    let mut numbers = Vec::new();
    for _ in 0..count {
        numbers.push(number(&next_text(client).await));
    }
    numbers
}

#[tokio::test]
async fn joining_from_a_position_while_others_publish_loses_and_doubles_nothing() {
    let app = "history-join-from";
    let server = TestServer::start(&recall(app, 1000)).await;
    let url = server.url("/recall/lobby");
    let total: u64 = 300;
    let mut publisher = connect(&url).await;
    let mut ignored = Vec::new();
    let mut positions = Vec::new();
    for n in 1..=50 {
        let answer = ask(
            &mut publisher,
            &format!(r#"plain room:seam {{"n":{n}}}"#),
            &mut ignored,
        )
        .await;
        positions.push(position(&answer));
    }
    let publishing = tokio::spawn(async move {
        let mut ignored = Vec::new();
        for n in 51..=total {
            ask(
                &mut publisher,
                &format!(r#"plain room:seam {{"n":{n}}}"#),
                &mut ignored,
            )
            .await;
        }
    });
    // From a flow (`history.join-from`) and from on_connect
    // (`opening.join-from`), each from message 10, while 51.. are
    // published: 11..=300, each once, in order.
    let mut joiner = connect(&url).await;
    let mut replayed = Vec::new();
    let answer = ask(
        &mut joiner,
        &format!("join-from room:seam {}", positions[9]),
        &mut replayed,
    )
    .await;
    assert_eq!(answer, "ok complete=true");
    let opener_url = server.url("/recall/seam");
    let mut opener = connect(&format!("{opener_url}?from={}", positions[9])).await;
    let mut seen: Vec<u64> = replayed.iter().map(|line| number(line)).collect();
    let rest = usize::try_from(total - 10).unwrap() - seen.len();
    seen.extend(numbers(&mut joiner, rest).await);
    let expected: Vec<u64> = (11..=total).collect();
    assert_eq!(seen, expected, "history.join-from");
    let opened = numbers(&mut opener, expected.len()).await;
    assert_eq!(opened, expected, "opening.join-from");
    publishing.await.unwrap();
}

#[tokio::test]
async fn a_client_whose_position_is_gone_is_told_and_gets_what_is_kept() {
    let app = "history-gone";
    let server = TestServer::start(&recall(app, 3)).await;
    let url = server.url("/recall/gone");
    let mut publisher = connect(&url).await;
    let mut ignored = Vec::new();
    let mut positions = Vec::new();
    for n in 1..=10 {
        let answer = ask(&mut publisher, &format!(r#"pub {{"n":{n}}}"#), &mut ignored).await;
        positions.push(position(&answer));
    }
    let mut late = connect(&format!("{url}?since={}", positions[1])).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next_text(&mut late).await);
    }
    let numbers: Vec<u64> = got[..3].iter().map(|line| number(line)).collect();
    assert_eq!(numbers, [8, 9, 10]);
    assert_eq!(got[3], "recovered complete=false");
    // Live from there on.
    let answer = ask(&mut publisher, r#"pub {"n":11}"#, &mut ignored).await;
    assert!(answer.starts_with("ok pos"));
    assert_eq!(number(&next_text(&mut late).await), 11);
    // A malformed position is refused before the upgrade.
    let refused = try_connect(request(&format!("{url}?since=nonsense"), &[]))
        .await
        .unwrap_err();
    assert_eq!(refused.status, 400);
}

#[tokio::test]
async fn what_on_connect_sends_first_comes_before_any_message_of_the_room() {
    let app = "history-first";
    let server = TestServer::start(&recall(app, 10)).await;
    let url = server.url("/recall/busy");
    let mut publisher = connect(&url).await;
    let publishing = tokio::spawn(async move {
        let mut ignored = Vec::new();
        for n in 1..=300 {
            ask(&mut publisher, &format!(r#"pub {{"n":{n}}}"#), &mut ignored).await;
        }
    });
    for n in 0..20 {
        let mut newcomer = connect(&format!("{url}?first=hello-{n}")).await;
        assert_eq!(next_text(&mut newcomer).await, format!("hello-{n}"));
    }
    publishing.await.unwrap();
}

#[tokio::test]
async fn a_hostile_flow_gets_error_values_for_every_extreme_call() {
    let app = "history-hostile";
    let server = TestServer::start(&recall(app, 10)).await;
    let url = server.url("/recall/h");

    // Far more than a connection's queue takes first: refused, the
    // connection still opens with what fit.
    let mut flooded = connect(&format!("{url}?flood=5000")).await;
    let mut fill = 0;
    let summary = loop {
        let line = next_text(&mut flooded).await;
        if line.starts_with("flood") {
            break line;
        }
        fill += 1;
    };
    assert!(summary.ends_with("error=queue-full"), "{summary}");
    assert!(
        summary.starts_with(&format!("flood ok={fill} ")),
        "{summary}"
    );
    assert!(fill > 100 && fill <= 1000, "{summary}");
    let mut ignored = Vec::new();
    assert!(
        ask(&mut flooded, "pub {}", &mut ignored)
            .await
            .starts_with("ok pos")
    );

    // Joining from a group no [[history]] names.
    let mut unkept = connect(&format!("{url}?unkept=1")).await;
    assert_eq!(next_text(&mut unkept).await, "unkept error=not-kept");

    // Outside on_connect, `opening` is refused.
    let mut client = connect(&url).await;
    assert_eq!(
        ask(&mut client, "opening", &mut ignored).await,
        "error not-connecting"
    );

    // 1,400 calls with a 1 MiB name, u32::MAX limits, u64::MAX positions.
    let answer = ask(&mut client, "hostile", &mut ignored).await;
    let counts: BTreeSet<&str> = answer
        .trim_start_matches("ok hostile ")
        .split(' ')
        .collect();
    assert_eq!(
        counts,
        BTreeSet::from([
            "invalid-name=600",
            "not-connecting=200",
            "not-kept=400",
            "ok=200",
        ]),
        "{answer}"
    );
    // The host and the connection are fine.
    assert!(
        ask(&mut client, "pub {}", &mut ignored)
            .await
            .starts_with("ok pos")
    );
    let stats = server.app_stats(app);
    assert!(stats.history_bytes > 0);
    assert!(stats.history_groups >= 1);
}

#[tokio::test]
async fn the_apps_history_stays_within_its_bytes_and_groups() {
    let app = "history-budget";
    let manifest = recall(app, 1000).limits(toml! {
        max_history_bytes = "64KiB"
        max_history_groups = 8
    });
    let server = TestServer::start(&manifest).await;
    let mut client = connect(&server.url("/recall/x")).await;
    let mut ignored = Vec::new();
    // 2 KiB messages into 20 rooms: far more than 64 KiB and 8 groups.
    let padding = "p".repeat(2048);
    for room in 0..20 {
        for _ in 0..10 {
            let answer = ask(
                &mut client,
                &format!("plain room:{room} {padding}"),
                &mut ignored,
            )
            .await;
            assert!(answer.starts_with("ok pos "), "{answer}");
        }
    }
    let stats = server.app_stats(app);
    assert!(stats.history_bytes <= 64 * 1024, "{}", stats.history_bytes);
    assert!(stats.history_groups <= 8, "{}", stats.history_groups);
}

#[tokio::test]
async fn a_backends_publish_through_the_api_is_kept_and_answered_with_its_position() {
    let app = "history-api";
    let token = "history-token-0123456789";
    let server = TestServer::start(&recall(app, 10).api(toml! { token = token })).await;
    let api = server.start_api().await;
    let name = server.app_name(app).to_owned();
    let mut member = connect(&server.url("/recall/news")).await;
    let mut ignored = Vec::new();
    let first = position(&ask(&mut member, r#"pub {"n":1}"#, &mut ignored).await);
    let auth = format!("Bearer {token}");
    let published = http_request(
        api,
        "POST",
        &format!("/v1/apps/{name}/groups/room:news/publish"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        br#"{"n":2}"#,
    )
    .await;
    assert_eq!(published.status, 200, "{}", published.body);
    let (epoch, _) = first.split_once(':').unwrap();
    assert_eq!(published.json()["position"], format!("{epoch}:2"));
    let read = ask(&mut member, &format!("read {first} 10"), &mut ignored).await;
    assert_eq!(
        read,
        format!(r#"ok read complete=true head={epoch}:2 N=1 {{"pos":"{epoch}:2","n":2}}"#)
    );
}

#[tokio::test]
async fn in_a_cluster_without_jetstream_kept_groups_answer_unavailable_and_others_work() {
    let Some(nats) = wsflow_tests::nats::NatsServer::start().await else {
        return;
    };
    let app = recall("history-no-jetstream", 100);
    let host = TestServer::start_in_cluster(&app, &nats.url()).await;
    let mut client = connect(&host.app_url("history-no-jetstream", "/recall/hall")).await;
    let mut ignored = Vec::new();
    // History is kept in JetStream only: without it, nothing is published
    // to a kept group (no message any client could miss unseen).
    assert_eq!(
        ask(&mut client, r#"pub {"n":1}"#, &mut ignored).await,
        "error unavailable"
    );
    assert_eq!(
        ask(&mut client, "read - 10", &mut ignored).await,
        "error unavailable"
    );
    assert!(ignored.is_empty(), "{ignored:?}");
    // A group no [[history]] names is served as ever.
    assert_eq!(
        ask(&mut client, "plain lobby hi", &mut ignored).await,
        "ok pos none"
    );
}
