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
use tokio_util::sync::CancellationToken;
use wsflow::cluster::{Cluster, ClusterOptions};
use wsflow_tests::nats::{NatsServer, SlowLink};
use wsflow_tests::{
    Manifest, TIMEOUT, TestServer, Trigger, component_cache, connect, next_text, programs,
    send_text,
};

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
async fn a_host_subscribes_once_per_app_whatever_the_number_of_its_groups() {
    const GROUPS: usize = 30;
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let app = room("interest", "close");
    let [a, b] = <[TestServer; 2]>::try_from(hosts(&nats, &app, 2).await)
        .ok()
        .unwrap();
    let mut ann = peer_on(&a, "interest").await;
    let mut bob = peer_on(&b, "interest").await;
    for n in 0..GROUPS {
        bob.ok(&format!("join g.{n}")).await;
    }
    for n in 0..GROUPS {
        ann.ok(&format!("pub g.{n} m{n}")).await;
    }
    let mut received = Vec::new();
    for _ in 0..GROUPS {
        received.push(bob.delivery().await);
    }
    received.sort_by_key(|text| text[1..].parse::<usize>().unwrap());
    assert_eq!(
        received,
        numbered("m", GROUPS)
            .iter()
            .map(|m| m.replace('-', ""))
            .collect::<Vec<_>>()
    );

    // One subscription for all the app's groups (names are encoded into
    // one subject token each, so `*` covers them all), on both hosts.
    let prefix = format!("wsflow.app.{}.", a.app_name("interest"));
    for host in [&a, &b] {
        let subs = nats.subscriptions_of(&host.nats_name()).await;
        let groups: Vec<&str> = subs
            .iter()
            .map(|(subject, _)| subject.as_str())
            .filter(|subject| subject.contains(".group."))
            .collect();
        assert_eq!(groups, [format!("{prefix}group.*")], "{subs:?}");
        let apps = subs
            .iter()
            .filter(|(subject, _)| subject.starts_with(&prefix))
            .count();
        assert_eq!(apps, 4, "four per app, none per group: {subs:?}");
    }
}

/// A client of `nats` subscribed to `subject`, to see what crosses.
async fn spy(nats: &NatsServer, subject: String) -> async_nats::Subscriber {
    let client = async_nats::connect(nats.url())
        .await
        .expect("the spy connects");
    let spying = client.subscribe(subject).await.unwrap();
    client.flush().await.unwrap();
    spying
}

