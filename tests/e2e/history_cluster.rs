//! Group history with `--cluster`: the history lives in the cluster's
//! JetStream (a stream per app), so positions mean the same on every
//! host, a client recovers on any host, and the history outlives the
//! restart of a host and of the broker with its storage. These tests need
//! `nats-server` on PATH, as the other cluster tests do.

use std::collections::BTreeSet;
use std::time::Duration;

use toml::toml;
use wsflow_tests::nats::NatsServer;
use wsflow_tests::{Client, Manifest, TIMEOUT, TestServer, connect, next_text};

use super::history::{ask, number, position, read_numbered, recall};

/// A read's answer: whether it reached back, its head, its messages.
struct Read {
    complete: bool,
    head: String,
    texts: Vec<String>,
}

/// `read SINCE LIMIT` (SINCE `-`: the newest), asked again while the
/// broker cannot be reached (`error unavailable`), up to [`TIMEOUT`].
async fn read(client: &mut Client, since: &str, limit: u32) -> Read {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut delivered = Vec::new();
    loop {
        let answer = ask(client, &format!("read {since} {limit}"), &mut delivered).await;
        if answer == "error unavailable" && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let rest = answer
            .strip_prefix("ok read complete=")
            .unwrap_or_else(|| panic!("not a read: {answer}"));
        let mut words = rest.splitn(4, ' ');
        let complete = words.next().unwrap() == "true";
        let head = words.next().unwrap().strip_prefix("head=").unwrap();
        let count: usize = words
            .next()
            .unwrap()
            .strip_prefix("N=")
            .unwrap()
            .parse()
            .unwrap();
        let texts: Vec<String> = words
            .next()
            .unwrap_or_default()
            .split('|')
            .filter(|text| !text.is_empty())
            .map(str::to_owned)
            .collect();
        assert_eq!(texts.len(), count, "{answer}");
        return Read {
            complete,
            head: head.to_owned(),
            texts,
        };
    }
}

/// `pub TEXT`, asked again while the broker cannot be reached; the
/// position it answers.
async fn publish(client: &mut Client, text: &str) -> String {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut delivered = Vec::new();
    loop {
        let answer = ask(client, &format!("pub {text}"), &mut delivered).await;
        if answer == "error unavailable" && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        return position(&answer);
    }
}

/// A client of `server`'s room `room`, a member of it once this returns
/// (its `on_connect` joined it before the flow answered a first command).
async fn member(server: &TestServer, app: &str, room: &str) -> Client {
    let mut client = connect(&server.app_url(app, &format!("/recall/{room}"))).await;
    let mut delivered = Vec::new();
    let answer = ask(&mut client, "read - 0", &mut delivered).await;
    assert!(answer.starts_with("ok read"), "{answer}");
    client
}

fn offset(position: &str) -> u64 {
    position.split_once(':').unwrap().1.parse().unwrap()
}

fn epoch(position: &str) -> &str {
    position.split_once(':').unwrap().0
}

