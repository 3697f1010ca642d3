//! One app's hub in a cluster: its [`LocalHub`] for the connections this
//! host holds, and NATS for those the other hosts hold.
//!
//! - `publish` offers the message to the local members, then, when another
//!   host may hold members of the group ([`Directory::may_hold`]), puts it
//!   in the app's lane of the link's outbox for the group's subject; every
//!   host of the app subscribes to the app's groups and offers it to its
//!   members. The broker does not echo a host's own messages back
//!   (`no_echo`), so every member gets a message once.
//! - A host tells the others which groups it holds members in
//!   ([`super::interest`]); the first local `join` of a group waits until
//!   they have it, so a publish made on any host after the join returned
//!   is sent, and reaches the new member.
//! - `send_to` a connection of another host (its id names the host), and
//!   `member_count` / `members`, are requests to the hosts of the app
//!   ([`Directory`]) with a bounded wait ([`super::questions`]).
//! - A group a `[[history]]` names keeps its messages in the app's
//!   JetStream stream ([`super::history`]): a publish to it is stored
//!   first (under the group's lock on this host, so this host's members
//!   get its messages in position order), then offered to the members
//!   here and sent to the other hosts with its position. A `join_from`
//!   makes the connection a member whose live messages wait, tells the
//!   other hosts, reads the history after the position, sends it, then
//!   the waiting messages it did not hold, and from then on skips a live
//!   message it was sent already ([`LocalHub::release`]): nothing lost or
//!   doubled at the seam. Messages of different hosts reach a member in
//!   the order they arrive, which may differ from their position order.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::{HeaderMap, StatusCode, Subscriber};
use futures_util::StreamExt as _;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::directory::{Directory, HEARTBEAT};
use super::history::{self, StreamHistory};
use super::inbound::{FANOUT_SLICE, Inbound};
use super::interest::Interest;
use super::link::{Link, Outgoing, Unreachable};
use super::outbox::Lane;
use super::questions::{Answer, Question, Questions};
use super::wire::{self, Op, Outcome, Subjects, header};
use crate::close::Close;
use crate::hub::{
    ConnectionId, DuplicateId, Fanout, GroupName, Histories, HistoryError, HostId, HubError,
    HubLimits, HubResult, LocalHub, MAX_READ, MemberInfo, Outlet, Page, Pending, PendingHistory,
    Position, Transport, TransportCounts,
};
use crate::manifest::spec::SlowMember;

/// How long an operation waits for other hosts: their answers to a count,
/// a listing or a send, or the broker's confirmation of a new
/// subscription. Healthy hosts answer in a round trip; this is for busy
/// ones.
pub(super) const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The hub of one app in a cluster.
pub(crate) struct ClusterHub {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

impl fmt::Debug for ClusterHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterHub")
            .field("app", &self.shared.app)
            .field("host", &self.shared.me)
            .field("local", &self.shared.local)
            .finish_non_exhaustive()
    }
}

/// What the hub and its tasks share.
pub(super) struct Shared {
    pub(super) app: Arc<str>,
    pub(super) me: HostId,
    local: LocalHub,
    limits: HubLimits,
    pub(super) link: Arc<Link>,
    /// The app's lane of the link's outbox.
    pub(super) lane: Lane,
    pub(super) subjects: Subjects,
    pub(super) peers: Directory,
    pub(super) interest: Interest,
    /// Group messages from other hosts waiting for the local members.
    inbound: Inbound,
    /// The app's lane of the host's fair scheduler: the fan-out of those
    /// messages runs in the app's turns.
    turns: crate::runtime::Lane,
    questions: Questions,
    counters: Counters,
    /// Whether a message too large for the broker has been logged.
    warned_too_large: AtomicBool,
    /// Where the groups that keep history keep it, if any does.
    history: Option<StreamHistory>,
}

#[derive(Debug, Default)]
struct Counters {
    /// Group messages from other hosts dropped: the app's inbound queue
    /// was full.
    shed: AtomicU64,
    /// Publishes and requests refused: the app's lane held its share.
    over_share: AtomicU64,
    received: AtomicU64,
    received_delivered: AtomicU64,
    received_dropped: AtomicU64,
    received_closed: AtomicU64,
    received_too_large: AtomicU64,
    forwarded: AtomicU64,
    unavailable: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn received(&self, fanout: Fanout) {
        Self::add(&self.received, 1);
        Self::add(&self.received_delivered, fanout.delivered);
        Self::add(&self.received_dropped, fanout.dropped);
        Self::add(&self.received_closed, fanout.closed);
        Self::add(&self.received_too_large, fanout.too_large);
    }
}

