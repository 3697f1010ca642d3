//! Groups and addressing: how the connections of one app reach each other
//! (the host side of the WIT `groups` interface).
//!
//! ```text
//! flow ──groups.publish──> runtime/groups.rs ──Transport──> LocalHub (this host's registry)
//!                                                   └─ or ClusterHub (crate::cluster): a LocalHub
//!                                                      and NATS, for the app's other hosts
//! ```
//!
//! Every app has a hub of its own ([`crate::app::AppInfo::hub`]); nothing
//! in it names another app, so an app cannot reach another app's groups or
//! connections by any name or id. The trigger attaches every upgraded
//! connection ([`Membership::attach`]) and the attachment ends with the
//! connection, on every path, which ends its groups too: membership is
//! connection state, not instance state.
//!
//! The seam is [`Transport`]. The [`LocalHub`] implements it for one host.
//! With `--cluster`, [`crate::cluster`] implements the same trait around a
//! `LocalHub`: it delivers locally through it, forwards publishes to a NATS
//! subject scoped by app, subscribes where the local hub has members, and
//! answers counts and listings across hosts. Connection ids name their
//! host ([`ConnectionIds`]). The operations that may need a round trip to
//! other hosts therefore return a future ([`Pending`]). A `publish` never
//! waits for members; in a cluster, a publish to a group that keeps
//! history waits for the broker to store it (it needs the position).

mod history;
mod ids;
mod local;
mod name;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::close::Close;
use crate::manifest::spec::{AppLimits, SlowMember};

pub(crate) use history::{Histories, Kept, MAX_READ, Page, Position, fresh_epoch, page_of, stamp};
pub(crate) use ids::{ConnectionIds, HostId};
pub(crate) use local::LocalHub;
pub(crate) use name::GroupName;

/// A connection's id: unique in the host and, in a cluster, across its
/// hosts ([`ConnectionIds`]).
pub(crate) type ConnectionId = u64;

/// At most this many members are listed by `members`: a listing is copied
/// into the flow's memory, and with 2 KiB attachments this is 2 MiB.
pub(crate) const MAX_LISTED_MEMBERS: usize = 1000;

/// Why a group operation did nothing. The variants are the WIT
/// `group-error` cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HubError {
    #[error("{}", name::NAME_RULE)]
    InvalidName,
    #[error("no open connection of this app has that id")]
    NotFound,
    #[error("the message or attachment is larger than the app allows")]
    TooLarge,
    #[error("the connection is in as many groups as the app allows")]
    TooManyGroups,
    #[error("the group has as many members as the app allows")]
    GroupFull,
    #[error("the group has more than {MAX_LISTED_MEMBERS} members to list")]
    TooManyToList,
    #[error("the connection is closed")]
    Closed,
    #[error("the other hosts could not be reached")]
    Unavailable,
}

pub(crate) type HubResult<T> = Result<T, HubError>;

/// Why a history operation did nothing: the WIT `history-error` cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HistoryError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("the group keeps no history: no [[history]] of the app names it")]
    NotKept,
    #[error("what the connection is to be sent first does not fit in its outbound queue")]
    QueueFull,
}

/// The answer of an operation that a cluster transport may have to ask
/// other hosts for. A local hub answers at once.
pub(crate) type Pending<'a, T> = Pin<Box<dyn Future<Output = HubResult<T>> + Send + 'a>>;

/// The answer of a history operation, which a cluster transport reads
/// from the broker.
pub(crate) type PendingHistory<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, HistoryError>> + Send + 'a>>;

/// What a message did on its way to the members it was for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fanout {
    /// Queued for a member.
    pub(crate) delivered: u64,
    /// Not queued: the member's queue was full.
    pub(crate) dropped: u64,
    /// Members closed (1008) because their queue was full.
    pub(crate) closed: u64,
    /// Not queued: larger than the member's own trigger accepts
    /// (`max_message_size`). The member stays open and is not told.
    pub(crate) too_large: u64,
    /// The other hosts of the cluster could not be reached: only this
    /// host's members were offered the message.
    pub(crate) unreached: bool,
    /// The message's place in its group's history, if the group keeps one.
    pub(crate) position: Option<Position>,
}