async fn cluster_of_two(nats: &NatsServer, app: &Manifest) -> (TestServer, TestServer) {
    let a = TestServer::start_in_cluster(app, &nats.url()).await;
    let b = TestServer::start_in_cluster(app, &nats.url()).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_mean_the_same_on_every_host_and_concurrent_publishes_take_consecutive_offsets() {
    let Some(nats) = NatsServer::start_jetstream().await else {
        return;
    };
    let app = "hist-shared";
    let (a, b) = cluster_of_two(&nats, &recall(app, 1000)).await;
    let mut on_a = member(&a, app, "r").await;
    let mut on_b = member(&b, app, "r").await;
    let first = publish(&mut on_a, r#"{"n":1}"#).await;
    assert_eq!(offset(&first), 1);
    // B's member gets it live, with the position A answered.
    let stamped = format!(r#"{{"pos":"{first}","n":1}}"#);
    assert_eq!(next_text(&mut on_b).await, stamped);
    // B reads it at that position.
    let page = read(&mut on_b, "-", 10).await;
    assert_eq!(page.head, first);
    assert_eq!(page.texts, [stamped]);

    // Publishers on both hosts at once: distinct, consecutive offsets of
    // one epoch.
    const EACH: u64 = 15;
    let mut tasks = Vec::new();
    for (n, server) in [&a, &b, &a, &b].into_iter().enumerate() {
        let mut client = connect(&server.app_url(app, "/recall/r")).await;
        tasks.push(tokio::spawn(async move {
            let mut positions = Vec::new();
            for k in 0..EACH {
                positions.push(
                    publish(&mut client, &format!(r#"{{"n":{}}}"#, 100 * n as u64 + k)).await,
                );
            }
            positions
        }));
    }
    let mut positions = Vec::new();
    for task in tasks {
        positions.extend(task.await.unwrap());
    }
    assert!(
        positions.iter().all(|p| epoch(p) == epoch(&first)),
        "{positions:?}"
    );
    let offsets: BTreeSet<u64> = positions.iter().map(|p| offset(p)).collect();
    assert_eq!(offsets, (2..=4 * EACH + 1).collect::<BTreeSet<u64>>());
    // Both hosts read the same history.
    let on_a_page = read(&mut on_a, &first, 1000).await;
    let on_b_page = read(&mut on_b, &first, 1000).await;
    assert!(on_a_page.complete && on_b_page.complete);
    assert_eq!(on_a_page.texts.len(), 4 * EACH as usize);
    assert_eq!(on_a_page.texts, on_b_page.texts);
    assert_eq!(on_a_page.head, on_b_page.head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_on_the_other_host_gets_every_missed_message_once_in_order() {
    let Some(nats) = NatsServer::start_jetstream().await else {
        return;
    };
    let app = "hist-recover";
    let (a, b) = cluster_of_two(&nats, &recall(app, 1000)).await;
    let total: u64 = 300;
    let mut publisher = member(&a, app, "seam").await;
    let mut watcher = member(&a, app, "seam").await;
    let publishing = tokio::spawn(async move {
        for n in 1..=total {
            publish(&mut publisher, &format!(r#"{{"n":{n}}}"#)).await;
        }
    });
    // The watcher reads a while on one host, then comes back on the
    // other with the last position it saw, by turns, while the publisher
    // goes on; every second time the host sends what it missed (`from=`),
    // otherwise the flow reads it first (`since=`).
    let hosts = [&a, &b];
    let mut seen: Vec<u64> = Vec::new();
    let mut last;
    for round in 0..6 {
        last = read_numbered(&mut watcher, 15, &mut seen, round).await;
        drop(watcher);
        let query = if round % 2 == 0 { "since" } else { "from" };
        let host = hosts[(round + 1) % 2];
        watcher = connect(&host.app_url(app, &format!("/recall/seam?{query}={last}"))).await;
    }
    while seen.last() != Some(&total) {
        let line = next_text(&mut watcher).await;
        if line.starts_with("recovered") {
            assert_eq!(line, "recovered complete=true");
            continue;
        }
        seen.push(number(&line));
    }
    publishing.await.unwrap();
    let expected: Vec<u64> = (1..=total).collect();
    assert_eq!(
        seen, expected,
        "every message once, in order, across six moves between the hosts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_outlives_a_host_and_the_broker_restarting_with_its_storage() {
    let Some(mut nats) = NatsServer::start_jetstream().await else {
        return;
    };
    let app = "hist-restart";
    let manifest = recall(app, 1000);
    let (a, b) = cluster_of_two(&nats, &manifest).await;
    let mut on_a = member(&a, app, "r").await;
    let mut positions = Vec::new();
    for n in 1..=5 {
        positions.push(publish(&mut on_a, &format!(r#"{{"n":{n}}}"#)).await);
    }
    drop(on_a);
    a.stop().await;
    nats.stop().await;
    nats.restart().await;
    // B, which stayed up and reconnected, and a host started afterwards
    // read the same history at the same positions.
    let mut on_b = connect(&b.app_url(app, "/recall/r")).await;
    let page = read(&mut on_b, &positions[1], 10).await;
    assert!(page.complete);
    assert_eq!(page.head, positions[4]);
    let numbers: Vec<u64> = page.texts.iter().map(|text| number(text)).collect();
    assert_eq!(numbers, [3, 4, 5]);
    let c = TestServer::start_in_cluster(&manifest, &nats.url()).await;
    let mut on_c = connect(&c.app_url(app, "/recall/r")).await;
    let page = read(&mut on_c, &positions[0], 10).await;
    assert!(page.complete);
    assert_eq!(page.texts.len(), 4);
    // The next message goes on where the history stopped.
    let next = publish(&mut on_c, r#"{"n":6}"#).await;
    assert_eq!(epoch(&next), epoch(&positions[0]));
    assert_eq!(offset(&next), 6);
    // Back on the other host with where it was: what it missed, once.
    let mut back = connect(&b.app_url(app, &format!("/recall/r?from={}", positions[3]))).await;
    assert_eq!(number(&next_text(&mut back).await), 5);
    assert_eq!(number(&next_text(&mut back).await), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_from_before_the_broker_lost_its_storage_reads_incomplete() {
    let store = tempfile::tempdir().unwrap();
    let config = format!(
        "jetstream {{ store_dir: \"{}\" }}\n",
        store.path().display()
    );
    let Some(mut nats) = NatsServer::start_with(&config).await else {
        return;
    };
    let app = "hist-lost";
    let host = TestServer::start_in_cluster(&recall(app, 1000), &nats.url()).await;
    let mut client = member(&host, app, "r").await;
    let old = publish(&mut client, r#"{"n":1}"#).await;
    publish(&mut client, r#"{"n":2}"#).await;
    nats.stop().await;
    std::fs::remove_dir_all(store.path()).unwrap();
    nats.restart().await;
    // Nothing is kept any more, and a read says so.
    let page = read(&mut client, &old, 10).await;
    assert!(!page.complete);
    assert!(page.texts.is_empty());
    // The history starts again in a new epoch; the old position is not
    // reached back to, and says so.
    let new = publish(&mut client, r#"{"n":3}"#).await;
    assert_ne!(epoch(&new), epoch(&old));
    assert_eq!(offset(&new), 1);
    let page = read(&mut client, &old, 10).await;
    assert!(!page.complete);
    let numbers: Vec<u64> = page.texts.iter().map(|text| number(text)).collect();
    assert_eq!(numbers, [3]);
    let mut back = connect(&host.app_url(app, &format!("/recall/r?since={old}"))).await;
    assert_eq!(number(&next_text(&mut back).await), 3);
    assert_eq!(next_text(&mut back).await, "recovered complete=false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_history_limits_hold_in_the_cluster_and_apps_keep_apart() {
    let Some(nats) = NatsServer::start_jetstream().await else {
        return;
    };
    let app = "hist-limits";
    let manifest = recall(app, 5).limits(toml! { max_history_bytes = "4KiB" });
    let other = recall("hist-limits-other", 5);
    let a = TestServer::try_start_in(
        &[manifest.clone(), other],
        Some(wsflow::cluster::ClusterOptions {
            servers: vec![nats.url()],
            ..wsflow::cluster::ClusterOptions::default()
        }),
    )
    .await
    .unwrap();
    let b = TestServer::start_in_cluster(&manifest, &nats.url()).await;
    // `size` per group: the newest five.
    let mut on_a = member(&a, app, "small").await;
    let mut positions = Vec::new();
    for n in 1..=8 {
        positions.push(publish(&mut on_a, &format!(r#"{{"n":{n}}}"#)).await);
    }
    let mut on_b = connect(&b.app_url(app, "/recall/small")).await;
    let page = read(&mut on_b, &positions[0], 10).await;
    assert!(!page.complete);
    let numbers: Vec<u64> = page.texts.iter().map(|text| number(text)).collect();
    assert_eq!(numbers, [4, 5, 6, 7, 8]);
    assert!(read(&mut on_b, &positions[2], 10).await.complete);
    // Another app's room of the same name is another history.
    let mut stranger = connect(&a.app_url("hist-limits-other", "/recall/small")).await;
    assert!(read(&mut stranger, "-", 10).await.texts.is_empty());

    // `max_history_bytes` for all the app's groups: 1 KiB messages, at
    // most four kept however many are published.
    let big = "x".repeat(1000);
    let mut on_big = connect(&a.app_url(app, "/recall/big")).await;
    let mut big_positions = Vec::new();
    for n in 1..=10 {
        big_positions.push(publish(&mut on_big, &format!(r#"{{"n":{n},"pad":"{big}"}}"#)).await);
    }
    let page = read(&mut on_b, "-", 10).await;
    let kept_small = page.texts.len();
    let mut on_b_big = connect(&b.app_url(app, "/recall/big")).await;
    let page = read(&mut on_b_big, &big_positions[0], 10).await;
    assert!(!page.complete);
    assert!(
        !page.texts.is_empty() && page.texts.len() <= 4,
        "{} kept",
        page.texts.len()
    );
    assert_eq!(number(page.texts.last().unwrap()), 10);
    let bytes: usize = page.texts.iter().map(String::len).sum::<usize>() + kept_small * 40;
    assert!(bytes <= 4096, "{bytes} bytes kept");
}

/// What a kept publish costs in a cluster (a round trip to JetStream
/// before the members get it), and how long a client coming back on the
/// other host waits for 100 missed messages. Figures, not assertions:
/// `cargo test -p wsflow-tests --test e2e -- --ignored --nocapture
/// history_cluster::measure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it on its own, with --nocapture"]
async fn measure_kept_publishes_and_recovery_across_hosts() {
    let Some(nats) = NatsServer::start_jetstream().await else {
        return;
    };
    let app = "hist-measure";
    let (a, b) = cluster_of_two(&nats, &recall(app, 1000)).await;
    let mut on_a = member(&a, app, "m").await;
    let _on_b = member(&b, app, "m").await;
    const N: u32 = 300;
    let mut ignored = Vec::new();
    for (label, command) in [("kept", "pub"), ("not kept", "plain lobby")] {
        for n in 0..20 {
            ask(&mut on_a, &format!("{command} {{\"n\":{n}}}"), &mut ignored).await;
        }
        let started = std::time::Instant::now();
        for n in 0..N {
            let answer = ask(&mut on_a, &format!("{command} {{\"n\":{n}}}"), &mut ignored).await;
            assert!(answer.starts_with("ok pos"), "{answer}");
            ignored.clear();
        }
        let each = started.elapsed() / N;
        println!("publish to a group {label}, one at a time from a flow: {each:?} each");
    }
    let mark = publish(&mut on_a, r#"{"n":0}"#).await;
    for n in 1..=100 {
        publish(&mut on_a, &format!(r#"{{"n":{n}}}"#)).await;
    }
    for round in 0..5 {
        let started = std::time::Instant::now();
        let mut back = connect(&b.app_url(app, &format!("/recall/m?from={mark}"))).await;
        for n in 1..=100 {
            match wsflow_tests::next_message(&mut back).await {
                tokio_tungstenite::tungstenite::Message::Text(text) => assert_eq!(number(&text), n),
                other => {
                    for line in b.app_log_lines(app).iter().rev().take(15) {
                        println!("{line}");
                    }
                    panic!("round {round}, message {n}: {other:?}");
                }
            }
        }
        println!(
            "round {round}: back on the other host, 100 missed messages in {:?} (connect included)",
            started.elapsed()
        );
    }
}
