//! The hub of one app on one host: its connections by id, each with its
//! outlet, slow-member policy, groups and attachment, and its groups by
//! name.
//!
//! A publish takes the group's members from the registry under its read
//! lock (a reference-counted snapshot: one increment) and offers the
//! message to each of them (`try_send`, never a wait) after the lock is
//! released. So a fan-out to 10,000 members never holds up an attach, a
//! join, a leave or a detach, nor a worker thread that waits for one. A
//! change to a group that a fan-out still reads copies the group's list
//! first (`Arc::make_mut`: one reference count per member, no allocation
//! per member), and the fan-out goes on with the members it started with.
//! Every member gets a clone of the one message: the payload is shared by
//! reference count.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::ready;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio_tungstenite::tungstenite::{Bytes, Message};

use super::history::{self, Histories, Kept};
use super::{
    ConnectionId, Delivery, DuplicateId, Fanout, GroupName, HistoryError, HubError, HubLimits,
    HubResult, MemberInfo, Outlet, Page, Pending, PendingHistory, Position, Transport,
};
use crate::close::Close;
use crate::manifest::spec::SlowMember;

/// The local hub of one app.
pub(crate) struct LocalHub {
    limits: HubLimits,
    registry: RwLock<Registry>,
    /// The groups that keep history, and what they keep.
    histories: Histories,
}

/// Sizes only: a member's outlet leads back to its app, and so to this hub.
impl fmt::Debug for LocalHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hub = f.debug_struct("LocalHub");
        hub.field("limits", &self.limits);
        // Never wait for the lock, nor take it twice, to print.
        if let Ok(registry) = self.registry.try_read() {
            hub.field("connections", &registry.connections.len())
                .field("groups", &registry.groups.len());
        }
        hub.finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Registry {
    connections: HashMap<ConnectionId, Attached>,
    /// Members of each group. A group without members is removed.
    groups: HashMap<GroupName, Members>,
}

/// A group's members in id order (listings come out in it), shared with
/// the fan-outs and listings that read it outside the registry's lock.
type Members = Arc<Vec<(ConnectionId, Arc<Member>)>>;

/// Where member `id` is in `members`, or would be.
fn position(members: &[(ConnectionId, Arc<Member>)], id: ConnectionId) -> Result<usize, usize> {
    members.binary_search_by_key(&id, |(member, _)| *member)
}

/// An attached connection and the groups it is in.
struct Attached {
    member: Arc<Member>,
    groups: BTreeSet<GroupName>,
}

/// What a group holds of a connection.
struct Member {
    outlet: Box<dyn Outlet>,
    policy: SlowMember,
    attachment: Mutex<Bytes>,
    /// Messages not queued for this member because its queue was full.
    dropped: AtomicU64,
    /// The groups this member joined from a position through
    /// [`LocalHub::join_held`], and where each stands: see [`Seam`].
    seams: Mutex<HashMap<GroupName, Seam>>,
    /// Whether it ever joined from a position that way: a fan-out to the
    /// others does not take [`Member::seams`]' lock.
    seamed: AtomicBool,
}

/// Where a member that joined a group from a position stands, when the
/// history is read from elsewhere (a cluster's broker) and the group's
/// live messages may arrive before or after the read, in any order.
#[derive(Debug)]
enum Seam {
    /// Its history is being read: live messages wait here.
    Holding(Vec<(Position, Message)>),
    /// It was sent the history up to this position: a live message at or
    /// before it (of its epoch) is not sent again.
    After(Position),
}

/// The most live messages a member waits with while its history is read;
/// beyond, they are dropped for it (counted as for a full queue).
const MAX_HELD: usize = 10_000;

impl Member {
    /// Offer `message`; a full queue is handled by the member's policy.
    fn offer(&self, message: &Message, fanout: &mut Fanout) {
        match self.outlet.try_send(message.clone()) {
            Delivery::Queued => fanout.delivered += 1,
            // Leaving: not a member any more, nothing to count.
            Delivery::Closed => {}
            // Its client would not take it; it is not slow.
            Delivery::TooLarge => fanout.too_large += 1,
            Delivery::Full => {
                fanout.dropped += 1;
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if self.policy == SlowMember::Close && self.outlet.close(Close::SLOW_MEMBER) {
                    fanout.closed += 1;
                    tracing::info!(
                        member = self.outlet.id(),
                        "closing a slow member (1008): its outbound queue is full"
                    );
                }
            }
        }
    }

    fn is_open(&self) -> bool {
        !self.outlet.is_closed()
    }