/// The group a message seen by [`spy`] was published to.
fn spied_group(message: &async_nats::Message) -> &str {
    message.subject.rsplit('.').next().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_a_group_no_other_host_holds_is_not_sent() {
    use futures_util::StreamExt as _;
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let app = room("lonely", "close");
    let [a, b] = <[TestServer; 2]>::try_from(hosts(&nats, &app, 2).await)
        .ok()
        .unwrap();
    let mut spying = spy(
        &nats,
        format!("wsflow.app.{}.group.*", a.app_name("lonely")),
    )
    .await;
    let mut ann = peer_on(&a, "lonely").await;
    let mut amy = peer_on(&a, "lonely").await;
    let mut bob = peer_on(&b, "lonely").await;
    amy.ok("join alone").await;
    bob.ok("join room").await;

    // A host sends everything until it knows what the others hold (its
    // first moments); then a publish to `alone`, held on host a only,
    // stays there, and one to `room` crosses.
    let deadline = Instant::now() + TIMEOUT;
    for round in 0.. {
        for _ in 0..5 {
            ann.ok("pub alone x").await;
        }
        let end = format!("end-{round}");
        ann.ok(&format!("pub room {end}")).await;
        let mut crossed_alone = 0;
        loop {
            let message = tokio::time::timeout(TIMEOUT, spying.next())
                .await
                .expect("the room's message crosses")
                .unwrap();
            if spied_group(&message) == "alone" {
                crossed_alone += 1;
            } else if message.payload == end.as_bytes() {
                break;
            }
        }
        if crossed_alone == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "publishes to a group no other host holds still cross after {round} rounds"
        );
    }
    for _ in 0..5 {
        assert_eq!(amy.delivery().await, "x", "the local member gets them");
    }

    // Once a member on host b joined, the next publish crosses, and
    // reaches it.
    bob.ok("join alone").await;
    ann.ok("pub alone held").await;
    assert!(
        deliveries_until(&mut bob, "held")
            .await
            .iter()
            .all(|text| text.starts_with("end-")),
        "nothing but the room's before it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_right_after_a_remote_join_reaches_the_new_member() {
    const ROUNDS: usize = 25;
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let app = room("fresh", "close");
    let [a, b] = <[TestServer; 2]>::try_from(hosts(&nats, &app, 2).await)
        .ok()
        .unwrap();
    let mut ann = peer_on(&a, "fresh").await;
    let mut bob = peer_on(&b, "fresh").await;
    // Each round a group nobody held: host a skips it until it learns that
    // host b holds it, which must happen before bob's join returns.
    for round in 0..ROUNDS {
        bob.ok(&format!("join g-{round}")).await;
        ann.ok(&format!("pub g-{round} first-{round}")).await;
        assert_eq!(bob.delivery().await, format!("first-{round}"));
    }
    // Left, published to while nobody else held it, joined again.
    for round in 0..ROUNDS {
        let group = format!("g-{round}");
        bob.ok(&format!("leave {group}")).await;
        ann.ok(&format!("pub {group} missed")).await;
        bob.ok(&format!("join {group}")).await;
        ann.ok(&format!("pub {group} again-{round}")).await;
        // `missed` may still have been on its way when bob joined again.
        let before = deliveries_until(&mut bob, &format!("again-{round}")).await;
        assert!(before.iter().all(|text| text == "missed"), "{before:?}");
    }
}

/// An app whose `/blast` handler publishes to a group in a loop (the
/// `blast` program), four executions at a time, with the room program at
/// `/room` (a member that does not read loses messages, and stays).
fn noisy(name: &str) -> Manifest {
    Manifest::app(name)
        .flow("blast", programs::BLAST)
        .flow("room", programs::ROOM)
        .limits(toml::toml! { max_executions = 4 })
        .trigger(
            Trigger::on_port(0)
                .handler(toml::toml! { path = "/room" flow = "room" slow_member = "drop" })
                .handler(toml::toml! { path = "/blast" flow = "blast" }),
        )
}

/// Publish messages of `size` bytes to `sink` from `url` (`/blast`),
/// 800 ms per execution, until `stop`; returns the publishes and how many
/// of them were answered `unavailable`.
async fn flood(url: String, size: usize, stop: CancellationToken) -> (u64, u64) {
    let mut client = connect(&url).await;
    let (mut published, mut unavailable) = (0, 0);
    while !stop.is_cancelled() {
        send_text(&mut client, &format!("sink {size} 800")).await;
        let reply = next_text(&mut client).await;
        let counts: Vec<u64> = reply
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        assert_eq!(counts.len(), 2, "{reply}");
        published += counts[0];
        unavailable += counts[1];
    }
    (published, unavailable)
}

/// Four executions of `noisy` on `a` flood `sink` with messages of
/// `size` bytes while `ann` (on `a`) sends to and publishes for `bob` (on
/// host b) of another app: every one of those goes through, in order.
/// With `saturated`, the quiet app's turn comes once the flood has filled
/// the noisy app's share of the link (its publishes are `unavailable`), or
/// has published 20,000 messages (a machine too busy to flood faster than
/// the link).
async fn flood_beside(
    a: &TestServer,
    size: usize,
    saturated: bool,
    (ann, bob): (&mut Peer, &mut Peer),
    tag: &str,
) {
    const ROUNDS: usize = 10;
    let bob_id = bob.id().await;
    let stats = a.app_stats("noisy");
    let out_before = stats.cluster_messages_out;
    let tried_before = stats.group_messages_published + stats.cluster_unavailable;
    let refused_before = stats.cluster_over_share;
    let stop = CancellationToken::new();
    let flooders: Vec<_> = (0..4)
        .map(|_| tokio::spawn(flood(a.app_url("noisy", "/blast"), size, stop.clone())))
        .collect();
    a.wait_for_stats("noisy", "the flood to be under way", |stats| {
        if saturated {
            stats.cluster_over_share > refused_before
                || stats.group_messages_published > tried_before + 20_000
        } else {
            stats.group_messages_published + stats.cluster_unavailable > tried_before + 200
        }
    })
    .await;
    let direct = format!("{tag}direct");
    let group = format!("{tag}group");
    for n in 0..ROUNDS {
        // A send waits for host b's answer. On a starved machine the answer
        // may come after the 2 s a send waits, `unavailable` without the
        // quiet app being over its share of the link: asked again. A send
        // refused for its share is never asked again (the assertion after
        // the flood).
        let send = format!("to {bob_id} {direct}-{n}");
        let mut tries = 0;
        loop {
            let over_share = a.app_stats("quiet").cluster_over_share;
            match ann.ask(&send).await.as_str() {
                "ok sent" => break,
                "error unavailable" if tries < 10 && over_share == 0 => tries += 1,
                other => panic!("`{send}` answered `{other}` after {tries} retries"),
            }
        }
        assert_eq!(ann.ok(&format!("pub room {group}-{n}")).await, "published");
    }
    let mut received: Vec<String> = Vec::new();
    loop {
        let mut distinct = received.clone();
        distinct.sort();
        distinct.dedup();
        if distinct.len() == 2 * ROUNDS {
            break;
        }
        received.push(bob.delivery().await);
    }
    // Sends and publishes travel apart: each kind in order. A send asked
    // again after a late answer may arrive twice, one right after the other.
    let mut direct_received = from(&received, &direct);
    direct_received.dedup();
    assert_eq!(direct_received, numbered(&direct, ROUNDS));
    assert_eq!(from(&received, &group), numbered(&group, ROUNDS));
    stop.cancel();
    let mut published = 0;
    let mut unavailable = 0;
    for flooder in flooders {
        let (p, u) = flooder.await.unwrap();
        published += p;
        unavailable += u;
    }
    let stats = a.app_stats("noisy");
    eprintln!(
        "{tag}flood of {size} bytes: {published} publishes, {unavailable} answered `unavailable` \
         ({} over the app's share of the link), {} crossed",
        stats.cluster_over_share - refused_before,
        stats.cluster_messages_out - out_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_apps_publish_flood_leaves_another_apps_cross_host_traffic_alone() {
    const SIZE: usize = 4 << 10;
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    // Host a's link to the broker is slower than the flood (8 MiB/s).
    let slow = SlowLink::start(&nats.url(), 8 << 20).await;
    let apps = [noisy("noisy"), room("quiet", "close")];
    let mut started = Vec::new();
    for url in [slow.url(), nats.url()] {
        let options = ClusterOptions {
            servers: vec![url],
            ..ClusterOptions::default()
        };
        started.push(
            TestServer::try_start_in(&apps, Some(options))
                .await
                .unwrap(),
        );
    }
    let [a, b] = <[TestServer; 2]>::try_from(started).ok().unwrap();
    let mut ann = peer_on(&a, "quiet").await;
    let mut bob = peer_on(&b, "quiet").await;
    bob.ok("join room").await;
    until_answer(&mut ann, "count room", "ok count room 1").await;

    // The flood's group has no member anywhere else.
    flood_beside(&a, SIZE, false, (&mut ann, &mut bob), "alone-").await;

    // Now it has one on host b, which does not read: every publish has to
    // cross, and the flood gets the noisy app's share of the link.
    let mut sink = peer_on(&b, "noisy").await;
    sink.ok("join sink").await;
    flood_beside(&a, SIZE, true, (&mut ann, &mut bob), "held-").await;
    // The quiet app never ran into the flood: nothing of it was refused for
    // its share of the link.
    let quiet = a.app_stats("quiet");
    assert_eq!(quiet.cluster_over_share, 0, "{quiet:?}");
    drop(sink);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_host_makes_counts_unavailable_never_smaller() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let app = room("frozen", "close");
    let a = TestServer::start_in_cluster(&app, &nats.url()).await;
    let frozen = HostProcess::start(&app, &nats).await;
    let mut bob = Peer::connect(&frozen.url).await;
    let mut ann = peer_on(&a, "frozen").await;
    ann.ok("join room").await;
    bob.ok("join room").await;
    until_answer(&mut ann, "count room", "ok count room 2").await;

    // Stopped, as a frozen VM is: its connection to the broker stays open,
    // its heartbeats stop, it answers nothing.
    let pid = frozen.child.id().unwrap().to_string();
    signal("-STOP", &pid).await;
    let started = Instant::now();
    let mut unavailable = 0;
    // Past the 5 s after which a silent host used to be dropped.
    while started.elapsed() < Duration::from_secs(8) {
        match ann.ask("count room").await.as_str() {
            "error unavailable" => unavailable += 1,
            "ok count room 2" => {}
            other => panic!("a count without the frozen host's member: {other}"),
        }
    }
    assert!(unavailable > 0);
    signal("-CONT", &pid).await;
    until_answer(&mut ann, "count room", "ok count room 2").await;
}

async fn signal(signal: &str, pid: &str) {
    let status = tokio::process::Command::new("kill")
        .args([signal, pid])
        .status()
        .await
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
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

/// Two tenants on one nats-server, each a NATS account of its own (the
/// isolation docs/CLUSTER.md prescribes): `red` and `blue`.
const TWO_ACCOUNTS: &str = r#"accounts {
  RED: { users: [ { user: "red", password: "red-secret" } ] }
  BLUE: { users: [ { user: "blue", password: "blue-secret" } ] }
}
"#;

/// A client of `account` on `nats` that claims every host id and answers
/// every sync request: what a process with a tenant's credentials could
/// run against the hosts that share them.
async fn squatter(nats: &NatsServer, user: &str, password: &str) -> tokio::task::JoinHandle<()> {
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .connect(nats.url())
        .await
        .expect("the squatter connects");
    let mut claims = client.subscribe("wsflow.host.*").await.unwrap();
    let mut syncs = client.subscribe("wsflow.sync.*").await.unwrap();
    client.flush().await.unwrap();
    tokio::spawn(async move {
        use futures_util::StreamExt as _;
        loop {
            let request = tokio::select! {
                Some(request) = claims.next() => request,
                Some(request) = syncs.next() => request,
                else => break,
            };
            if let Some(reply) = request.reply {
                let _ = client.publish(reply, "mine".into()).await;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_nats_account_keeps_a_tenant_from_claiming_anothers_host_ids() {
    let Some(nats) = NatsServer::start_with(TWO_ACCOUNTS).await else {
        return;
    };
    let join_as = |user: &str, password: &str| ClusterOptions {
        servers: vec![
            nats.url()
                .replace("nats://", &format!("nats://{user}:{password}@")),
        ],
        ..ClusterOptions::default()
    };
    let squatting = squatter(&nats, "blue", "blue-secret").await;

    // Within its own account the squatter holds every host id: a blue host
    // cannot start.
    let error = Cluster::join(&join_as("blue", "blue-secret"))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("no free host id"), "{error}");

    // The red tenant's account shares no subject with blue's: red hosts
    // start, and chat through their broker as if blue were not there.
    let app = room("tenant", "close");
    let mut red = Vec::new();
    for _ in 0..2 {
        red.push(
            TestServer::try_start_in(
                std::slice::from_ref(&app),
                Some(join_as("red", "red-secret")),
            )
            .await
            .unwrap(),
        );
    }
    let mut ann = peer_on(&red[0], "tenant").await;
    let mut bob = peer_on(&red[1], "tenant").await;
    bob.ok("join room").await;
    until_answer(&mut ann, "count room", "ok count room 1").await;
    assert_eq!(ann.ok("pub room across").await, "published");
    assert_eq!(bob.delivery().await, "across");
    squatting.abort();
}

/// The resident memory of process `pid` (`self` for this one), in KiB.
fn resident_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Connect `CONNECTIONS` clients to `url` and have each join
/// `GROUPS_EACH` groups of its own; returns them (still members) and the
/// growth of this process's resident memory meanwhile, in KiB.
async fn join_many(url: &str, connections: usize, groups_each: usize) -> (Vec<Peer>, u64) {
    let mut members = Vec::new();
    for _ in 0..connections {
        members.push(Peer::connect(url).await);
    }
    let before = resident_kib("self");
    let mut joining = tokio::task::JoinSet::new();
    let mut joined = Vec::new();
    for (n, mut member) in members.into_iter().enumerate() {
        joining.spawn(async move {
            for g in 0..groups_each {
                member.ok(&format!("join g-{n}-{g}")).await;
            }
            member
        });
        while joining.len() >= 8 {
            joined.push(joining.join_next().await.unwrap().unwrap());
        }
    }
    joined.extend(joining.join_all().await);
    (joined, resident_kib("self").saturating_sub(before))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn measure_the_memory_of_subscribed_groups() {
    const CONNECTIONS: usize = 320;
    const GROUPS_EACH: usize = 32;
    let groups = (CONNECTIONS * GROUPS_EACH) as u64;
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let app = room("measure", "close");

    // The same joins on a host of its own, for what a group costs anyway.
    let alone = TestServer::start(&app).await;
    let (members, local) =
        join_many(&alone.app_url("measure", "/room"), CONNECTIONS, GROUPS_EACH).await;
    drop(members);

    let [a, b] = <[TestServer; 2]>::try_from(hosts(&nats, &app, 2).await)
        .ok()
        .unwrap();
    let broker = nats.pid().unwrap().to_string();
    let broker_before = resident_kib(&broker);
    let (members, clustered) =
        join_many(&b.app_url("measure", "/room"), CONNECTIONS, GROUPS_EACH).await;
    // Host a holds the groups' names too: wait until it counts them.
    let mut ann = peer_on(&a, "measure").await;
    until_answer(&mut ann, "count g-0-0", "ok count g-0-0 1").await;
    let broker_grew = resident_kib(&broker).saturating_sub(broker_before);
    eprintln!(
        "{groups} groups: on a host of its own +{local} KiB ({} bytes a group); on a host of a \
         cluster of two, both hosts +{clustered} KiB ({} bytes a group); nats-server \
         +{broker_grew} KiB ({} bytes a group); host b's subscriptions: {}",
        local * 1024 / groups,
        clustered * 1024 / groups,
        broker_grew * 1024 / groups,
        nats.subscriptions_of(&b.nats_name()).await.len()
    );
    drop(members);
}
