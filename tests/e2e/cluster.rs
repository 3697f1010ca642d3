//! Several hosts as one through a real `nats-server`: each host is a test
//! server of the same app that joined the same broker, clients talk to
//! the `room` program on different hosts, and the broker's monitoring
//! endpoint shows what each host subscribed to and received.
//!
//! Every test starts a broker of its own ([`NatsServer`]), so stopping one
//! touches no other test. Without `nats-server` on PATH the tests say how
//! to install it and return; with `WSFLOW_REQUIRE_NATS=1` (CI) they fail.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::time::Instant;
use wsflow::cluster::{Cluster, ClusterOptions};
use wsflow_tests::nats::NatsServer;
use wsflow_tests::{Manifest, TIMEOUT, TestServer, component_cache};

use crate::groups::{Peer, room};

/// `n` hosts of `app` in the cluster of `nats`.
async fn hosts(nats: &NatsServer, app: &Manifest, n: usize) -> Vec<TestServer> {
    let mut hosts = Vec::new();
    for _ in 0..n {
        hosts.push(TestServer::start_in_cluster(app, &nats.url()).await);
    }
    hosts
}

/// A client of the data-mode handler (`/room`) on `host`.
async fn peer_on(host: &TestServer, app: &str) -> Peer {
    Peer::connect(&host.app_url(app, "/room")).await
}

/// A client of the connection-mode handler (`/session`) on `host`.
async fn session_on(host: &TestServer, app: &str) -> Peer {
    Peer::connect(&host.app_url(app, "/session")).await
}