/// What a transport counted beyond the operations of this host's flows:
/// messages that came from other hosts, and what could not reach them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TransportCounts {
    /// Messages that came from other hosts (published there, or sent to a
    /// connection of this host), and what they did here.
    pub(crate) received: u64,
    pub(crate) received_fanout: Fanout,
    /// Publishes and sends handed to the broker for other hosts.
    pub(crate) forwarded: u64,
    /// Operations answered `unavailable`: the other hosts could not be
    /// reached, or not in time.
    pub(crate) unavailable: u64,
    /// Of those, the ones refused because the app's share of the link was
    /// full.
    pub(crate) over_share: u64,
    /// Messages from other hosts dropped: the app's inbound queue was full.
    pub(crate) shed: u64,
    /// Bytes waiting now: for other hosts (out), for this host's members
    /// (in).
    pub(crate) queued_out: u64,
    pub(crate) queued_in: u64,
    /// Bytes and groups the app's history holds now.
    pub(crate) history_bytes: u64,
    pub(crate) history_groups: u64,
}

/// A member of a group, as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberInfo {
    pub(crate) id: ConnectionId,
    pub(crate) attachment: Bytes,
}

/// Whether an [`Outlet`] took a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    Queued,
    /// The outbound queue has no room now.
    Full,
    /// Larger than the connection's trigger lets it carry.
    TooLarge,
    /// The connection is closed or closing.
    Closed,
}

/// The outbound side of a local connection, as the hub uses it: it can
/// only be offered a message, never waited on.
pub(crate) trait Outlet: Send + Sync {
    fn id(&self) -> ConnectionId;
    /// Queue `message` if there is room now. The message is a cheap clone
    /// (its payload is shared by reference count), never a copy.
    fn try_send(&self, message: Message) -> Delivery;
    fn is_closed(&self) -> bool;
    /// Start closing with `close` without waiting (what was queued before
    /// goes first); returns whether this call started the close.
    fn close(&self, close: Close) -> bool;
}

/// The caps the hub enforces for one app.
#[derive(Debug, Clone)]
pub(crate) struct HubLimits {
    pub(crate) max_groups_per_connection: usize,
    pub(crate) max_group_members: usize,
    pub(crate) max_attachment_size: usize,
    /// The largest `max_message_size` of the app's triggers.
    pub(crate) max_message_size: LargestMessage,
}

impl HubLimits {
    pub(crate) fn new(limits: &AppLimits, max_message_size: LargestMessage) -> Self {
        Self {
            max_groups_per_connection: limits.max_groups_per_connection,
            max_group_members: limits.max_group_members,
            max_attachment_size: limits.max_attachment_size,
            max_message_size,
        }
    }
}

/// The largest message an app's groups carry: the largest
/// `max_message_size` of its triggers. Shared by the app, which sets it
/// again when a reload changes its triggers, and its hub, which refuses a
/// larger message before any member sees it. Each member checks its own
/// trigger's limit as well ([`Delivery::TooLarge`]).
#[derive(Debug, Clone)]
pub(crate) struct LargestMessage(Arc<AtomicUsize>);

impl LargestMessage {
    pub(crate) fn new(bytes: usize) -> Self {
        Self(Arc::new(AtomicUsize::new(bytes)))
    }

    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self, bytes: usize) {
        self.0.store(bytes, Ordering::Relaxed);
    }
}

/// A connection was attached under an id a connection of the app still
/// holds: it is refused rather than let it take the other's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection id {0} is held by another open connection of the app")]
pub(crate) struct DuplicateId(pub(crate) ConnectionId);

/// Where an app's group operations go: the local hub, or a transport that
/// also reaches other hosts. Every method is scoped to the one app the
/// transport was made for.
pub(crate) trait Transport: Send + Sync + fmt::Debug {
    /// A connection was upgraded: from now on it can be addressed by id and
    /// join groups. A full queue is handled by `policy`. Refused if a
    /// connection of the app still holds the id.
    fn attach(&self, outlet: Box<dyn Outlet>, policy: SlowMember) -> Result<(), DuplicateId>;

    /// The connection ended: it leaves every group and can no longer be
    /// addressed. Returns how many messages were dropped for it.
    fn detach(&self, id: ConnectionId) -> u64;

    fn join(&self, id: ConnectionId, group: GroupName) -> Pending<'_, ()>;

    fn leave(&self, id: ConnectionId, group: &GroupName) -> Pending<'_, ()>;

    /// The groups connection `id` is in, in name order.
    fn joined(&self, id: ConnectionId) -> Vec<GroupName>;

    fn set_attachment(&self, id: ConnectionId, attachment: Bytes) -> HubResult<()>;

    fn attachment(&self, id: ConnectionId) -> HubResult<Bytes>;

    /// Offer `message` to every member of `group` but `except`. Never
    /// waits for a member: a cluster transport hands the message to its
    /// broker connection's own queue. A group that keeps history keeps it
    /// first: in a cluster that waits for the broker to store it.
    fn publish(
        &self,
        group: &GroupName,
        message: Message,
        except: Option<ConnectionId>,
    ) -> Pending<'_, Fanout>;

    fn send_to(&self, id: ConnectionId, message: Message) -> Pending<'_, Fanout>;

