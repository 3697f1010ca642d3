//! The hub of one app on one host: its connections by id, each with its
//! outlet, slow-member policy, groups and attachment, and its groups by
//! name.
//!
//! A publish holds the registry's read lock while it offers the message to
//! each member (`try_send`, never a wait), so publishes run side by side
//! and a join or leave waits at most for one fan-out. Every member gets a
//! clone of the one message: the payload is shared by reference count.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::ready;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio_tungstenite::tungstenite::{Bytes, Message};

use super::{
    ConnectionId, Delivery, Fanout, GroupName, HubError, HubLimits, HubResult, MemberInfo, Outlet,
    Pending, Transport,
};
use crate::manifest::spec::SlowMember;

/// The local hub of one app.
pub(crate) struct LocalHub {
    limits: HubLimits,
    registry: RwLock<Registry>,
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
    /// Members of each group by id (listings come out in id order). A
    /// group without members is removed.
    groups: HashMap<GroupName, BTreeMap<ConnectionId, Arc<Member>>>,
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
}

impl Member {
    /// Offer `message`; a full queue is handled by the member's policy.
    fn offer(&self, message: &Message, fanout: &mut Fanout) {
        match self.outlet.try_send(message.clone()) {
            Delivery::Queued => fanout.delivered += 1,
            // Leaving: not a member any more, nothing to count.
            Delivery::Closed => {}
            Delivery::Full => {
                fanout.dropped += 1;
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if self.policy == SlowMember::Close && self.outlet.close_slow() {
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
}

impl LocalHub {
    pub(crate) fn new(limits: HubLimits) -> Self {
        Self {
            limits,
            registry: RwLock::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().expect("not poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().expect("not poisoned")
    }

    fn check_size(&self, message: &Message) -> HubResult<()> {
        if message.len() > self.limits.max_message_size {
            return Err(HubError::TooLarge);
        }
        Ok(())
    }

    fn join_now(&self, id: ConnectionId, group: GroupName) -> HubResult<()> {
        let mut registry = self.write();
        let Registry {
            connections,
            groups,
        } = &mut *registry;
        let attached = connections.get_mut(&id).ok_or(HubError::NotFound)?;
        if !attached.member.is_open() {
            return Err(HubError::Closed);
        }
        if attached.groups.contains(&group) {
            return Ok(());
        }
        if attached.groups.len() >= self.limits.max_groups_per_connection {
            return Err(HubError::TooManyGroups);
        }
        let members = groups.entry(group.clone()).or_default();
        if members.len() >= self.limits.max_group_members {
            if members.is_empty() {
                groups.remove(&group);
            }
            return Err(HubError::GroupFull);
        }
        members.insert(id, Arc::clone(&attached.member));
        attached.groups.insert(group);
        Ok(())
    }

    fn leave_now(&self, id: ConnectionId, group: &GroupName) -> HubResult<()> {
        let mut registry = self.write();
        let attached = registry
            .connections
            .get_mut(&id)
            .ok_or(HubError::NotFound)?;
        if attached.groups.remove(group) {
            remove_member(&mut registry.groups, group, id);
        }
        Ok(())
    }

    fn send_to_now(&self, id: ConnectionId, message: Message) -> HubResult<Fanout> {
        self.check_size(&message)?;
        let registry = self.read();
        let member = registry
            .connections
            .get(&id)
            .map(|attached| &attached.member)
            .filter(|member| member.is_open())
            .ok_or(HubError::NotFound)?;
        let mut fanout = Fanout::default();
        member.offer(&message, &mut fanout);
        Ok(fanout)
    }

    fn member_count_now(&self, group: &GroupName) -> u32 {
        let registry = self.read();
        let open = registry.groups.get(group).map_or(0, |members| {
            members.values().filter(|m| m.is_open()).count()
        });
        u32::try_from(open).unwrap_or(u32::MAX)
    }

    fn members_now(&self, group: &GroupName, limit: usize) -> HubResult<Vec<MemberInfo>> {
        let registry = self.read();
        let Some(members) = registry.groups.get(group) else {
            return Ok(Vec::new());
        };
        let mut listed = Vec::new();
        for (id, member) in members {
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

/// Take `id` out of `group`, and the group out of the map once empty.
fn remove_member(
    groups: &mut HashMap<GroupName, BTreeMap<ConnectionId, Arc<Member>>>,
    group: &GroupName,
    id: ConnectionId,
) {
    if let Some(members) = groups.get_mut(group) {
        members.remove(&id);
        if members.is_empty() {
            groups.remove(group);
        }
    }
}

impl Transport for LocalHub {
    fn attach(&self, outlet: Box<dyn Outlet>, policy: SlowMember) {
        let id = outlet.id();
        let member = Arc::new(Member {
            outlet,
            policy,
            attachment: Mutex::default(),
            dropped: AtomicU64::new(0),
        });
        let attached = Attached {
            member,
            groups: BTreeSet::new(),
        };
        let earlier = self.write().connections.insert(id, attached);
        debug_assert!(earlier.is_none(), "connection {id} attached twice");
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
    ) -> HubResult<Fanout> {
        self.check_size(&message)?;
        let mut fanout = Fanout::default();
        let registry = self.read();
        if let Some(members) = registry.groups.get(group) {
            for (id, member) in members {
                if Some(*id) != except {
                    member.offer(&message, &mut fanout);
                }
            }
        }
        Ok(fanout)
    }

    fn send_to(&self, id: ConnectionId, message: Message) -> Pending<'_, Fanout> {
        Box::pin(ready(self.send_to_now(id, message)))
    }

    fn member_count(&self, group: &GroupName) -> Pending<'_, u32> {
        Box::pin(ready(Ok(self.member_count_now(group))))
    }

    fn members(&self, group: &GroupName, limit: usize) -> Pending<'_, Vec<MemberInfo>> {
        Box::pin(ready(self.members_now(group, limit)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// An outlet with a queue of `capacity` messages that nobody drains.
    #[derive(Debug)]
    struct FakeOutlet {
        id: ConnectionId,
        capacity: usize,
        queued: Arc<Mutex<Vec<Message>>>,
        closed: Arc<AtomicBool>,
    }

    impl Outlet for FakeOutlet {
        fn id(&self) -> ConnectionId {
            self.id
        }

        fn try_send(&self, message: Message) -> Delivery {
            if self.is_closed() {
                return Delivery::Closed;
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

        fn close_slow(&self) -> bool {
            !self.closed.swap(true, Ordering::AcqRel)
        }
    }

    /// What a test sees of a fake connection.
    struct Probe {
        queued: Arc<Mutex<Vec<Message>>>,
        closed: Arc<AtomicBool>,
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
            max_message_size: 64,
        }
    }

    fn attach(hub: &LocalHub, id: ConnectionId, capacity: usize, policy: SlowMember) -> Probe {
        let queued = Arc::default();
        let closed = Arc::default();
        let outlet = FakeOutlet {
            id,
            capacity,
            queued: Arc::clone(&queued),
            closed: Arc::clone(&closed),
        };
        hub.attach(Box::new(outlet), policy);
        Probe { queued, closed }
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
                .publish(&group("room"), Message::text(format!("m{n}")), Some(1))
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
        hub.publish(&group("room"), message, None).unwrap();
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
                .publish(&group("room"), Message::text(format!("m{n}")), None)
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
                unreached: false,
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
            .publish(&group("all"), Message::text("first"), None)
            .unwrap();
        assert_eq!(first.delivered, 10_000);
        // Every queue is full now: nothing to wait for, each is a drop.
        let second = hub
            .publish(&group("all"), Message::text("second"), None)
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
            hub.publish(&group("a"), Message::text("x".repeat(65)), None),
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
            hub.publish(&group("empty"), Message::text("hi"), None),
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
}