    /// Offer `message`, kept at `position` in `group`'s history, unless the
    /// member waits for its history or was sent it already.
    fn offer_kept(
        &self,
        group: &GroupName,
        position: Position,
        message: &Message,
        fanout: &mut Fanout,
    ) {
        // Set before the member joined the group (under the registry's
        // lock, which the fan-out's snapshot was taken under).
        if !self.seamed.load(Ordering::Relaxed) {
            return self.offer(message, fanout);
        }
        let mut seams = self.seams.lock().expect("not poisoned");
        match seams.get_mut(group) {
            Some(Seam::Holding(held)) if held.len() < MAX_HELD => {
                held.push((position, message.clone()));
                fanout.delivered += 1;
            }
            Some(Seam::Holding(_)) => {
                fanout.dropped += 1;
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Some(Seam::After(sent))
                if sent.epoch == position.epoch && position.offset <= sent.offset => {}
            _ => self.offer(message, fanout),
        }
    }
}

impl LocalHub {
    /// A hub whose groups keep no history.
    #[cfg(test)]
    pub(crate) fn new(limits: HubLimits) -> Self {
        Self::keeping(limits, Histories::default())
    }

    /// A hub whose groups keep history as `histories` says.
    pub(crate) fn keeping(limits: HubLimits, histories: Histories) -> Self {
        Self {
            limits,
            registry: RwLock::default(),
            histories,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().expect("not poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().expect("not poisoned")
    }

    fn check_size(&self, message: &Message) -> HubResult<()> {
        if message.len() > self.limits.max_message_size.get() {
            return Err(HubError::TooLarge);
        }
        Ok(())
    }

    fn join_now(&self, id: ConnectionId, group: GroupName) -> HubResult<()> {
        let mut registry = self.write();
        if self.admit(&registry, id, &group)? {
            insert(&mut registry, id, group);
        }
        Ok(())
    }

    /// Whether connection `id` may join `group` now: `false` if it is in
    /// it already.
    fn admit(&self, registry: &Registry, id: ConnectionId, group: &GroupName) -> HubResult<bool> {
        let attached = registry.connections.get(&id).ok_or(HubError::NotFound)?;
        if !attached.member.is_open() {
            return Err(HubError::Closed);
        }
        if attached.groups.contains(group) {
            return Ok(false);
        }
        if attached.groups.len() >= self.limits.max_groups_per_connection {
            return Err(HubError::TooManyGroups);
        }
        let members = registry
            .groups
            .get(group)
            .map_or(0, |members| members.len());
        if members >= self.limits.max_group_members {
            return Err(HubError::GroupFull);
        }
        Ok(true)
    }

    /// Join `group` from `since` (see [`Transport::join_from`]). The
    /// group's history stays locked from reading what the connection
    /// missed until it is a member, so a message published meanwhile is
    /// either in what it is sent first or live, never both nor neither.
    fn join_from_now(
        &self,
        id: ConnectionId,
        group: GroupName,
        since: Position,
    ) -> Result<bool, HistoryError> {
        let history = self.histories.of(&group).ok_or(HistoryError::NotKept)?;
        let mut history = history::lock(&history);
        let mut registry = self.write();
        if !self.admit(&registry, id, &group)? {
            // A member already gets every message live.
            return Ok(true);
        }
        let page = history.read(Some(since), usize::MAX);
        let member = Arc::clone(&registry.connections[&id].member);
        for kept in &page.entries {
            match member.outlet.try_send(kept.message.clone()) {
                Delivery::Queued => {}
                // As live: a member's own trigger may carry less.
                Delivery::TooLarge => {}
                Delivery::Closed => return Err(HubError::Closed.into()),
                Delivery::Full => return Err(HistoryError::QueueFull),
            }
        }
        insert(&mut registry, id, group);
        Ok(page.complete)
    }

    /// `publish` on this host, at once.
    pub(crate) fn publish_now(
        &self,
        group: &GroupName,
        message: Message,
        except: Option<ConnectionId>,
    ) -> HubResult<Fanout> {
        self.check_size(&message)?;
        let Some(history) = self.histories.of(group) else {
            return Ok(self.fan_out(group, &message, except));
        };
        // Kept and offered under the group's history lock: members get
        // the group's messages in position order.
        let mut history = history::lock(&history);
        let (position, message) = history.keep(message);
        let mut fanout = self.fan_out(group, &message, except);
        fanout.position = Some(position);
        Ok(fanout)
    }

    /// Offer `message`, kept elsewhere at `position` in `group`'s history,
    /// to the members of `group` but `except`: a member that joined from
    /// a position gets it once, after its history ([`LocalHub::release`]).
    pub(crate) fn publish_kept(
        &self,
        group: &GroupName,
        message: &Message,
        position: Position,
        except: Option<ConnectionId>,
    ) -> Fanout {
        let mut fanout = Fanout {
            position: Some(position),
            ..Fanout::default()
        };
        if let Some(members) = self.snapshot(group) {
            for (id, member) in members.iter() {
                if Some(*id) != except {
                    member.offer_kept(group, position, message, &mut fanout);
                }
            }
        }
        fanout
    }

    /// Make connection `id` a member of `group` whose live messages wait
    /// until its history, read elsewhere, is sent ([`LocalHub::release`]).
    /// `false` if it is a member already (it gets every message live).
    pub(crate) fn join_held(&self, id: ConnectionId, group: &GroupName) -> HubResult<bool> {
        let mut registry = self.write();
        if !self.admit(&registry, id, group)? {
            return Ok(false);
        }
        let member = &registry.connections[&id].member;
        member.seamed.store(true, Ordering::Relaxed);
        member
            .seams
            .lock()
            .expect("not poisoned")
            .insert(group.clone(), Seam::Holding(Vec::new()));
        insert(&mut registry, id, group.clone());
        Ok(true)
    }

    /// Send member `id` of `group` its history `entries` (read up to
    /// `head`), then the live messages that waited and were not in it;
    /// from now on a live message at or before `head` is not sent again.
    /// If its queue cannot take them, it leaves the group.
    pub(crate) fn release(
        &self,
        id: ConnectionId,
        group: &GroupName,
        entries: &[Kept],
        head: Position,
    ) -> Result<(), HistoryError> {
        let member = self.member(id)?;
        let sent = {
            let mut seams = member.seams.lock().expect("not poisoned");
            let held = match seams.insert(group.clone(), Seam::After(head)) {
                Some(Seam::Holding(held)) => held,
                _ => Vec::new(),
            };
            let newer = held.into_iter().filter(|(position, _)| {
                position.epoch != head.epoch || position.offset > head.offset
            });
            let history = entries
                .iter()
                .map(|kept| (kept.position, kept.message.clone()));
            history.chain(newer).try_for_each(|(_, message)| {
                match member.outlet.try_send(message) {
                    // As live: a member's own trigger may carry less.
                    Delivery::Queued | Delivery::TooLarge => Ok(()),
                    Delivery::Closed => Err(HistoryError::Hub(HubError::Closed)),
                    Delivery::Full => Err(HistoryError::QueueFull),
                }
            })
        };
        if sent.is_err() {
            let _ = self.leave_now(id, group);
        }
        sent
    }

    /// The members of `group` but `except` offered `message`.
    fn fan_out(
        &self,
        group: &GroupName,
        message: &Message,
        except: Option<ConnectionId>,
    ) -> Fanout {
        let mut fanout = Fanout::default();
        if let Some(members) = self.snapshot(group) {
            for (id, member) in members.iter() {
                if Some(*id) != except {
                    member.offer(message, &mut fanout);
                }
            }
        }
        fanout
    }

    fn leave_now(&self, id: ConnectionId, group: &GroupName) -> HubResult<()> {
        let mut registry = self.write();
        let attached = registry
            .connections
            .get_mut(&id)
            .ok_or(HubError::NotFound)?;
        if attached.groups.remove(group) {
            attached
                .member
                .seams
                .lock()
                .expect("not poisoned")
                .remove(group);
            remove_member(&mut registry.groups, group, id);
        }
        Ok(())
    }

    fn send_to_now(&self, id: ConnectionId, message: Message) -> HubResult<Fanout> {
        self.check_size(&message)?;
        let member = self.member(id)?;
        if !member.is_open() {
            return Err(HubError::NotFound);
        }
        let mut fanout = Fanout::default();
        member.offer(&message, &mut fanout);
        if fanout.too_large > 0 {
            return Err(HubError::TooLarge);
        }
        Ok(fanout)
    }

    /// Close connection `id` of this host; `NotFound` if it is not open.
    pub(crate) fn close_now(&self, id: ConnectionId, close: Close) -> HubResult<()> {
        let member = self.member(id)?;
        if !member.is_open() {
            return Err(HubError::NotFound);
        }
        member.outlet.close(close);
        Ok(())
    }

    /// The members of `group` now, read outside the lock.
    fn snapshot(&self, group: &GroupName) -> Option<Members> {
        self.read().groups.get(group).map(Arc::clone)
    }

    fn member_count_now(&self, group: &GroupName) -> u32 {
        let open = self.snapshot(group).map_or(0, |members| {
            members.iter().filter(|(_, m)| m.is_open()).count()
        });
        u32::try_from(open).unwrap_or(u32::MAX)
    }

    fn members_now(&self, group: &GroupName, limit: usize) -> HubResult<Vec<MemberInfo>> {
        let Some(members) = self.snapshot(group) else {
            return Ok(Vec::new());
        };
        let mut listed = Vec::new();
        for (id, member) in members.iter() {
            if !member.is_open() {
                continue;
            }
            if listed.len() == limit {
                return Err(HubError::TooManyToList);
            }
            listed.push(MemberInfo {
                id: *id,
                attachment: member.attachment.lock().expect("not poisoned").clone(),
            });
        }
        Ok(listed)
    }

    fn member(&self, id: ConnectionId) -> HubResult<Arc<Member>> {
        self.read()
            .connections
            .get(&id)
            .map(|attached| Arc::clone(&attached.member))
            .ok_or(HubError::NotFound)
    }
}

/// Put `id`, admitted, into `group`.
fn insert(registry: &mut Registry, id: ConnectionId, group: GroupName) {
    let Registry {
        connections,
        groups,
    } = registry;
    let attached = connections.get_mut(&id).expect("admitted");
    let members = groups.entry(group.clone()).or_default();
    if let Err(at) = position(members, id) {
        Arc::make_mut(members).insert(at, (id, Arc::clone(&attached.member)));
    }
    attached.groups.insert(group);
}

/// Take `id` out of `group`, and the group out of the map once empty.
fn remove_member(groups: &mut HashMap<GroupName, Members>, group: &GroupName, id: ConnectionId) {
    if let Some(members) = groups.get_mut(group) {
        if let Ok(at) = position(members, id) {
            Arc::make_mut(members).remove(at);
        }
        if members.is_empty() {
            groups.remove(group);
        }
    }
}

impl Transport for LocalHub {
    fn attach(&self, outlet: Box<dyn Outlet>, policy: SlowMember) -> Result<(), DuplicateId> {
        let id = outlet.id();
        let member = Arc::new(Member {
            outlet,
            policy,
            attachment: Mutex::default(),
            dropped: AtomicU64::new(0),
            seams: Mutex::default(),
            seamed: AtomicBool::new(false),
        });
        let attached = Attached {
            member,
            groups: BTreeSet::new(),
        };
        match self.write().connections.entry(id) {
            Entry::Occupied(_) => Err(DuplicateId(id)),
            Entry::Vacant(vacant) => {
                vacant.insert(attached);
                Ok(())
            }
        }
    }

    fn detach(&self, id: ConnectionId) -> u64 {
        let mut registry = self.write();
        let Some(attached) = registry.connections.remove(&id) else {
            return 0;
        };
        for group in &attached.groups {
            remove_member(&mut registry.groups, group, id);
        }
        attached.member.dropped.load(Ordering::Relaxed)
    }

    fn join(&self, id: ConnectionId, group: GroupName) -> Pending<'_, ()> {
        Box::pin(ready(self.join_now(id, group)))
    }

    fn leave(&self, id: ConnectionId, group: &GroupName) -> Pending<'_, ()> {
        Box::pin(ready(self.leave_now(id, group)))
    }