impl ClusterHub {
    /// The hub of app `app` on this host, reaching the app's other hosts
    /// through `link`. Its tasks run until the hub is dropped.
    pub(super) fn new(
        link: &Arc<Link>,
        app: &str,
        limits: HubLimits,
        turns: crate::runtime::Lane,
        history: Option<StreamHistory>,
    ) -> Self {
        let stop = CancellationToken::new();
        let subjects = Subjects::new(app);
        let app: Arc<str> = app.into();
        link.register(&app, &subjects);
        let shared = Arc::new(Shared {
            app: Arc::clone(&app),
            me: link.host(),
            // History is kept in JetStream ([`StreamHistory`]), not here.
            local: LocalHub::keeping(limits.clone(), Histories::default()),
            limits,
            link: Arc::clone(link),
            lane: Lane::App(Arc::clone(&app)),
            subjects,
            peers: Directory::default(),
            interest: Interest::default(),
            inbound: Inbound::default(),
            turns,
            questions: Questions::default(),
            counters: Counters::default(),
            warned_too_large: AtomicBool::new(false),
            history,
        });
        if shared.limits.max_message_size.get() > link.max_payload() && link.is_connected() {
            tracing::warn!(
                app = &*app,
                "cluster: the app takes messages of up to {} bytes, but NATS at {} takes at most \
                 {}: a group message larger than that answers `too-large`; raise `max_payload` in \
                 the NATS server's configuration",
                shared.limits.max_message_size.get(),
                link.servers(),
                link.max_payload()
            );
        }
        link.runtime()
            .spawn(Arc::clone(&shared).serve(stop.clone()));
        if shared.history.is_some() {
            // The stream is made (or brought to the app's limits) now,
            // not at the first publish; a failure is said, and tried
            // again by the first operation.
            let loading = Arc::clone(&shared);
            link.runtime().spawn(async move {
                if let Some(history) = &loading.history {
                    let _ = history.stream().await;
                }
            });
        }
        Self {
            shared,
            _stop: stop.drop_guard(),
        }
    }
}

impl Drop for ClusterHub {
    fn drop(&mut self) {
        self.shared.link.unregister(&self.shared.app);
    }
}

impl Shared {
    /// Subscribe to what every host of the app needs (its own requests,
    /// the answers to its questions, the app's announcements, its groups),
    /// say hello, then serve until `stop`.
    async fn serve(self: Arc<Self>, stop: CancellationToken) {
        let client = self.link.client().clone();
        let subscribed = async {
            let requests = client.subscribe(self.subjects.host(self.me)).await?;
            let answers = client.subscribe(self.subjects.replies(self.me)).await?;
            let hosts = client.subscribe(self.subjects.hosts()).await?;
            let groups = client.subscribe(self.subjects.groups()).await?;
            Ok::<_, async_nats::SubscribeError>((requests, answers, hosts, groups))
        };
        let (requests, answers, hosts, groups) = tokio::select! {
            subscribed = subscribed => match subscribed {
                Ok(subscriptions) => subscriptions,
                Err(error) => {
                    tracing::error!(
                        app = &*self.app,
                        "cluster: cannot subscribe to the app's subjects ({error}); the app is \
                         served on this host only"
                    );
                    return;
                }
            },
            () = stop.cancelled() => return,
        };
        tokio::join!(
            Arc::clone(&self).answer_requests(requests, stop.clone()),
            Arc::clone(&self).route_answers(answers, stop.clone()),
            Arc::clone(&self).keep_presence(hosts, stop.clone()),
            Arc::clone(&self).keep_interest(stop.clone()),
            Arc::clone(&self).read_groups(groups, stop),
        );
    }

    pub(super) fn local_count(&self, group: &GroupName) -> u32 {
        use futures_util::FutureExt as _;
        self.local
            .member_count(group)
            .now_or_never()
            .and_then(Result::ok)
            .unwrap_or(0)
    }

    /// Count and log an operation that could not reach the other hosts.
    fn unavailable(&self, what: &str) -> HubError {
        Counters::add(&self.counters.unavailable, 1);
        self.link.note_unavailable();
        tracing::debug!(
            app = &*self.app,
            "cluster: {what}: the other hosts could not be reached"
        );
        HubError::Unavailable
    }