    /// Close connection `id` with `close`, after what was queued for it.
    fn close(&self, id: ConnectionId, close: Close) -> Pending<'_, ()>;

    fn member_count(&self, group: &GroupName) -> Pending<'_, u32>;

    /// The members of `group` in id order; `TooManyToList` beyond `limit`.
    fn members(&self, group: &GroupName, limit: usize) -> Pending<'_, Vec<MemberInfo>>;

    /// Whether `group` keeps history: a `[[history]]` of the app names it.
    fn keeps(&self, group: &GroupName) -> bool {
        let _ = group;
        false
    }

    /// `group`'s kept messages after `since` (the newest without it), at
    /// most `limit`.
    fn read_history(
        &self,
        group: &GroupName,
        since: Option<Position>,
        limit: usize,
    ) -> PendingHistory<'_, Page> {
        let _ = (group, since, limit);
        Box::pin(std::future::ready(Err(HistoryError::NotKept)))
    }

    /// Join `group` after sending connection `id` the group's kept
    /// messages after `since`, with none lost or doubled at the seam;
    /// answers whether the history reached back to `since`.
    fn join_from(
        &self,
        id: ConnectionId,
        group: GroupName,
        since: Position,
    ) -> PendingHistory<'_, bool> {
        let _ = (id, group, since);
        Box::pin(std::future::ready(Err(HistoryError::NotKept)))
    }

    /// What the transport counted on its own; a local hub counts nothing
    /// beyond what the flows' operations return.
    fn counts(&self) -> TransportCounts {
        TransportCounts::default()
    }
}

/// What a connection held in its hub when it ended, for its `on_close`.
#[derive(Debug, Default, Clone)]
pub(crate) struct Farewell {
    /// In name order.
    pub(crate) groups: Vec<GroupName>,
    pub(crate) attachment: Bytes,
}

/// A connection's place in its app's hub, from the upgrade until the
/// connection ends: dropping it (however the connection ends) detaches the
/// connection, which leaves all its groups.
pub(crate) struct Membership {
    hub: Arc<dyn Transport>,
    id: ConnectionId,
    /// Filled with the connection's groups and attachment as it detaches.
    farewell: Option<Arc<OnceLock<Farewell>>>,
}

impl Membership {
    /// Attach the connection behind `outlet`; refused (and nothing to
    /// detach) if another connection of the app holds its id.
    pub(crate) fn attach(
        hub: &Arc<dyn Transport>,
        outlet: Box<dyn Outlet>,
        policy: SlowMember,
    ) -> Result<Self, DuplicateId> {
        let id = outlet.id();
        hub.attach(outlet, policy)?;
        Ok(Self {
            hub: Arc::clone(hub),
            id,
            farewell: None,
        })
    }

    /// Keep what the connection holds in the hub when it detaches in
    /// `farewell`, however the connection ends.
    pub(crate) fn keep_farewell(&mut self, farewell: Arc<OnceLock<Farewell>>) {
        self.farewell = Some(farewell);
    }

    /// Start the connection the way its `on_connect` hook chose: with an
    /// attachment, sent `first` before anything else, in `groups` and in
    /// the groups it joins `from` a position. Checked by the hook already,
    /// except whether a group has room and the queue room for `first`.
    pub(crate) async fn open_with(&self, opening: Opened) -> Result<(), HistoryError> {
        let Opened {
            attachment,
            first,
            groups,
            from,
        } = opening;
        if !attachment.is_empty() {
            self.hub.set_attachment(self.id, attachment)?;
        }
        for message in first {
            let fanout = self.hub.send_to(self.id, message).await?;
            if fanout.delivered == 0 {
                return Err(HistoryError::QueueFull);
            }
        }
        for group in groups {
            if !from.iter().any(|(name, _)| *name == group) {
                self.hub.join(self.id, group).await?;
            }
        }
        for (group, since) in from {
            self.hub.join_from(self.id, group, since).await?;
        }
        Ok(())
    }
}

/// How a connection starts: see [`Membership::open_with`].
#[derive(Debug, Default)]
pub(crate) struct Opened {
    pub(crate) attachment: Bytes,
    pub(crate) first: Vec<Message>,
    pub(crate) groups: Vec<GroupName>,
    pub(crate) from: Vec<(GroupName, Position)>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Some(farewell) = &self.farewell {
            let _ = farewell.set(Farewell {
                groups: self.hub.joined(self.id),
                attachment: self.hub.attachment(self.id).unwrap_or_default(),
            });
        }
        let dropped = self.hub.detach(self.id);
        if dropped > 0 {
            tracing::info!("{dropped} group message(s) were dropped for this slow connection");
        }
    }
}