    fn joined(&self, id: ConnectionId) -> Vec<GroupName> {
        self.read()
            .connections
            .get(&id)
            .map(|attached| attached.groups.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn set_attachment(&self, id: ConnectionId, attachment: Bytes) -> HubResult<()> {
        if attachment.len() > self.limits.max_attachment_size {
            return Err(HubError::TooLarge);
        }
        let member = self.member(id)?;
        *member.attachment.lock().expect("not poisoned") = attachment;
        Ok(())
    }

    fn attachment(&self, id: ConnectionId) -> HubResult<Bytes> {
        let member = self.member(id)?;
        let attachment = member.attachment.lock().expect("not poisoned").clone();
        Ok(attachment)
    }

    fn publish(
        &self,
        group: &GroupName,
        message: Message,
        except: Option<ConnectionId>,
    ) -> Pending<'_, Fanout> {
        Box::pin(ready(self.publish_now(group, message, except)))
    }

    fn send_to(&self, id: ConnectionId, message: Message) -> Pending<'_, Fanout> {
        Box::pin(ready(self.send_to_now(id, message)))
    }

    fn close(&self, id: ConnectionId, close: Close) -> Pending<'_, ()> {
        Box::pin(ready(self.close_now(id, close)))
    }

    fn member_count(&self, group: &GroupName) -> Pending<'_, u32> {
        Box::pin(ready(Ok(self.member_count_now(group))))
    }

    fn members(&self, group: &GroupName, limit: usize) -> Pending<'_, Vec<MemberInfo>> {
        Box::pin(ready(self.members_now(group, limit)))
    }

    fn counts(&self) -> super::TransportCounts {
        super::TransportCounts {
            history_bytes: self.histories.bytes() as u64,
            history_groups: self.histories.groups() as u64,
            ..super::TransportCounts::default()
        }
    }

    fn keeps(&self, group: &GroupName) -> bool {
        self.histories.names(group)
    }

    fn read_history(
        &self,
        group: &GroupName,
        since: Option<Position>,
        limit: usize,
    ) -> PendingHistory<'_, Page> {
        let page = self
            .histories
            .of(group)
            .map(|history| history::lock(&history).read(since, limit))
            .ok_or(HistoryError::NotKept);
        Box::pin(ready(page))
    }

    fn join_from(
        &self,
        id: ConnectionId,
        group: GroupName,
        since: Position,
    ) -> PendingHistory<'_, bool> {
        Box::pin(ready(self.join_from_now(id, group, since)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::hub::LargestMessage;

    /// An outlet with a queue of `capacity` messages that nobody drains.
    #[derive(Debug)]
    struct FakeOutlet {
        id: ConnectionId,
        capacity: usize,
        queued: Arc<Mutex<Vec<Message>>>,
        closed: Arc<AtomicBool>,
        /// The connection's `max_message_size`, if the test sets one.
        limit: Arc<Mutex<Option<usize>>>,
    }

    impl Outlet for FakeOutlet {
        fn id(&self) -> ConnectionId {
            self.id
        }

        fn try_send(&self, message: Message) -> Delivery {
            if self.is_closed() {
                return Delivery::Closed;
            }
            if self
                .limit
                .lock()
                .unwrap()
                .is_some_and(|max| message.len() > max)
            {
                return Delivery::TooLarge;
            }
            let mut queued = self.queued.lock().unwrap();
            if queued.len() == self.capacity {
                return Delivery::Full;
            }
            queued.push(message);
            Delivery::Queued
        }

        fn is_closed(&self) -> bool {
            self.closed.load(Ordering::Acquire)
        }

        fn close(&self, _close: Close) -> bool {
            !self.closed.swap(true, Ordering::AcqRel)
        }
    }

    /// What a test sees of a fake connection.
    struct Probe {
        queued: Arc<Mutex<Vec<Message>>>,
        closed: Arc<AtomicBool>,
        limit: Arc<Mutex<Option<usize>>>,
    }

    impl Probe {
        fn texts(&self) -> Vec<String> {
            let queued = self.queued.lock().unwrap();
            queued
                .iter()
                .map(|m| m.to_text().unwrap().to_owned())
                .collect()
        }
    }

    fn limits() -> HubLimits {
        HubLimits {
            max_groups_per_connection: 2,
            max_group_members: 3,
            max_attachment_size: 8,
            max_message_size: LargestMessage::new(64),
        }
    }

    fn attach(hub: &LocalHub, id: ConnectionId, capacity: usize, policy: SlowMember) -> Probe {
        let queued = Arc::default();
        let closed = Arc::default();
        let limit = Arc::default();
        let outlet = FakeOutlet {
            id,
            capacity,
            queued: Arc::clone(&queued),
            closed: Arc::clone(&closed),
            limit: Arc::clone(&limit),
        };
        hub.attach(Box::new(outlet), policy).unwrap();
        Probe {
            queued,
            closed,
            limit,
        }
    }

    fn group(name: &str) -> GroupName {
        GroupName::parse(name).unwrap()
    }

    fn join(hub: &LocalHub, id: ConnectionId, name: &str) -> HubResult<()> {
        hub.join_now(id, group(name))
    }

    #[test]
    fn publish_reaches_every_member_but_the_excepted_one_in_order() {
        let hub = LocalHub::new(limits());
        let probes: Vec<Probe> = (1..=3)
            .map(|id| attach(&hub, id, 10, SlowMember::Close))
            .collect();
        for id in 1..=3 {
            join(&hub, id, "room").unwrap();
        }
        for n in 0..3 {
            let fanout = hub
                .publish_now(&group("room"), Message::text(format!("m{n}")), Some(1))
                .unwrap();
            assert_eq!(fanout.delivered, 2);
        }
        assert!(probes[0].texts().is_empty());
        assert_eq!(probes[1].texts(), ["m0", "m1", "m2"]);
        assert_eq!(probes[2].texts(), ["m0", "m1", "m2"]);
    }

    #[test]
    fn every_member_shares_the_one_payload() {
        let hub = LocalHub::new(limits());
        let probes: Vec<Probe> = (1..=3)
            .map(|id| attach(&hub, id, 10, SlowMember::Close))
            .collect();
        for id in 1..=3 {
            join(&hub, id, "room").unwrap();
        }
        let message = Message::binary(vec![7u8; 64]);
        let Message::Binary(original) = &message else {
            unreachable!()
        };
        let original = original.as_ptr();
        hub.publish_now(&group("room"), message, None).unwrap();
        for probe in &probes {
            match &probe.queued.lock().unwrap()[0] {
                Message::Binary(bytes) => assert_eq!(bytes.as_ptr(), original),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_full_queue_drops_or_closes_by_policy_and_others_still_receive() {
        let hub = LocalHub::new(HubLimits {
            max_group_members: 10,
            ..limits()
        });
        let fast = attach(&hub, 1, 100, SlowMember::Close);
        let dropping = attach(&hub, 2, 2, SlowMember::Drop);
        let closing = attach(&hub, 3, 2, SlowMember::Close);
        for id in 1..=3 {
            join(&hub, id, "room").unwrap();
        }
        let mut total = Fanout::default();
        for n in 0..5 {
            let fanout = hub
                .publish_now(&group("room"), Message::text(format!("m{n}")), None)
                .unwrap();
            total.delivered += fanout.delivered;
            total.dropped += fanout.dropped;
            total.closed += fanout.closed;
        }
        assert_eq!(fast.texts(), ["m0", "m1", "m2", "m3", "m4"]);
        // The dropping member keeps what fit and stays open.
        assert_eq!(dropping.texts(), ["m0", "m1"]);
        assert!(!dropping.closed.load(Ordering::Acquire));
        // The closing member is closed once, then skipped.
        assert_eq!(closing.texts(), ["m0", "m1"]);
        assert!(closing.closed.load(Ordering::Acquire));
        assert_eq!(
            total,
            Fanout {
                delivered: 5 + 2 + 2,
                dropped: 3 + 1,
                closed: 1,
                ..Fanout::default()
            }
        );
        assert_eq!(hub.detach(2), 3, "drops are counted per member");
    }

    #[test]
    fn publish_to_ten_thousand_full_members_returns_without_waiting() {
        let hub = LocalHub::new(HubLimits {
            max_group_members: 10_000,
            ..limits()
        });
        let probes: Vec<Probe> = (0..10_000)
            .map(|id| {
                let probe = attach(&hub, id, 1, SlowMember::Drop);
                join(&hub, id, "all").unwrap();
                probe
            })
            .collect();
        let first = hub
            .publish_now(&group("all"), Message::text("first"), None)
            .unwrap();
        assert_eq!(first.delivered, 10_000);
        // Every queue is full now: nothing to wait for, each is a drop.
        let second = hub
            .publish_now(&group("all"), Message::text("second"), None)
            .unwrap();
        assert_eq!((second.delivered, second.dropped), (0, 10_000));
        assert!(probes.iter().all(|probe| probe.texts() == ["first"]));
    }

    #[test]
    fn caps_and_errors_are_values() {
        let hub = LocalHub::new(limits());
        for id in 1..=4 {
            attach(&hub, id, 10, SlowMember::Close);
        }
        join(&hub, 1, "a").unwrap();
        join(&hub, 1, "a").unwrap();
        join(&hub, 1, "b").unwrap();
        assert_eq!(join(&hub, 1, "c"), Err(HubError::TooManyGroups));
        join(&hub, 2, "a").unwrap();
        join(&hub, 3, "a").unwrap();
        assert_eq!(join(&hub, 4, "a"), Err(HubError::GroupFull));
        assert_eq!(join(&hub, 99, "a"), Err(HubError::NotFound));
        assert_eq!(
            hub.publish_now(&group("a"), Message::text("x".repeat(65)), None),
            Err(HubError::TooLarge)
        );
        assert_eq!(
            hub.set_attachment(1, Bytes::from_static(b"123456789")),
            Err(HubError::TooLarge)
        );
        assert_eq!(
            hub.send_to_now(99, Message::text("hi")),
            Err(HubError::NotFound)
        );
        assert_eq!(
            hub.members_now(&group("a"), 2),
            Err(HubError::TooManyToList)
        );
        // A publish to a group nobody joined reaches nobody.
        assert_eq!(
            hub.publish_now(&group("empty"), Message::text("hi"), None),
            Ok(Fanout::default())
        );
    }

    #[test]
    fn detach_ends_every_membership_and_the_id() {
        let hub = LocalHub::new(limits());
        attach(&hub, 1, 10, SlowMember::Close);
        attach(&hub, 2, 10, SlowMember::Close);
        hub.set_attachment(1, Bytes::from_static(b"ann")).unwrap();
        join(&hub, 1, "a").unwrap();
        join(&hub, 1, "b").unwrap();
        join(&hub, 2, "a").unwrap();
        assert_eq!(
            hub.members_now(&group("a"), 10).unwrap(),
            [
                MemberInfo {
                    id: 1,
                    attachment: Bytes::from_static(b"ann")
                },
                MemberInfo {
                    id: 2,
                    attachment: Bytes::new()
                },
            ]
        );
        hub.detach(1);
        assert_eq!(hub.member_count_now(&group("a")), 1);
        assert_eq!(hub.member_count_now(&group("b")), 0);
        assert!(!hub.read().groups.contains_key(&group("b")));
        assert_eq!(
            hub.send_to_now(1, Message::text("hi")),
            Err(HubError::NotFound)
        );
        assert!(hub.joined(1).is_empty());
    }

    #[test]
    fn a_closing_member_is_no_longer_counted_or_addressed() {
        let hub = LocalHub::new(limits());
        let probe = attach(&hub, 1, 10, SlowMember::Close);
        join(&hub, 1, "a").unwrap();
        probe.closed.store(true, Ordering::Release);
        assert_eq!(hub.member_count_now(&group("a")), 0);
        assert_eq!(hub.members_now(&group("a"), 10), Ok(Vec::new()));
        assert_eq!(
            hub.send_to_now(1, Message::text("hi")),
            Err(HubError::NotFound)
        );
        assert_eq!(join(&hub, 1, "b"), Err(HubError::Closed));
    }

    /// An outlet whose first offer waits until the test lets it go: a
    /// fan-out caught in the middle.
    struct GateOutlet {
        id: ConnectionId,
        entered: Mutex<Option<mpsc::Sender<()>>>,
        release: Mutex<mpsc::Receiver<()>>,
    }

    impl Outlet for GateOutlet {
        fn id(&self) -> ConnectionId {
            self.id
        }

        fn try_send(&self, _message: Message) -> Delivery {
            if let Some(entered) = self.entered.lock().unwrap().take() {
                entered.send(()).unwrap();
                let _ = self.release.lock().unwrap().recv();
            }
            Delivery::Queued
        }

        fn is_closed(&self) -> bool {
            false
        }

        fn close(&self, _close: Close) -> bool {
            false
        }
    }

    #[test]
    fn a_fan_out_in_progress_holds_up_no_attach_join_leave_or_detach() {
        let hub = Arc::new(LocalHub::new(HubLimits {
            max_group_members: 100,
            ..limits()
        }));
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let gate = GateOutlet {
            id: 1,
            entered: Mutex::new(Some(entered_tx)),
            release: Mutex::new(release_rx),
        };
        hub.attach(Box::new(gate), SlowMember::Close).unwrap();
        join(&hub, 1, "room").unwrap();
        let others: Vec<Probe> = (2..=3)
            .map(|id| attach(&hub, id, 10, SlowMember::Close))
            .collect();
        join(&hub, 2, "room").unwrap();
        join(&hub, 3, "room").unwrap();
        let publisher = {
            let hub = Arc::clone(&hub);
            std::thread::spawn(move || hub.publish_now(&group("room"), Message::text("hi"), None))
        };
        // The fan-out is at its first member, and waits there.
        entered.recv().unwrap();
        let (done_tx, done) = mpsc::channel();
        let changes = {
            let hub = Arc::clone(&hub);
            std::thread::spawn(move || {
                let late = attach(&hub, 50, 10, SlowMember::Close);
                join(&hub, 50, "room").unwrap();
                hub.leave_now(3, &group("room")).unwrap();
                hub.detach(2);
                done_tx.send(()).unwrap();
                late
            })
        };
        // Only a hub that waits for the fan-out takes this long; the
        // changes themselves take microseconds.
        let went_on = done.recv_timeout(Duration::from_secs(20)).is_ok();
        release.send(()).unwrap();
        let fanout = publisher.join().unwrap().unwrap();
        let late = changes.join().unwrap();
        assert!(
            went_on,
            "attach, join, leave and detach waited for a fan-out"
        );
        // The fan-out went on with the members it started with.
        assert_eq!(fanout.delivered, 3);
        assert_eq!(others[0].texts(), ["hi"]);
        assert_eq!(others[1].texts(), ["hi"]);
        assert!(late.texts().is_empty());
        assert_eq!(hub.member_count_now(&group("room")), 2);
    }

    #[test]
    fn a_second_connection_under_a_live_id_is_refused_and_the_first_keeps_it() {
        let hub = LocalHub::new(limits());
        let first = attach(&hub, 7, 10, SlowMember::Close);
        join(&hub, 7, "a").unwrap();
        let second = FakeOutlet {
            id: 7,
            capacity: 10,
            queued: Arc::default(),
            closed: Arc::default(),
            limit: Arc::default(),
        };
        assert_eq!(
            hub.attach(Box::new(second), SlowMember::Close),
            Err(DuplicateId(7))
        );
        hub.send_to_now(7, Message::text("still you")).unwrap();
        assert_eq!(first.texts(), ["still you"]);
        assert_eq!(hub.joined(7), [group("a")]);
    }

    #[test]
    fn a_message_too_large_for_a_member_is_refused_for_it_alone() {
        let hub = LocalHub::new(limits());
        let small = attach(&hub, 1, 10, SlowMember::Close);
        let large = attach(&hub, 2, 10, SlowMember::Close);
        // The first member's trigger takes at most 4 bytes.
        *small.limit.lock().unwrap() = Some(4);
        join(&hub, 1, "a").unwrap();
        join(&hub, 2, "a").unwrap();
        let fanout = hub
            .publish_now(&group("a"), Message::text("hello"), None)
            .unwrap();
        assert_eq!((fanout.delivered, fanout.too_large), (1, 1));
        assert_eq!(
            hub.send_to_now(1, Message::text("hello")),
            Err(HubError::TooLarge)
        );
        hub.publish_now(&group("a"), Message::text("hi"), None)
            .unwrap();
        assert_eq!(small.texts(), ["hi"]);
        assert!(!small.closed.load(Ordering::Acquire));
        assert_eq!(large.texts(), ["hello", "hi"]);
        // The app's largest is checked before any member.
        hub.limits.max_message_size.set(4);
        assert_eq!(
            hub.publish_now(&group("a"), Message::text("hello"), None),
            Err(HubError::TooLarge)
        );
    }

    #[test]
    fn a_member_joined_from_a_position_gets_each_message_once_after_its_history() {
        let hub = LocalHub::new(limits());
        let other = attach(&hub, 1, 100, SlowMember::Close);
        let joiner = attach(&hub, 2, 100, SlowMember::Close);
        join(&hub, 1, "room").unwrap();
        let at = |offset| Position { epoch: 9, offset };
        let kept = |offset: u64| Kept {
            position: at(offset),
            message: Message::text(format!("m{offset}")),
        };
        let live = |offset: u64| {
            hub.publish_kept(
                &group("room"),
                &Message::text(format!("m{offset}")),
                at(offset),
                None,
            )
        };
        assert!(hub.join_held(2, &group("room")).unwrap());
        assert!(!hub.join_held(2, &group("room")).unwrap());
        // While its history (m1..m3) is read elsewhere, m3 and m4 arrive
        // live: they wait; the other member gets them at once.
        live(3);
        live(4);
        assert!(joiner.texts().is_empty());
        assert_eq!(other.texts(), ["m3", "m4"]);
        hub.release(2, &group("room"), &[kept(1), kept(2), kept(3)], at(3))
            .unwrap();
        assert_eq!(joiner.texts(), ["m1", "m2", "m3", "m4"]);
        // A late copy of a message it was sent is not sent again.
        live(2);
        live(5);
        assert_eq!(joiner.texts(), ["m1", "m2", "m3", "m4", "m5"]);
        // After leaving and joining again, messages are live as usual.
        hub.leave_now(2, &group("room")).unwrap();
        join(&hub, 2, "room").unwrap();
        live(1);
        assert_eq!(joiner.texts().last().unwrap(), "m1");
    }

    #[test]
    fn a_member_whose_queue_cannot_take_its_history_leaves_the_group() {
        let hub = LocalHub::new(limits());
        let _joiner = attach(&hub, 2, 1, SlowMember::Close);
        let at = |offset| Position { epoch: 9, offset };
        let kept: Vec<Kept> = (1..=2)
            .map(|offset| Kept {
                position: at(offset),
                message: Message::text("m"),
            })
            .collect();
        assert!(hub.join_held(2, &group("room")).unwrap());
        assert_eq!(
            hub.release(2, &group("room"), &kept, at(2)),
            Err(HistoryError::QueueFull)
        );
        assert!(hub.joined(2).is_empty());
    }

    /// Takes every message and keeps none: a member that reads at once.
    struct Counting(ConnectionId, AtomicU64);

    impl Outlet for Counting {
        fn id(&self) -> ConnectionId {
            self.0
        }

        fn try_send(&self, _message: Message) -> Delivery {
            self.1.fetch_add(1, Ordering::Relaxed);
            Delivery::Queued
        }

        fn is_closed(&self) -> bool {
            false
        }

        fn close(&self, _close: Close) -> bool {
            false
        }
    }

    /// The 50th, 99th percentile and the largest of `samples`.
    fn spread(mut samples: Vec<Duration>) -> String {
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
        format!(
            "p50 {:?}, p99 {:?}, max {:?} ({} samples)",
            at(0.5),
            at(0.99),
            samples[samples.len() - 1],
            samples.len()
        )
    }

    /// Not a test but a measurement; run it with
    /// `cargo test --release -p wsflow --lib fan_out_beside -- --ignored --nocapture`.
    /// On two worker threads: one tenant publishes to a group of 10,000
    /// members in a loop; beside it, connections of the same app attach,
    /// join and detach, and an unrelated task wakes every millisecond.
    /// Prints how long an attach-join-detach takes and how late the
    /// unrelated task wakes.
    #[ignore = "a measurement that prints figures"]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fan_out_beside_attach_detach_and_an_unrelated_task() {
        const MEMBERS: u64 = 10_000;
        const RUN: Duration = Duration::from_secs(5);
        let hub = Arc::new(LocalHub::new(HubLimits {
            max_group_members: MEMBERS as usize + 10,
            ..limits()
        }));
        for id in 0..MEMBERS {
            let _ = hub.attach(Box::new(Counting(id, AtomicU64::new(0))), SlowMember::Drop);
            join(&hub, id, "all").unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = tokio::spawn({
            let (hub, stop) = (Arc::clone(&hub), Arc::clone(&stop));
            async move {
                let mut published = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    hub.publish_now(&group("all"), Message::text("tick"), None)
                        .unwrap();
                    published += 1;
                    tokio::task::yield_now().await;
                }
                published
            }
        });
        let churn = tokio::spawn({
            let (hub, stop) = (Arc::clone(&hub), Arc::clone(&stop));
            async move {
                let mut took = Vec::new();
                let mut id = MEMBERS;
                while !stop.load(Ordering::Relaxed) {
                    let started = std::time::Instant::now();
                    let _ = hub.attach(Box::new(Counting(id, AtomicU64::new(0))), SlowMember::Drop);
                    join(&hub, id, "all").unwrap();
                    hub.detach(id);
                    took.push(started.elapsed());
                    id += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                took
            }
        });
        let unrelated = tokio::spawn({
            let stop = Arc::clone(&stop);
            async move {
                let mut late = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = std::time::Instant::now();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    late.push(started.elapsed().saturating_sub(Duration::from_millis(1)));
                }
                late
            }
        });
        tokio::time::sleep(RUN).await;
        stop.store(true, Ordering::Relaxed);
        let published = publisher.await.unwrap();
        let churned = churn.await.unwrap();
        let late = unrelated.await.unwrap();
        println!(
            "{published} publishes to {MEMBERS} members in {RUN:?} ({:.1} ms each)",
            RUN.as_secs_f64() * 1000.0 / published as f64
        );
        println!("attach + join + detach: {}", spread(churned));
        println!("an unrelated 1 ms sleep wakes late by: {}", spread(late));
    }
}