    /// The size check of a message that may go to other hosts with
    /// `headers`: the app's limit, and what the broker takes.
    fn check_size(&self, message: &Message, headers: &HeaderMap) -> HubResult<()> {
        if message.len() > self.limits.max_message_size.get() {
            return Err(HubError::TooLarge);
        }
        let max_payload = self.link.max_payload();
        if message.len() + wire::headers_len(headers) > max_payload {
            if !self.warned_too_large.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    app = &*self.app,
                    "cluster: a group message of {} bytes is larger than NATS at {} takes ({} \
                     bytes): it answered `too-large`; raise `max_payload` in the NATS server's \
                     configuration, or send smaller messages (logged once)",
                    message.len(),
                    self.link.servers(),
                    max_payload
                );
            }
            return Err(HubError::TooLarge);
        }
        Ok(())
    }

    /// Bytes one part of an answer may hold: what the broker takes, less
    /// the largest headers of a part.
    pub(super) fn part_budget(&self) -> usize {
        let mut headers = HeaderMap::new();
        headers.insert(header::OUTCOME, Outcome::TooManyToList.as_str());
        headers.insert(header::MORE, "1");
        self.link
            .max_payload()
            .saturating_sub(wire::headers_len(&headers))
    }

    pub(super) fn headers(&self, op: Op) -> HeaderMap {
        let mut headers = wire::headers(op);
        headers.insert(header::HOST, self.me.to_string());
        headers
    }

    /// Announce this host on the app's `hosts` subject.
    fn announce(&self, op: Op) {
        let _ = self.link.send(
            &Lane::Control,
            Outgoing {
                subject: self.subjects.hosts(),
                reply: None,
                headers: self.headers(op),
                payload: Bytes::new(),
            },
        );
    }

    /// Heartbeats out, announcements in: keep [`Shared::peers`] current.
    async fn keep_presence(self: Arc<Self>, mut hosts: Subscriber, stop: CancellationToken) {
        let mut state = self.link.watch_state();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.interest.connected();
        self.announce(Op::Hello);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = heartbeat.tick() => {
                    if self.interest.resend.swap(false, Ordering::Relaxed) {
                        self.announce(Op::Hello);
                    } else {
                        self.announce(Op::Here);
                    }
                    self.probe_silent();
                }
                changed = state.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if state.borrow_and_update().connected {
                        // Back: what the others hold may have changed
                        // unseen, and they may have given this host up.
                        // Tell them, and hear from them at once.
                        self.peers.forget_groups();
                        self.interest.connected();
                        self.announce(Op::Hello);
                    }
                }
                announcement = hosts.next() => {
                    let Some(announcement) = announcement else { break };
                    let headers = announcement.headers.as_ref();
                    let Some(host) = wire::number(headers, header::HOST).and_then(HostId::new) else {
                        continue;
                    };
                    if host == self.me {
                        continue;
                    }
                    match wire::op(headers) {
                        Some(Op::Hello) => {
                            self.peers.hello(host);
                            self.announce(Op::Here);
                            if self.peers.heard(host) {
                                self.ask_groups(host);
                            }
                        }
                        // Its groups are not known yet: ask (again).
                        Some(Op::Here) if self.peers.heard(host) => self.ask_groups(host),
                        Some(Op::Bye) => self.peers.forget(host),
                        _ => {}
                    }
                }
            }
        }
    }

    /// Answer the other hosts' requests to this one.
    async fn answer_requests(self: Arc<Self>, mut requests: Subscriber, stop: CancellationToken) {
        loop {
            let request = tokio::select! {
                () = stop.cancelled() => break,
                request = requests.next() => match request {
                    Some(request) => request,
                    None => break,
                },
            };
            self.answer(request).await;
        }
    }

    async fn answer(&self, request: async_nats::Message) {
        let headers = request.headers.as_ref();
        let Some(from) = wire::number(headers, header::HOST).and_then(HostId::new) else {
            return;
        };
        match wire::op(headers) {
            Some(Op::AskGroups) => return self.send_groups(from),
            Some(Op::Groups) => return self.take_groups(from, &request),
            _ => {}
        }
        let Some(reply) = request.reply.clone() else {
            return;
        };
        let mut parts = Vec::new();
        let outcome = match wire::op(headers) {
            Some(Op::Ping) => Outcome::Ok,
            Some(Op::GroupsChanged) => self.take_changes(from, &request),
            Some(Op::Send) => self.answer_send(&request).await,
            Some(Op::Close) => self.answer_close(&request),
            Some(Op::Count) => match group_of(headers) {
                Some(group) => {
                    parts.push(Bytes::from(self.local_count(&group).to_string()));
                    Outcome::Ok
                }
                None => return,
            },
            Some(Op::Members) => {
                let (Some(group), Some(limit)) =
                    (group_of(headers), wire::number(headers, header::LIMIT))
                else {
                    return;
                };
                match self.local.members(&group, limit).await {
                    Ok(members) => match wire::encode_members(&members, self.part_budget()) {
                        Some(encoded) => {
                            parts = encoded;
                            Outcome::Ok
                        }
                        None => Outcome::TooLarge,
                    },
                    Err(_) => Outcome::TooManyToList,
                }
            }
            _ => return,
        };
        if parts.is_empty() {
            parts.push(Bytes::new());
        }
        let last = parts.len() - 1;
        for (n, payload) in parts.into_iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert(header::OUTCOME, outcome.as_str());
            if n < last {
                headers.insert(header::MORE, "1");
            }
            let _ = self.link.send(
                &Lane::Control,
                Outgoing {
                    subject: reply.clone(),
                    reply: None,
                    headers,
                    payload,
                },
            );
        }
    }

    /// Another host's `send_to` for a connection of this one.
    async fn answer_send(&self, request: &async_nats::Message) -> Outcome {
        let headers = request.headers.as_ref();
        let Some(id) = wire::number::<ConnectionId>(headers, header::TO) else {
            return Outcome::NotFound;
        };
        let Some(message) = wire::join(wire::get(headers, header::KIND), request.payload.clone())
        else {
            return Outcome::NotFound;
        };
        match self.local.send_to(id, message).await {
            Ok(fanout) => {
                self.counters.received(fanout);
                Outcome::Ok
            }
            Err(HubError::TooLarge) => Outcome::TooLarge,
            Err(_) => Outcome::NotFound,
        }
    }

    /// Close the connection of this host a `close` request names.
    fn answer_close(&self, request: &async_nats::Message) -> Outcome {
        let headers = request.headers.as_ref();
        let (Some(id), Some(code)) = (
            wire::number::<ConnectionId>(headers, header::TO),
            wire::number::<u16>(headers, header::CODE),
        ) else {
            return Outcome::NotFound;
        };
        let reason = String::from_utf8_lossy(&request.payload).into_owned();
        let Ok(close) = Close::requested(code, reason) else {
            return Outcome::NotFound;
        };
        match self.local.close_now(id, close) {
            Ok(()) => Outcome::Ok,
            Err(_) => Outcome::NotFound,
        }
    }

    /// Pass every answer to the request waiting for it.
    async fn route_answers(self: Arc<Self>, mut answers: Subscriber, stop: CancellationToken) {
        loop {
            let answer = tokio::select! {
                () = stop.cancelled() => break,
                answer = answers.next() => match answer {
                    Some(answer) => answer,
                    None => break,
                },
            };
            if let Some((question, peer)) = Subjects::parse_reply(&answer.subject) {
                self.questions.route(question, peer, answer);
            }
        }
    }

    /// Ask `peers` (`op` with `headers` and `payload`) in the app's lane
    /// and wait for every one's answer, up to [`QUERY_TIMEOUT`]; then
    /// `unavailable`.
    async fn ask(
        &self,
        what: &str,
        peers: &[HostId],
        headers: &HeaderMap,
        payload: &Bytes,
    ) -> HubResult<BTreeMap<HostId, Answer>> {
        let question = self
            .put_question(&self.lane, peers, headers, payload)
            .map_err(|why| self.refused(what, why))?;
        self.answers(question, peers)
            .await
            .ok_or_else(|| self.unavailable(what))
    }

    /// Queue a question for `peers` in `lane`, without waiting; `Err` if
    /// the link could not take it for every one.
    pub(super) fn put_question(
        &self,
        lane: &Lane,
        peers: &[HostId],
        headers: &HeaderMap,
        payload: &Bytes,
    ) -> Result<Question, Unreachable> {
        let question = self.questions.open();
        for &peer in peers {
            let request = Outgoing {
                subject: self.subjects.host(peer),
                reply: Some(self.subjects.reply(self.me, question.id, peer)),
                headers: headers.clone(),
                payload: payload.clone(),
            };
            self.link.send(lane, request)?;
        }
        Ok(question)
    }

    /// Count and log an operation the link could not take.
    fn refused(&self, what: &str, why: Unreachable) -> HubError {
        if why == Unreachable::OverShare {
            Counters::add(&self.counters.over_share, 1);
        }
        self.unavailable(what)
    }

    /// Wait for every one of `peers`' answers to `question`, up to
    /// [`QUERY_TIMEOUT`]; `None` if one stays silent. A peer with no
    /// subscription left (the broker says no one responds) is gone:
    /// forgotten, and its answer is [`Answer::Gone`].
    pub(super) async fn answers(
        &self,
        mut question: Question,
        peers: &[HostId],
    ) -> Option<BTreeMap<HostId, Answer>> {
        let mut waiting: BTreeSet<HostId> = peers.iter().copied().collect();
        let mut answers = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + QUERY_TIMEOUT;
        while !waiting.is_empty() {
            let Ok(Some((peer, part))) =
                tokio::time::timeout_at(deadline, question.answers.recv()).await
            else {
                let silent = waiting.iter().map(ToString::to_string).collect::<Vec<_>>();
                tracing::debug!(
                    app = &*self.app,
                    "cluster: no answer from host(s) {} within {QUERY_TIMEOUT:?}",
                    silent.join(", ")
                );
                return None;
            };
            if !waiting.contains(&peer) {
                continue;
            }
            if part.status == Some(StatusCode::NO_RESPONDERS) {
                self.peers.forget(peer);
                answers.insert(peer, Answer::Gone);
                waiting.remove(&peer);
                continue;
            }
            let more = wire::get(part.headers.as_ref(), header::MORE).is_some();
            match answers
                .entry(peer)
                .or_insert_with(|| Answer::Parts(Vec::new()))
            {
                Answer::Parts(parts) => parts.push(part),
                Answer::Gone => {}
            }
            if !more {
                waiting.remove(&peer);
            }
        }
        Some(answers)
    }

    /// The other hosts to ask; `unavailable` when the broker cannot be
    /// reached, since other hosts may hold members then.
    fn peers_to_ask(&self, what: &str) -> HubResult<Vec<HostId>> {
        if !self.link.is_connected() {
            return Err(self.unavailable(what));
        }
        Ok(self.peers.peers())
    }

    async fn remote_send_to(&self, id: ConnectionId, message: Message) -> HubResult<Fanout> {
        let host = HostId::of(id);
        if host == HostId::LOCAL {
            return Err(HubError::NotFound);
        }
        let Some((kind, payload)) = wire::split(message.clone()) else {
            return Err(HubError::NotFound);
        };
        let mut headers = self.headers(Op::Send);
        headers.insert(header::TO, id.to_string());
        headers.insert(header::KIND, kind);
        self.check_size(&message, &headers)?;
        let outcome = self
            .ask_host(
                "send to a connection of another host",
                host,
                &headers,
                &payload,
            )
            .await?;
        Counters::add(&self.counters.forwarded, 1);
        match outcome {
            Some(Outcome::Ok) => Ok(Fanout::default()),
            Some(Outcome::TooLarge) => Err(HubError::TooLarge),
            _ => Err(HubError::NotFound),
        }
    }

    async fn remote_close(&self, id: ConnectionId, close: Close) -> HubResult<()> {
        let host = HostId::of(id);
        if host == HostId::LOCAL {
            return Err(HubError::NotFound);
        }
        let mut headers = self.headers(Op::Close);
        headers.insert(header::TO, id.to_string());
        headers.insert(header::CODE, close.code().to_string());
        let reason = Bytes::from(close.reason().to_owned());
        let outcome = self
            .ask_host(
                "close a connection of another host",
                host,
                &headers,
                &reason,
            )
            .await?;
        match outcome {
            Some(Outcome::Ok) => Ok(()),
            _ => Err(HubError::NotFound),
        }
    }

    /// Ask one `host` about one of its connections; the outcome its answer
    /// names, if it names one.
    async fn ask_host(
        &self,
        what: &str,
        host: HostId,
        headers: &HeaderMap,
        payload: &Bytes,
    ) -> HubResult<Option<Outcome>> {
        let answers = self.ask(what, &[host], headers, payload).await?;
        Ok(match answers.get(&host) {
            Some(Answer::Parts(parts)) => parts
                .first()
                .and_then(|part| wire::outcome(part.headers.as_ref())),
            _ => None,
        })
    }

    async fn cluster_count(&self, group: &GroupName) -> HubResult<u32> {
        let what = "count the members of a group";
        let mut count = self.local_count(group);
        let peers = self.peers_to_ask(what)?;
        if peers.is_empty() {
            return Ok(count);
        }
        let mut headers = self.headers(Op::Count);
        headers.insert(header::GROUP, group.as_str());
        for answer in self
            .ask(what, &peers, &headers, &Bytes::new())
            .await?
            .values()
        {
            let Answer::Parts(parts) = answer else {
                continue;
            };
            let theirs = parts
                .first()
                .and_then(|part| std::str::from_utf8(&part.payload).ok()?.parse::<u32>().ok())
                .unwrap_or(0);
            count = count.saturating_add(theirs);
        }
        Ok(count)
    }

    async fn cluster_members(&self, group: &GroupName, limit: usize) -> HubResult<Vec<MemberInfo>> {
        let what = "list the members of a group";
        let mut members = self.local.members(group, limit).await?;
        let peers = self.peers_to_ask(what)?;
        if peers.is_empty() {
            return Ok(members);
        }
        let mut headers = self.headers(Op::Members);
        headers.insert(header::GROUP, group.as_str());
        headers.insert(header::LIMIT, limit.to_string());
        for answer in self
            .ask(what, &peers, &headers, &Bytes::new())
            .await?
            .values()
        {
            let Answer::Parts(parts) = answer else {
                continue;
            };
            for part in parts {
                match wire::outcome(part.headers.as_ref()) {
                    Some(Outcome::Ok) => {}
                    Some(Outcome::TooManyToList) => return Err(HubError::TooManyToList),
                    Some(Outcome::TooLarge) => return Err(HubError::TooLarge),
                    _ => return Err(self.unavailable(what)),
                }
                let Some(theirs) = wire::decode_members(&part.payload) else {
                    return Err(self.unavailable(what));
                };
                members.extend(theirs);
            }
            if members.len() > limit {
                return Err(HubError::TooManyToList);
            }
        }
        members.sort_unstable_by_key(|member| member.id);
        Ok(members)
    }

    /// Take the app's group messages from other hosts off their
    /// subscription into [`Shared::inbound`], and offer them to this
    /// host's members in the app's turns, until `stop`.
    async fn read_groups(self: Arc<Self>, mut groups: Subscriber, stop: CancellationToken) {
        let intake = async {
            while let Some(message) = groups.next().await {
                if !self.inbound.push(message) {
                    Counters::add(&self.counters.shed, 1);
                }
            }
        };
        let fanout = self.turns.run(async {
            loop {
                let message = self.inbound.next().await;
                let started = std::time::Instant::now();
                self.deliver(&message);
                while started.elapsed() < FANOUT_SLICE
                    && let Some(message) = self.inbound.take()
                {
                    self.deliver(&message);
                }
                // The turn goes to the next app with work waiting.
                tokio::task::yield_now().await;
            }
        });
        tokio::select! {
            () = stop.cancelled() => {}
            () = intake => {}
            () = fanout => {}
        }
    }

    /// Probe the hosts not heard from for a while: one that is gone (no
    /// responders) is forgotten; one that answers stays.
    fn probe_silent(self: &Arc<Self>) {
        let silent = self.peers.silent();
        if silent.is_empty() {
            return;
        }
        let shared = Arc::clone(self);
        self.link.runtime().spawn(async move {
            let headers = shared.headers(Op::Ping);
            let Ok(question) =
                shared.put_question(&Lane::Control, &silent, &headers, &Bytes::new())
            else {
                return;
            };
            // Gone peers are forgotten by `answers`; silence changes nothing.
            let _ = shared.answers(question, &silent).await;
        });
    }

    /// A group message from another host, for this host's members.
    pub(super) fn deliver(&self, message: &async_nats::Message) {
        let headers = message.headers.as_ref();
        let Some(group) = group_of(headers) else {
            return;
        };
        let Some(content) = wire::join(wire::get(headers, header::KIND), message.payload.clone())
        else {
            tracing::debug!(
                app = &*self.app,
                "cluster: dropped a malformed group message"
            );
            return;
        };
        let except = wire::number(headers, header::EXCEPT);
        if let Some(position) = history::carried(headers) {
            let fanout = self.local.publish_kept(&group, &content, position, except);
            self.counters.received(fanout);
            return;
        }
        match self.local.publish_now(&group, content, except) {
            Ok(fanout) => self.counters.received(fanout),
            Err(error) => tracing::debug!(
                app = &*self.app,
                "cluster: a group message from another host was not delivered: {error}"
            ),
        }
    }
}