/// Ask `command` until it answers `expected`; `error unavailable` (the
/// other hosts did not answer in time, a busy machine) is asked again.
async fn until_answer(peer: &mut Peer, command: &str, expected: &str) -> Duration {
    let started = Instant::now();
    let deadline = started + TIMEOUT;
    loop {
        let reply = peer.ask(command).await;
        if reply == expected {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "`{command}` still answers `{reply}`, not `{expected}`"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Read deliveries until `last`; returns the ones before it.
async fn deliveries_until(peer: &mut Peer, last: &str) -> Vec<String> {
    let mut received = Vec::new();
    loop {
        let delivery = peer.delivery().await;
        if delivery == last {
            return received;
        }
        received.push(delivery);
    }
}

/// Publish `count` messages `TAG-N`, then `TAG-end`, to `group` from
/// `peer`, each but to itself.
async fn publish_numbered(peer: &mut Peer, group: &str, tag: &str, count: usize) {
    for n in 0..count {
        assert_eq!(
            peer.ok(&format!("pub {group} {tag}-{n}")).await,
            "published"
        );
    }
    assert_eq!(
        peer.ok(&format!("pub {group} {tag}-end")).await,
        "published"
    );
}

fn numbered(tag: &str, count: usize) -> Vec<String> {
    (0..count).map(|n| format!("{tag}-{n}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_between_clients_on_two_hosts_reaches_each_member_once_in_order() {
    const EACH: usize = 25;
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let app = room("chat", "close");
    let [a, b] = <[TestServer; 2]>::try_from(hosts(&nats, &app, 2).await)
        .ok()
        .unwrap();
    // Data mode and connection mode on each host.
    let mut ann = peer_on(&a, "chat").await;
    let mut amy = session_on(&a, "chat").await;
    let mut bob = peer_on(&b, "chat").await;
    let mut bea = session_on(&b, "chat").await;
    for peer in [&mut ann, &mut amy, &mut bob, &mut bea] {
        assert_eq!(peer.ok("join room").await, "joined room");
    }

    // Two publishers on two hosts at once, right after the joins
    // returned; each ends with `TAG-end`. There is no order between two
    // publishers, only within each one's messages.
    let (_, _) = tokio::join!(
        publish_numbered(&mut ann, "room", "ann", EACH),
        publish_numbered(&mut bob, "room", "bob", EACH),
    );

    for (name, peer) in [("amy", &mut amy), ("bea", &mut bea)] {
        let received = deliveries_until_ends(peer, &["ann", "bob"]).await;
        assert_eq!(
            from(&received, "ann"),
            numbered("ann", EACH),
            "{name}: ann's, in order"
        );
        assert_eq!(
            from(&received, "bob"),
            numbered("bob", EACH),
            "{name}: bob's, in order"
        );
        assert_eq!(
            received.len(),
            2 * EACH,
            "{name}: nothing twice: {received:?}"
        );
    }
    // A publisher hears the other host's publisher, never itself.
    assert_eq!(
        deliveries_until_ends(&mut ann, &["bob"]).await,
        numbered("bob", EACH)
    );
    assert_eq!(
        deliveries_until_ends(&mut bob, &["ann"]).await,
        numbered("ann", EACH)
    );

    // Each host counted what came from the other one, its end included.
    let crossed = EACH as u64 + 1;
    for host in [&a, &b] {
        host.wait_for_stats("chat", "counting the other host's messages", |stats| {
            stats.cluster_messages_in == crossed && stats.cluster_messages_out == crossed
        })
        .await;
    }
    assert_eq!(a.app_stats("chat").cluster_unavailable, 0);
    assert_eq!(b.app_stats("chat").cluster_unavailable, 0);
}

/// Read deliveries until `TAG-end` of every tag in `tags`; returns the
/// others.
async fn deliveries_until_ends(peer: &mut Peer, tags: &[&str]) -> Vec<String> {
    let mut ends: Vec<String> = tags.iter().map(|tag| format!("{tag}-end")).collect();
    let mut received = Vec::new();
    while !ends.is_empty() {
        let delivery = peer.delivery().await;
        if let Some(at) = ends.iter().position(|end| *end == delivery) {
            ends.remove(at);
        } else {
            received.push(delivery);
        }
    }
    received
}

/// The deliveries of publisher `tag`, in the order received.
fn from(received: &[String], tag: &str) -> Vec<String> {
    received
        .iter()
        .filter(|text| text.starts_with(&format!("{tag}-")))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_listings_span_three_hosts() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let app = room("census", "close");
    let [a, b, c] = <[TestServer; 3]>::try_from(hosts(&nats, &app, 3).await)
        .ok()
        .unwrap();
    let mut peers = Vec::new();
    let mut expected = Vec::new();
    for (host, name) in [(&a, "ann"), (&b, "bob"), (&b, "bea"), (&c, "cid")] {
        let mut peer = peer_on(host, "census").await;
        peer.ok(&format!("name {name}")).await;
        peer.ok("join room").await;
        expected.push(format!("{}={name}", peer.id().await));
        peers.push(peer);
    }
    // Ids name their host: the three hosts' ids differ, and stay below
    // 2^53 (a JavaScript number).
    let ids: Vec<u64> = expected
        .iter()
        .map(|entry| entry.split('=').next().unwrap().parse().unwrap())
        .collect();
    assert!(ids.iter().all(|id| *id < 1 << 53), "{ids:?}");
    expected.sort_by_key(|entry| entry.split('=').next().unwrap().parse::<u64>().unwrap());

    let ann = &mut peers[0];
    until_answer(ann, "count room", "ok count room 4").await;
    let who = format!("ok who room {}", expected.join(" "));
    until_answer(ann, "who room", &who).await;
    let cid = &mut peers[3];
    until_answer(cid, "count room", "ok count room 4").await;
    assert_eq!(cid.ask("count nobody").await, "ok count nobody 0");

    // A member leaves: gone from the counts at once.
    peers[2].ok("leave room").await;
    until_answer(&mut peers[0], "count room", "ok count room 3").await;

    // A host that stops says goodbye: its members are gone at once.
    drop(peers.pop());
    c.stop().await;
    until_answer(&mut peers[0], "count room", "ok count room 2").await;
    let ann = &mut peers[0];
    let listed = ann.ok("who room").await;
    assert_eq!(listed.split(' ').count(), 2 + 2, "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_reaches_a_connection_on_another_host_by_its_id() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let app = room("direct", "close");
    let [a, b, c] = <[TestServer; 3]>::try_from(hosts(&nats, &app, 3).await)
        .ok()
        .unwrap();
    let mut ann = peer_on(&a, "direct").await;
    let mut bob = peer_on(&b, "direct").await;
    let mut cid = session_on(&c, "direct").await;
    let bob_id = bob.id().await;
    let cid_id = cid.id().await;

    assert_eq!(ann.ok(&format!("to {bob_id} hi bob")).await, "sent");
    assert_eq!(bob.delivery().await, "hi bob");
    assert_eq!(bob.ok(&format!("to {cid_id} hi cid")).await, "sent");
    assert_eq!(cid.delivery().await, "hi cid");
    for n in 0..10 {
        ann.ok(&format!("to {cid_id} n{n}")).await;
    }
    for n in 0..10 {
        assert_eq!(cid.delivery().await, format!("n{n}"), "in order");
    }

    // Ids of no open connection: on a live host, of a host-less id, and
    // of a host that is not in the cluster.
    let gone = bob_id + 1_000;
    assert_eq!(ann.ask(&format!("to {gone} x")).await, "error not-found");
    assert_eq!(ann.ask("to 7 x").await, "error not-found");
    let no_host = (999_999u64 << 33) | 1;
    assert_eq!(ann.ask(&format!("to {no_host} x")).await, "error not-found");
    bob.close().await;
    until_answer(&mut ann, &format!("to {bob_id} x"), "error not-found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_members_receives_nothing_for_the_group() {
    const MESSAGES: u64 = 20;
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let app = room("interest", "close");
    let [a, b, c] = <[TestServer; 3]>::try_from(hosts(&nats, &app, 3).await)
        .ok()
        .unwrap();
    let mut ann = peer_on(&a, "interest").await;
    let mut bob = peer_on(&b, "interest").await;
    let mut cid = peer_on(&c, "interest").await;
    ann.ok("join g.1").await;
    bob.ok("join g.1").await;
    cid.ok("join other").await;
    for n in 0..MESSAGES {
        ann.ok(&format!("pub g.1 m{n}")).await;
    }
    ann.ok("all g.1 end").await;
    assert_eq!(
        deliveries_until(&mut bob, "end").await.len(),
        MESSAGES as usize
    );

    // The group's subject is scoped by app and its name encoded (`.` is
    // a subject's separator).
    let subject = format!("wsflow.app.{}.group.g~2E1", a.app_name("interest"));
    let on = |subs: &[(String, u64)]| {
        subs.iter()
            .find(|(s, _)| *s == subject)
            .map(|(_, msgs)| *msgs)
    };
    let a_subs = nats.subscriptions_of(&a.nats_name()).await;
    let b_subs = nats.subscriptions_of(&b.nats_name()).await;
    let c_subs = nats.subscriptions_of(&c.nats_name()).await;
    assert_eq!(on(&b_subs), Some(MESSAGES + 1), "bob's host: {b_subs:?}");
    assert_eq!(
        on(&a_subs),
        Some(0),
        "the publisher's host hears none back: {a_subs:?}"
    );
    assert_eq!(on(&c_subs), None, "no member, no subscription: {c_subs:?}");
    assert!(
        c_subs.iter().all(|(s, _)| !s.contains(".group.g~2E1")),
        "{c_subs:?}"
    );
    assert_eq!(c.app_stats("interest").cluster_messages_in, 0);

    // Everyone leaves: the subscriptions go too.
    ann.ok("leave g.1").await;
    bob.close().await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let connz = nats.connz().await.to_string();
        if !connz.contains(&subject) {
            break;
        }
        assert!(Instant::now() < deadline, "still subscribed: {connz}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_on_the_same_hosts_never_see_each_others_groups() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let red = room("red", "close");
    let blue = room("blue", "close");
    let apps = [red.clone(), blue.clone()];
    let mut started = Vec::new();
    for _ in 0..2 {
        let options = ClusterOptions {
            servers: vec![nats.url()],
            ..ClusterOptions::default()
        };
        started.push(
            TestServer::try_start_in(&apps, Some(options))
                .await
                .unwrap(),
        );
    }
    let [a, b] = <[TestServer; 2]>::try_from(started).ok().unwrap();
    let mut red_a = peer_on(&a, "red").await;
    let mut red_b = peer_on(&b, "red").await;
    let mut blue_b = peer_on(&b, "blue").await;
    for peer in [&mut red_a, &mut red_b, &mut blue_b] {
        peer.ok("join room").await;
    }
    until_answer(&mut red_a, "count room", "ok count room 2").await;
    assert_eq!(blue_b.ok("count room").await, "count room 1");
    red_a.ok("pub room for-red").await;
    assert_eq!(red_b.delivery().await, "for-red");
    // Had red's message reached blue's member on the same host, it would
    // come before this reply.
    blue_b.ok("groups").await;
    assert!(blue_b.inbox.is_empty(), "{:?}", blue_b.inbox);
    let red_id = red_b.id().await;
    assert_eq!(
        blue_b.ask(&format!("to {red_id} x")).await,
        "error not-found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_and_restarted_mid_chat_local_delivery_goes_on_remote_resumes() {
    let Some(mut nats) = NatsServer::start().await else {
        return;
    };
    let app = room("outage", "close");
    let [a, b] = <[TestServer; 2]>::try_from(hosts(&nats, &app, 2).await)
        .ok()
        .unwrap();
    let mut ann = peer_on(&a, "outage").await;
    let mut amy = peer_on(&a, "outage").await;
    let mut bob = peer_on(&b, "outage").await;
    for peer in [&mut ann, &mut amy, &mut bob] {
        peer.ok("join room").await;
    }
    ann.ok("pub room before").await;
    assert_eq!(bob.delivery().await, "before");
    assert_eq!(amy.delivery().await, "before");

    nats.stop().await;
    a.wait_for_cluster_log("lost the connection to NATS").await;
    // Local delivery never stops; what needs the other hosts answers
    // `unavailable` at once instead of waiting.
    for n in 0..5 {
        let started = Instant::now();
        assert_eq!(
            ann.ask(&format!("pub room during-{n}")).await,
            "error unavailable"
        );
        assert!(started.elapsed() < TIMEOUT);
        assert_eq!(amy.delivery().await, format!("during-{n}"));
    }
    assert_eq!(ann.ask("count room").await, "error unavailable");
    let bob_id = bob.id().await;
    assert_eq!(
        ann.ask(&format!("to {bob_id} x")).await,
        "error unavailable"
    );
    assert!(a.app_stats("outage").cluster_unavailable >= 7);

    nats.restart().await;
    a.wait_for_cluster_log("reconnected to NATS").await;
    b.wait_for_cluster_log("reconnected to NATS").await;
    // Both hosts renewed their subscriptions; bob hears ann again.
    until_answer(&mut ann, "count room", "ok count room 3").await;
    let mut n = 0;
    loop {
        ann.ok(&format!("pub room after-{n}")).await;
        match tokio::time::timeout(Duration::from_millis(200), bob.delivery()).await {
            Ok(delivery) => {
                assert!(delivery.starts_with("after-"), "{delivery}");
                break;
            }
            Err(_) => n += 1,
        }
        assert!(n < 100, "bob never heard from ann after the restart");
    }
    ann.ok("pub room last").await;
    let rest = deliveries_until(&mut bob, "last").await;
    assert!(
        rest.iter().all(|text| text.starts_with("after-")),
        "{rest:?}"
    );
    assert!(
        !rest.iter().any(|text| text.starts_with("during-")),
        "nothing from the outage arrives late: {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_started_while_nats_is_down_serves_locally_then_joins() {
    let Some(mut nats) = NatsServer::start().await else {
        return;
    };
    nats.stop().await;
    let app = room("late", "close");
    let a = TestServer::start_in_cluster(&app, &nats.url()).await;
    a.wait_for_cluster_log("cannot be reached").await;
    let mut ann = peer_on(&a, "late").await;
    let mut amy = peer_on(&a, "late").await;
    ann.ok("join room").await;
    amy.ok("join room").await;
    assert_eq!(ann.ask("pub room local").await, "error unavailable");
    assert_eq!(amy.delivery().await, "local");

    nats.restart().await;
    a.wait_for_cluster_log("connected to NATS").await;
    let b = TestServer::start_in_cluster(&app, &nats.url()).await;
    let mut bob = peer_on(&b, "late").await;
    bob.ok("join room").await;
    until_answer(&mut bob, "count room", "ok count room 3").await;
    bob.ok("pub room hello").await;
    assert_eq!(ann.delivery().await, "hello");
    assert_eq!(amy.delivery().await, "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_the_brokers_max_payload_is_too_large() {
    let Some(nats) = NatsServer::start_with("max_payload: 4096\n").await else {
        return;
    };
    let app = room("payload", "close");
    let [a, b] = <[TestServer; 2]>::try_from(hosts(&nats, &app, 2).await)
        .ok()
        .unwrap();
    let mut ann = peer_on(&a, "payload").await;
    let mut amy = peer_on(&a, "payload").await;
    let mut bob = peer_on(&b, "payload").await;
    for peer in [&mut ann, &mut amy, &mut bob] {
        peer.ok("join room").await;
    }
    // The app takes 1 MiB; the broker 4 KiB.
    assert_eq!(ann.ask("big room 8000 huge").await, "error too-large");
    a.wait_for_app_log("payload", "raise `max_payload`").await;
    let bob_id = bob.id().await;
    assert_eq!(
        ann.ask(&format!("to {bob_id} {}", "x".repeat(8000))).await,
        "error too-large"
    );
    ann.ok("big room 1000 fits").await;
    assert!(bob.delivery().await.starts_with("fits "));
    assert!(
        amy.delivery().await.starts_with("fits "),
        "not the huge one"
    );
}

#[tokio::test]
async fn wrong_credentials_stop_the_host_with_a_clear_error() {
    let Some(nats) = NatsServer::start_with("authorization { user: ann, password: right }\n").await
    else {
        return;
    };
    let url = nats.url().replace("nats://", "nats://ann:wrong@");
    let error = Cluster::join(&ClusterOptions {
        servers: vec![url],
        ..ClusterOptions::default()
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains("refused this host"), "{error}");
    assert!(
        !error.contains("wrong"),
        "the password stays out of it: {error}"
    );
    assert!(error.contains("--cluster-creds"), "{error}");
}

/// A `wsflow up --cluster` process serving `app`; killed when dropped.
struct HostProcess {
    child: tokio::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl HostProcess {
    async fn start(app: &Manifest, nats: &NatsServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("wsflow.toml");
        std::fs::write(&manifest, app.to_toml()).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsflow-host"))
            .arg("up")
            .arg(&manifest)
            .arg("--cluster")
            .arg(nats.url())
            .arg("--cache-dir")
            .arg(component_cache())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting wsflow-host");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Compiling the flow on a cold cache takes a while.
        let line = tokio::time::timeout(TIMEOUT * 20, lines.next_line())
            .await
            .expect("wsflow printed no line in time")
            .unwrap()
            .expect("wsflow ended before it was ready");
        let url = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("not the ready line: {line}"))
            .to_owned();
        // Read the rest, so the host never writes to a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            url,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hosts_members_leave_the_counts() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let app = room("crash", "close");
    let a = TestServer::start_in_cluster(&app, &nats.url()).await;
    let mut doomed = HostProcess::start(&app, &nats).await;
    // The first handler (`/room`) is the ready line's.
    let mut bob = Peer::connect(&doomed.url).await;
    let mut bea = Peer::connect(&doomed.url).await;
    let mut ann = peer_on(&a, "crash").await;
    ann.ok("name ann").await;
    for peer in [&mut ann, &mut bob, &mut bea] {
        peer.ok("join room").await;
    }
    let bob_id = bob.id().await;
    until_answer(&mut ann, "count room", "ok count room 3").await;
    assert_eq!(ann.ok(&format!("to {bob_id} hi")).await, "sent");
    assert_eq!(bob.delivery().await, "hi");

    doomed.child.kill().await.unwrap();
    let gone_after = until_answer(&mut ann, "count room", "ok count room 1").await;
    eprintln!("a killed host's members left the counts after {gone_after:?}");
    let ann_id = ann.id().await;
    until_answer(&mut ann, "who room", &format!("ok who room {ann_id}=ann")).await;
    assert_eq!(ann.ask(&format!("to {bob_id} hi")).await, "error not-found");
}
