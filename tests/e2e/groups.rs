//! Groups and addressing through the `room` program: real clients join,
//! publish and address each other; the host's counters and the clients'
//! inboxes show what was delivered, dropped or closed.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use toml::{Table, toml};
use wsflow::StatsSnapshot;
use wsflow_tests::{
    Client, Manifest, TIMEOUT, TestServer, Trigger, connect, next_message, next_text, programs,
    send_text, table,
};

use crate::backpressure::connect_with_small_window;

/// An app serving the room program in data mode at `/room` (slow members
/// handled by `slow_member`) and in connection mode at `/session`, with
/// `limits` and more `trigger` settings.
pub(crate) fn room_app(name: &str, slow_member: &str, limits: Table, trigger: Table) -> Manifest {
    let data = table([
        ("path", "/room".into()),
        ("flow", "room".into()),
        ("slow_member", slow_member.into()),
    ]);
    Manifest::app(name)
        .flow("room", programs::ROOM)
        .limits(limits)
        .trigger(
            Trigger::on_port(0)
                .with(trigger)
                .handler(data)
                .handler(toml! { path = "/session" mode = "connection" flow = "room" }),
        )
}

/// [`room_app`] with the default limits.
pub(crate) fn room(name: &str, slow_member: &str) -> Manifest {
    room_app(name, slow_member, Table::new(), Table::new())
}

/// A client of the room program: command replies (`ok ...`, `error ...`)
/// are answers, everything else is a delivery kept in the inbox.
pub(crate) struct Peer {
    client: Client,
    pub(crate) inbox: VecDeque<String>,
}

impl Peer {
    pub(crate) async fn connect(url: &str) -> Self {
        Self::over(connect(url).await)
    }

    /// A peer over a client connected already.
    pub(crate) fn over(client: Client) -> Self {
        Self {
            client,
            inbox: VecDeque::new(),
        }
    }

    pub(crate) async fn send(&mut self, command: &str) {
        send_text(&mut self.client, command).await;
    }