impl Shared {
    /// The app's history, if a rule of it names `group`.
    fn history_of(&self, group: &GroupName) -> Option<&StreamHistory> {
        self.history
            .as_ref()
            .filter(|history| history.rule(group).is_some())
    }

    /// `publish` from this host: a message of a group that keeps history
    /// is stored first, then offered here and sent to the other hosts with
    /// its position (see the module's documentation).
    async fn publish(
        &self,
        group: &GroupName,
        message: Message,
        except: Option<ConnectionId>,
    ) -> HubResult<Fanout> {
        let Some((kind, payload)) = wire::split(message.clone()) else {
            // Only data messages are published; nothing else travels.
            return self.local.publish_now(group, message, except);
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::KIND, kind);
        headers.insert(header::GROUP, group.as_str());
        if let Some(except) = except {
            headers.insert(header::EXCEPT, except.to_string());
        }
        let Some(history) = self.history_of(group) else {
            // Too large for the broker is too large everywhere: no member
            // gets a message that only some hosts could deliver.
            self.check_size(&message, &headers)?;
            let fanout = self.local.publish_now(group, message, except)?;
            return Ok(self.forward(group, headers, payload, fanout));
        };
        // As large as a position and the stream's own headers get.
        let mut stored = headers.clone();
        stored.insert(header::POSITION, Position::LARGEST.to_string());
        stored.insert(header::KEPT_AT, u64::MAX.to_string());
        stored.insert(header::PREVIOUS, u64::MAX.to_string());
        stored.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            u64::MAX.to_string(),
        );
        self.check_size(&message, &stored)?;
        let mut tail = history.lock(group).await;
        let (position, stamped) = history.append(group, &mut tail, message).await?;
        let fanout = self.local.publish_kept(group, &stamped, position, except);
        let Some((_, payload)) = wire::split(stamped) else {
            return Ok(fanout);
        };
        headers.insert(header::POSITION, position.to_string());
        Ok(self.forward(group, headers, payload, fanout))
    }

    /// Send a group message to the other hosts, unless none holds a
    /// member of the group; `fanout` is what it did here.
    fn forward(
        &self,
        group: &GroupName,
        headers: HeaderMap,
        payload: Bytes,
        mut fanout: Fanout,
    ) -> Fanout {
        if self.link.is_connected() && !self.others_may_hold(group) {
            // No other host holds a member: the broker would drop it.
            return fanout;
        }
        let forwarded = self.link.send(
            &self.lane,
            Outgoing {
                subject: self.subjects.group(group),
                reply: None,
                headers,
                payload,
            },
        );
        match forwarded {
            Ok(()) => Counters::add(&self.counters.forwarded, 1),
            Err(why) => {
                self.refused("publish to the other hosts", why);
                fanout.unreached = true;
            }
        }
        fanout
    }

    /// See [`Transport::join_from`] and the module's documentation.
    async fn join_from(
        &self,
        id: ConnectionId,
        group: GroupName,
        since: Position,
    ) -> Result<bool, HistoryError> {
        let history = self.history_of(&group).ok_or(HistoryError::NotKept)?;
        if !self.local.join_held(id, &group)? {
            // A member already gets every message live.
            return Ok(true);
        }
        // Every host sends the group's messages here from now on.
        let mark = self.interest.mark([group.clone()]);
        self.settled(mark).await;
        let sent = match history.read(&group, Some(since), MAX_READ).await {
            Ok(page) => {
                // A join sends at most MAX_READ messages: if more were
                // missed, the rest is missing, and said so.
                let newest_sent = page.entries.last().map(|kept| kept.position);
                let cut = page.entries.len() == MAX_READ && newest_sent != Some(page.head);
                let sent_up_to = if cut { newest_sent } else { None };
                self.local
                    .release(id, &group, &page.entries, sent_up_to.unwrap_or(page.head))
                    .map(|()| page.complete && !cut)
            }
            Err(error) => {
                let _ = self.local.leave(id, &group).await;
                Err(error)
            }
        };
        if sent.is_err() {
            self.interest.mark([group]);
        }
        sent
    }
}

fn group_of(headers: Option<&HeaderMap>) -> Option<GroupName> {
    GroupName::parse(wire::get(headers, header::GROUP)?).ok()
}

impl Transport for ClusterHub {
    fn attach(&self, outlet: Box<dyn Outlet>, policy: SlowMember) -> Result<(), DuplicateId> {
        self.shared.local.attach(outlet, policy)
    }

    fn detach(&self, id: ConnectionId) -> u64 {
        let groups = self.shared.local.joined(id);
        let dropped = self.shared.local.detach(id);
        if !groups.is_empty() {
            self.shared.interest.mark(groups);
        }
        dropped
    }

    fn join(&self, id: ConnectionId, group: GroupName) -> Pending<'_, ()> {
        Box::pin(async move {
            let shared = &self.shared;
            let joining = !shared.local.joined(id).contains(&group);
            shared.local.join(id, group.clone()).await?;
            if joining {
                // A task hop when the host is subscribed already; a round
                // trip to the broker when this is the group's first member.
                let mark = shared.interest.mark([group]);
                shared.settled(mark).await;
            }
            Ok(())
        })
    }

    fn leave(&self, id: ConnectionId, group: &GroupName) -> Pending<'_, ()> {
        let group = group.clone();
        Box::pin(async move {
            let shared = &self.shared;
            let leaving = shared.local.joined(id).contains(&group);
            shared.local.leave(id, &group).await?;
            if leaving {
                shared.interest.mark([group]);
            }
            Ok(())
        })
    }

    fn joined(&self, id: ConnectionId) -> Vec<GroupName> {
        self.shared.local.joined(id)
    }

    fn set_attachment(&self, id: ConnectionId, attachment: Bytes) -> HubResult<()> {
        self.shared.local.set_attachment(id, attachment)
    }

    fn attachment(&self, id: ConnectionId) -> HubResult<Bytes> {
        self.shared.local.attachment(id)
    }

    fn publish(
        &self,
        group: &GroupName,
        message: Message,
        except: Option<ConnectionId>,
    ) -> Pending<'_, Fanout> {
        let group = group.clone();
        Box::pin(async move { self.shared.publish(&group, message, except).await })
    }

    fn keeps(&self, group: &GroupName) -> bool {
        self.shared.history_of(group).is_some()
    }

    fn read_history(
        &self,
        group: &GroupName,
        since: Option<Position>,
        limit: usize,
    ) -> PendingHistory<'_, Page> {
        let group = group.clone();
        Box::pin(async move {
            let history = self
                .shared
                .history_of(&group)
                .ok_or(HistoryError::NotKept)?;
            history.read(&group, since, limit).await
        })
    }

    fn join_from(
        &self,
        id: ConnectionId,
        group: GroupName,
        since: Position,
    ) -> PendingHistory<'_, bool> {
        Box::pin(async move { self.shared.join_from(id, group, since).await })
    }

    fn send_to(&self, id: ConnectionId, message: Message) -> Pending<'_, Fanout> {
        Box::pin(async move {
            if HostId::of(id) == self.shared.me {
                return self.shared.local.send_to(id, message).await;
            }
            self.shared.remote_send_to(id, message).await
        })
    }

    fn close(&self, id: ConnectionId, close: Close) -> Pending<'_, ()> {
        Box::pin(async move {
            if HostId::of(id) == self.shared.me {
                return self.shared.local.close_now(id, close);
            }
            self.shared.remote_close(id, close).await
        })
    }

    fn member_count(&self, group: &GroupName) -> Pending<'_, u32> {
        let group = group.clone();
        Box::pin(async move { self.shared.cluster_count(&group).await })
    }

    fn members(&self, group: &GroupName, limit: usize) -> Pending<'_, Vec<MemberInfo>> {
        let group = group.clone();
        Box::pin(async move { self.shared.cluster_members(&group, limit).await })
    }

    fn counts(&self) -> TransportCounts {
        let counters = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TransportCounts {
            received: get(&counters.received),
            received_fanout: Fanout {
                delivered: get(&counters.received_delivered),
                dropped: get(&counters.received_dropped),
                closed: get(&counters.received_closed),
                too_large: get(&counters.received_too_large),
                ..Fanout::default()
            },
            forwarded: get(&counters.forwarded),
            unavailable: get(&counters.unavailable),
            over_share: get(&counters.over_share),
            shed: get(&counters.shed),
            queued_out: self.shared.link.queued(&self.shared.app) as u64,
            queued_in: self.shared.inbound.bytes() as u64,
            ..self.shared.local.counts()
        }
    }
}