    /// The next message as text (`binary TEXT` for a binary one).
    pub(crate) async fn read(&mut self) -> String {
        match next_message(&mut self.client).await {
            Message::Text(text) => text.as_str().to_owned(),
            Message::Binary(bytes) => format!("binary {}", String::from_utf8_lossy(&bytes)),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// The next reply; deliveries that come first go to the inbox.
    pub(crate) async fn reply(&mut self) -> String {
        loop {
            let text = self.read().await;
            if is_reply(&text) {
                return text;
            }
            self.inbox.push_back(text);
        }
    }

    pub(crate) async fn ask(&mut self, command: &str) -> String {
        self.send(command).await;
        self.reply().await
    }

    /// Run `command`, which must succeed; its reply without `ok `.
    pub(crate) async fn ok(&mut self, command: &str) -> String {
        let reply = self.ask(command).await;
        reply
            .strip_prefix("ok ")
            .unwrap_or_else(|| panic!("`{command}` failed: {reply}"))
            .to_owned()
    }

    pub(crate) async fn id(&mut self) -> u64 {
        let reply = self.ok("id").await;
        reply["id ".len()..].parse().unwrap()
    }

    /// The next delivery (not a reply).
    pub(crate) async fn delivery(&mut self) -> String {
        if let Some(delivered) = self.inbox.pop_front() {
            return delivered;
        }
        let text = self.read().await;
        assert!(
            !is_reply(&text),
            "expected a delivery, got the reply {text}"
        );
        text
    }

    /// The code and reason of the close the server sends next; messages
    /// before it go to the inbox.
    pub(crate) async fn server_close(&mut self) -> (u16, String) {
        loop {
            let message = tokio::time::timeout(TIMEOUT, self.client.next())
                .await
                .expect("a close within the timeout");
            match message {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.as_str().to_owned());
                }
                Some(Ok(Message::Text(text))) => self.inbox.push_back(text.as_str().to_owned()),
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Close from the client side and wait for the server's answer.
    pub(crate) async fn close(mut self) {
        self.client.close(None).await.unwrap();
        while let Ok(Some(Ok(_))) = tokio::time::timeout(TIMEOUT, self.client.next()).await {}
    }
}

pub(crate) fn is_reply(text: &str) -> bool {
    text.starts_with("ok ") || text.starts_with("error ")
}

/// Ask `peer` `command` until the reply is `expected` (the host notices a
/// close a moment after the client sent it).
pub(crate) async fn until_reply(peer: &mut Peer, command: &str, expected: &str) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let reply = peer.ok(command).await;
        if reply == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{command}` still answers `{reply}`, not `{expected}`"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sequence numbers of the `PREFIX-N ...` deliveries in `received`.
fn numbers(received: &[String], prefix: &str) -> Vec<usize> {
    received
        .iter()
        .filter_map(|text| text.strip_prefix(prefix))
        .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_each_of_1000_members_exactly_once_in_publish_order() {
    const MEMBERS: usize = 1000;
    const EACH: usize = 10;
    let server = TestServer::start(&room("broadcast", "close")).await;
    let url = server.app_url("broadcast", "/room");
    let mut members = Vec::with_capacity(MEMBERS);
    for _ in 0..MEMBERS {
        members.push(Peer::connect(&url).await);
    }
    for member in &mut members {
        member.send("join all").await;
    }
    for member in &mut members {
        assert_eq!(member.reply().await, "ok joined all");
    }
    let mut alice = Peer::connect(&url).await;
    let mut bob = Peer::connect(&url).await;
    alice.ok("join all").await;
    bob.ok("join all").await;

    // Two publishers at once; neither hears itself.
    let publish = |mut publisher: Peer, tag: &'static str| async move {
        for n in 0..EACH {
            assert_eq!(
                publisher.ok(&format!("pub all {tag}-{n}")).await,
                "published"
            );
        }
        publisher
    };
    let (mut alice, bob) = tokio::join!(publish(alice, "a"), publish(bob, "b"));
    alice.ok("pub all end").await;

    let readers: Vec<_> = members
        .into_iter()
        .map(|mut member| {
            tokio::spawn(async move {
                let mut received = Vec::new();
                loop {
                    let text = member.delivery().await;
                    if text == "end" {
                        break;
                    }
                    received.push(text);
                }
                // Nothing after the end: the next thing is this reply.
                assert_eq!(member.ask("id").await.split(' ').next(), Some("ok"));
                assert!(member.inbox.is_empty(), "after the end: {:?}", member.inbox);
                received
            })
        })
        .collect();
    let in_order: Vec<usize> = (0..EACH).collect();
    for reader in readers {
        let received = reader.await.unwrap();
        assert_eq!(received.len(), 2 * EACH, "{received:?}");
        assert_eq!(numbers(&received, "a-"), in_order);
        assert_eq!(numbers(&received, "b-"), in_order);
    }

    // Each publisher got the other's messages only.
    for (mut publisher, own, other) in [(alice, "a-", "b-"), (bob, "b-", "a-")] {
        publisher.ok("id").await;
        let received: Vec<String> = publisher.inbox.drain(..).collect();
        assert_eq!(numbers(&received, other), in_order, "{received:?}");
        assert!(numbers(&received, own).is_empty(), "{received:?}");
    }

    let stats = server.app_stats("broadcast");
    let publishes = 2 * EACH as u64 + 1;
    assert_eq!(stats.group_messages_published, publishes);
    assert_eq!(
        stats.group_messages_delivered,
        publishes * (MEMBERS as u64 + 1)
    );
    assert_eq!(stats.group_messages_dropped, 0);
}

#[tokio::test]
async fn members_address_each_other_by_id_and_publish_with_or_without_themselves() {
    let server = TestServer::start(&room("address", "close")).await;
    let url = server.app_url("address", "/room");
    let mut ann = Peer::connect(&url).await;
    let mut bob = Peer::connect(&url).await;
    let ann_id = ann.id().await;
    assert_eq!(bob.ok(&format!("to {ann_id} psst")).await, "sent");
    assert_eq!(ann.delivery().await, "psst");

    ann.ok("join g").await;
    bob.ok("join g").await;
    assert_eq!(ann.ok("all g everyone").await, "published");
    assert_eq!(ann.delivery().await, "everyone");
    assert_eq!(bob.delivery().await, "everyone");
    assert_eq!(ann.ok("bin g bytes").await, "published");
    assert_eq!(bob.delivery().await, "binary bytes");
    ann.ok("id").await;
    assert!(ann.inbox.is_empty(), "{:?}", ann.inbox);
}

#[tokio::test]
async fn membership_and_attachment_outlive_fresh_instances_and_end_with_the_connection() {
    let server = TestServer::start(&room("lifecycle", "close")).await;
    let mut observer = Peer::connect(&server.app_url("lifecycle", "/room")).await;
    // Data mode: every command runs in a fresh instance.
    let mut data = Peer::connect(&server.app_url("lifecycle", "/room")).await;
    let mut session = Peer::connect(&server.app_url("lifecycle", "/session")).await;
    let data_id = data.id().await;
    let session_id = session.id().await;
    data.ok("name ann").await;
    data.ok("join g").await;
    data.ok("join h").await;
    session.ok("name cy").await;
    session.ok("join g").await;
    assert_eq!(data.ok("groups").await, "groups g,h");
    assert_eq!(data.ok("me").await, "me ann");
    let (first, second) = (data_id.min(session_id), data_id.max(session_id));
    let name = |id| if id == data_id { "ann" } else { "cy" };
    assert_eq!(
        observer.ok("who g").await,
        format!("who g {first}={} {second}={}", name(first), name(second))
    );

    data.close().await;
    until_reply(&mut observer, "count g", "count g 1").await;
    assert_eq!(observer.ok("count h").await, "count h 0");
    assert_eq!(
        observer.ask(&format!("to {data_id} hi")).await,
        "error not-found"
    );

    session.close().await;
    until_reply(&mut observer, "count g", "count g 0").await;
    assert_eq!(
        observer.ask(&format!("to {session_id} hi")).await,
        "error not-found"
    );
    assert_eq!(observer.ok("who g").await, "who g ");
}

#[tokio::test]
async fn apps_see_neither_each_others_groups_nor_connections() {
    let server = TestServer::start_apps(&[room("left", "close"), room("right", "close")]).await;
    let mut left = Peer::connect(&server.app_url("left", "/room")).await;
    let mut left_too = Peer::connect(&server.app_url("left", "/room")).await;
    let mut right = Peer::connect(&server.app_url("right", "/room")).await;
    let left_id = left.id().await;
    let right_id = right.id().await;
    left.ok("join lobby").await;
    right.ok("join lobby").await;

    assert_eq!(right.ok("pub lobby from-right").await, "published");
    assert_eq!(right.ok("count lobby").await, "count lobby 1");
    assert_eq!(
        right.ok("who lobby").await,
        format!("who lobby {right_id}=")
    );
    // Another app's connection and a made-up id are alike: not found.
    assert_eq!(
        right.ask(&format!("to {left_id} hi")).await,
        "error not-found"
    );
    assert_eq!(right.ask("to 987654321 hi").await, "error not-found");
    assert_eq!(
        right.ask(&format!("to {} hi", u64::MAX)).await,
        "error not-found"
    );

    // The left app's lobby got only its own app's message.
    assert_eq!(left_too.ok("pub lobby from-left").await, "published");
    assert_eq!(left.delivery().await, "from-left");
    assert_eq!(left.ok("count lobby").await, "count lobby 1");
    assert_eq!(server.app_stats("left").group_messages_delivered, 1);
}

#[tokio::test]
async fn caps_and_bad_names_are_answered_with_errors_and_the_flow_carries_on() {
    let limits = toml! {
        max_groups_per_connection = 2
        max_group_members = 2
        max_attachment_size = 8
    };
    let capped = room_app("capped", "close", limits, toml! { max_message_size = 1024 });
    let server = TestServer::start(&capped).await;
    let url = server.app_url("capped", "/room");
    let mut ann = Peer::connect(&url).await;
    let mut bob = Peer::connect(&url).await;
    let mut cy = Peer::connect(&url).await;
    ann.ok("join a").await;
    ann.ok("join b").await;
    assert_eq!(ann.ask("join c").await, "error too-many-groups");
    bob.ok("join a").await;
    assert_eq!(cy.ask("join a").await, "error group-full");
    assert_eq!(ann.ask("join wild*").await, "error invalid-name");
    assert_eq!(
        ann.ask(&format!("join {}", "x".repeat(129))).await,
        "error invalid-name"
    );
    assert_eq!(ann.ask("count has:é").await, "error invalid-name");
    assert_eq!(ann.ask("name 123456789").await, "error too-large");
    assert_eq!(ann.ask("big a 2000 hi").await, "error too-large");
    // Nothing trapped: the connections carry on.
    assert_eq!(ann.ok("name 12345678").await, "named 12345678");
    assert_eq!(ann.ok("pub a fits").await, "published");
    assert_eq!(bob.delivery().await, "fits");
    let stats = server.app_stats("capped");
    assert_eq!(stats.executions_trapped, 0);
    assert_eq!(stats.executions_failed, 0);
}

/// A room with a slow member, after a flood.
struct Flooded {
    server: TestServer,
    publisher: Peer,
    /// Read everything, in order (checked).
    _fast: Peer,
    /// Read nothing during the flood.
    slow: Peer,
    /// How many `m-N` messages were published.
    published: usize,
}

/// A publisher, a member that reads everything and a member that reads
/// nothing, in group `g` of an app whose `/room` handler has
/// `slow_member = policy`. The publisher publishes 256 KiB messages, one
/// per round trip, until the host reports the slow member's overflow
/// (`overflowed`), then 10 more and `end`; the reading member must get
/// every one, in order. The next message is published once the reading
/// member has read the last one, so it keeps up however slow the machine
/// is: only the member that reads nothing can overflow.
async fn flood_a_slow_member(
    app: &str,
    policy: &str,
    overflowed: fn(&StatsSnapshot) -> bool,
) -> Flooded {
    /// Far more than the socket buffers and the queue can hold.
    const MAX: usize = 2000;
    let server = TestServer::start(&room(app, policy)).await;
    let url = server.app_url(app, "/room");
    let mut publisher = Peer::connect(&url).await;
    let mut fast = Peer::connect(&url).await;
    let mut slow = Peer::connect(&url).await;
    for peer in [&mut publisher, &mut fast, &mut slow] {
        peer.ok("join g").await;
    }
    let mut published = 0;
    let mut extra = None;
    while extra != Some(0) {
        assert!(published < MAX, "no overflow after {MAX} messages");
        publisher.ok(&format!("big g 262144 m-{published}")).await;
        let text = fast.delivery().await;
        assert_eq!(numbers(&[text], "m-"), [published]);
        published += 1;
        extra = match extra {
            None if overflowed(&server.app_stats(app)) => Some(10),
            None => None,
            Some(n) => Some(n - 1),
        };
    }
    publisher.ok("pub g end").await;
    eprintln!("the slow member overflowed within {published} messages of 256 KiB");
    assert_eq!(fast.delivery().await, "end");
    Flooded {
        server,
        publisher,
        _fast: fast,
        slow,
        published,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_member_misses_messages_under_drop_while_the_others_get_all() {
    let Flooded {
        server,
        mut publisher,
        mut slow,
        published,
        _fast,
    } = flood_a_slow_member("dropping", "drop", |stats| stats.group_messages_dropped > 0).await;
    // Reading again: the reply comes after everything queued before it.
    slow.ok("id").await;
    let received: Vec<String> = slow.inbox.drain(..).collect();
    let got = numbers(&received, "m-");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order, no repeats");
    let stats = server.app_stats("dropping");
    let ends = received.iter().filter(|text| *text == "end").count() as u64;
    // Every message reached the slow member exactly once or was dropped.
    assert_eq!(
        got.len() as u64 + ends + stats.group_messages_dropped,
        published as u64 + 1
    );
    assert!(got.len() < published, "the host did not queue everything");
    assert_eq!(stats.slow_members_closed, 0);
    // Still a member, and it hears the next message.
    assert_eq!(publisher.ok("count g").await, "count g 3");
    publisher.ok("pub g after").await;
    assert_eq!(slow.delivery().await, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_member_is_closed_with_1008_under_close_while_the_others_get_all() {
    let Flooded {
        server,
        mut publisher,
        mut slow,
        published,
        _fast,
    } = flood_a_slow_member("closing", "close", |stats| stats.slow_members_closed > 0).await;
    // No longer a member from the moment it was found slow.
    assert_eq!(publisher.ok("count g").await, "count g 2");
    let mut received = Vec::new();
    let close = loop {
        match next_message(&mut slow.client).await {
            Message::Text(text) => received.push(text.as_str().to_owned()),
            Message::Close(frame) => break frame.expect("a close code"),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(
        close.reason.as_str(),
        "client does not keep up with its groups"
    );
    let got = numbers(&received, "m-");
    assert!(got.len() < published);
    assert_eq!(
        got,
        (0..got.len()).collect::<Vec<_>>(),
        "a prefix, in order"
    );
    let stats = server.app_stats("closing");
    assert_eq!(stats.slow_members_closed, 1);
    // Once closing, the member is skipped: only the message that found it
    // full was dropped.
    assert_eq!(stats.group_messages_dropped, 1);
}

#[tokio::test]
async fn a_component_built_against_the_first_wit_still_serves_next_to_groups() {
    let manifest = Manifest::app("mixed")
        .flow("legacy", programs::LEGACY)
        .flow("room", programs::ROOM)
        .trigger(
            Trigger::on_port(0)
                .handler(toml! { path = "/legacy" flow = "legacy" })
                .handler(toml! { path = "/room" flow = "room" }),
        );
    let server = TestServer::start(&manifest).await;
    let mut legacy = connect(&server.app_url("mixed", "/legacy")).await;
    send_text(&mut legacy, "hello").await;
    assert_eq!(next_text(&mut legacy).await, "hello");
    let from = next_text(&mut legacy).await;
    let id: u64 = from
        .strip_prefix("from connection ")
        .unwrap()
        .parse()
        .unwrap();
    legacy.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        next_message(&mut legacy).await,
        Message::binary(vec![1u8, 2, 3])
    );
    next_text(&mut legacy).await;
    // Its connection is a connection of the app like any other.
    let mut room = Peer::connect(&server.app_url("mixed", "/room")).await;
    assert_eq!(room.ok(&format!("to {id} from-room")).await, "sent");
    assert_eq!(next_text(&mut legacy).await, "from-room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_keeps_reading_gets_every_message_of_a_burst_that_fits_its_budget() {
    /// Messages per burst: far more than the host ever held per member by
    /// count, and (at 64 KiB) far more bytes than the socket buffers take,
    /// yet well within the member's byte budget.
    const BURST: usize = 400;
    const SIZE: usize = 64 * 1024;
    const BURSTS: usize = 3;
    let limits = toml! { queue_per_connection = "64MiB" queue_per_app = "256MiB" };
    let server = TestServer::start(&room_app("burst", "close", limits, Table::new())).await;
    let url = server.app_url("burst", "/room");
    let mut publisher = Peer::connect(&url).await;
    let mut fast = Peer::connect(&url).await;
    // A small receive window and a pause after each message: the host's
    // writer waits for this member all through a burst, while it reads.
    let mut steady = Peer::over(connect_with_small_window(&url).await);
    for peer in [&mut publisher, &mut fast, &mut steady] {
        peer.ok("join g").await;
    }
    // Each reader says when it has read a whole burst; the next burst
    // starts once both have, so each burst alone fits the budget.
    let (read_one, mut bursts_read) = tokio::sync::mpsc::unbounded_channel();
    let read_bursts = |mut peer: Peer, pause: Duration| {
        let read_one = read_one.clone();
        tokio::spawn(async move {
            for _ in 0..BURSTS {
                for i in 0..BURST {
                    let text = peer.delivery().await;
                    let tag = text.split(' ').next().unwrap_or_default();
                    assert_eq!(tag, format!("b-{i}"));
                    tokio::time::sleep(pause).await;
                }
                read_one.send(()).unwrap();
            }
            peer
        })
    };
    let fast = read_bursts(fast, Duration::ZERO);
    let steady = read_bursts(steady, Duration::from_millis(1));
    for _ in 0..BURSTS {
        let reply = publisher.ok(&format!("burst g {BURST} {SIZE}")).await;
        assert_eq!(reply, format!("burst {BURST}"));
        for _reader in 0..2 {
            let read = tokio::time::timeout(TIMEOUT, bursts_read.recv()).await;
            assert!(read.is_ok(), "a member stopped reading the burst");
        }
    }
    let mut fast = fast.await.expect("the fast member got every message");
    let mut steady = steady.await.expect("the steady member got every message");
    fast.ok("id").await;
    steady.ok("id").await;
    let stats = server.app_stats("burst");
    assert_eq!(stats.group_messages_delivered, (2 * BURST * BURSTS) as u64);
    assert_eq!(stats.group_messages_dropped, 0);
    assert_eq!(stats.slow_members_closed, 0);
}

#[tokio::test]
async fn group_messages_wait_in_the_apps_queue_budget_once_per_member() {
    const MEMBERS: usize = 6;
    // A member's own budget is the app's: the first message dropped is
    // one the app's budget could not take.
    let limits = toml! {
        queue_per_connection = "4MiB"
        queue_per_app = "4MiB"
        slow_client_timeout = "2s"
    };
    let server = TestServer::start(&room_app("budgeted", "drop", limits, Table::new())).await;
    let url = server.app_url("budgeted", "/room");
    let mut publisher = Peer::connect(&url).await;
    let mut members = Vec::new();
    for _ in 0..MEMBERS {
        let mut member = Peer::over(connect_with_small_window(&url).await);
        member.ok("join g").await;
        members.push(member);
    }
    // No member reads. Their own budgets hold 24 MiB together; the app's
    // holds 4 MiB, and a group message is charged to it for every member
    // it waits for.
    let mut published = 0;
    let stats = loop {
        assert!(
            published < 400,
            "nothing was dropped after {published} publishes"
        );
        publisher.ok(&format!("big g 262144 m-{published}")).await;
        published += 1;
        let stats = server.app_stats("budgeted");
        if stats.group_messages_dropped > 0 {
            break stats;
        }
    };
    assert!(
        (3 << 20..=4 << 20).contains(&stats.queued_bytes_out),
        "the app's budget is full of group messages: {stats:?}"
    );
}

#[tokio::test]
async fn a_group_message_too_large_for_a_members_trigger_is_refused_for_that_member() {
    let manifest = Manifest::app("sizes")
        .flow("room", programs::ROOM)
        .trigger(
            Trigger::on_port(0)
                .with(toml! { max_message_size = 1024 })
                .handler(toml! { path = "/room" flow = "room" }),
        )
        .trigger(Trigger::on_port(0).handler(toml! { path = "/room" flow = "room" }));
    let server = TestServer::start(&manifest).await;
    let url = |trigger: usize| format!("ws://{}/room", server.endpoints()[trigger].addr);
    let mut small = Peer::connect(&url(0)).await;
    let mut large = Peer::connect(&url(1)).await;
    let mut publisher = Peer::connect(&url(1)).await;
    let small_id = small.id().await;
    small.ok("join g").await;
    large.ok("join g").await;
    // The app carries 4 KiB; the first trigger's clients take 1 KiB.
    assert_eq!(publisher.ok("big g 4096 too-big").await, "published");
    assert!(large.delivery().await.starts_with("too-big "));
    assert_eq!(
        publisher
            .ask(&format!("to {small_id} {}", "y".repeat(2000)))
            .await,
        "error too-large"
    );
    // The small member was neither dropped nor closed: it hears the next.
    assert_eq!(publisher.ok("pub g after").await, "published");
    assert_eq!(small.delivery().await, "after");
    assert_eq!(large.delivery().await, "after");
    assert_eq!(small.ok("count g").await, "count g 2");
    let stats = server.app_stats("sizes");
    assert_eq!(stats.group_messages_delivered, 3);
    assert_eq!(stats.group_messages_too_large, 1);
    assert_eq!(stats.slow_members_closed, 0);
}

#[tokio::test]
async fn after_a_reload_groups_carry_what_the_new_triggers_accept() {
    let manifest = |max: i64| {
        room_app(
            "resized",
            "close",
            Table::new(),
            toml! { max_message_size = max },
        )
    };
    let server = TestServer::start(&manifest(1024)).await;
    let url = server.app_url("resized", "/room");
    let mut before = Peer::connect(&url).await;
    before.ok("join g").await;
    let report = server.reload_with(0, &manifest(8192)).await.unwrap();
    assert!(report.needs_restart.is_empty(), "{report:?}");
    let mut after = Peer::connect(&url).await;
    let mut publisher = Peer::connect(&url).await;
    after.ok("join g").await;
    assert_eq!(publisher.ok("big g 4096 big").await, "published");
    assert!(after.delivery().await.starts_with("big "));
    // A connection made before keeps its trigger's 1 KiB.
    assert_eq!(publisher.ok("pub g small").await, "published");
    assert_eq!(before.delivery().await, "small");
}
