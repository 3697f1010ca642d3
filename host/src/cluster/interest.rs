//! Which group subjects a host subscribes to: those of the groups it has
//! members in, and only those, so a host with no member of a group
//! receives nothing for it.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::Subscriber;
use futures_util::StreamExt as _;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::hub::{QUERY_TIMEOUT, Shared};
use crate::hub::GroupName;

/// Which groups this host should be subscribed to: those with local
/// members. Joins and leaves mark groups; one task brings the
/// subscriptions in line (looking at the local members, not at the marks,
/// so racing joins and leaves settle right) and says how far it got.
#[derive(Debug)]
pub(super) struct Interest {
    marked: Mutex<BTreeSet<GroupName>>,
    /// Incremented with every mark.
    requested: AtomicU64,
    /// The last `requested` value whose marks are applied (and confirmed
    /// by the broker, when it could be reached).
    applied: watch::Sender<u64>,
    wake: Notify,
}

impl Default for Interest {
    fn default() -> Self {
        Self {
            marked: Mutex::default(),
            requested: AtomicU64::new(0),
            applied: watch::Sender::new(0),
            wake: Notify::new(),
        }
    }
}

impl Interest {
    /// Groups whose local members changed; returns the mark to wait for.
    pub(super) fn mark(&self, groups: impl IntoIterator<Item = GroupName>) -> u64 {
        self.marked.lock().expect("not poisoned").extend(groups);
        let mark = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake.notify_one();
        mark
    }
}

/// A subscription to one group's subject and the task that delivers what
/// it receives.
struct GroupReader {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl GroupReader {
    fn start(shared: &Arc<Shared>, group: GroupName, subscription: Subscriber) -> Self {
        let stop = CancellationToken::new();
        let task = shared.link.runtime().spawn(Arc::clone(shared).read_group(
            group,
            subscription,
            stop.clone(),
        ));
        Self { stop, task }
    }

    /// Unsubscribe, and wait until the broker has been told, so a new
    /// subscription to the same group never overlaps this one (a message
    /// would arrive twice).
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

impl Shared {
    async fn read_group(
        self: Arc<Self>,
        group: GroupName,
        mut subscription: Subscriber,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                message = subscription.next() => match message {
                    Some(message) => self.deliver(&group, &message),
                    None => return,
                },
            }
        }
        // Bounded: with the broker gone the client's queue may be full;
        // dropping the subscription then unsubscribes as best it can.
        let _ = tokio::time::timeout(QUERY_TIMEOUT, subscription.unsubscribe()).await;
    }

    /// Bring the group subscriptions in line with the local members,
    /// whenever groups are marked, until `stop`.
    pub(super) async fn keep_interest(self: Arc<Self>, stop: CancellationToken) {
        let mut readers: HashMap<GroupName, GroupReader> = HashMap::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.interest.wake.notified() => {}
            }
            // Read before taking the marks: every mark counted here is in
            // what is taken.
            let requested = self.interest.requested.load(Ordering::Acquire);
            let marked = std::mem::take(&mut *self.interest.marked.lock().expect("not poisoned"));
            let mut subscribed = false;
            for group in marked {
                let wanted = self.local_count(&group) > 0;
                if wanted && !readers.contains_key(&group) {
                    match self
                        .link
                        .client()
                        .subscribe(self.subjects.group(&group))
                        .await
                    {
                        Ok(subscription) => {
                            let reader = GroupReader::start(&self, group.clone(), subscription);
                            readers.insert(group, reader);
                            subscribed = true;
                        }
                        Err(error) => tracing::warn!(
                            app = &*self.app,
                            "cluster: cannot subscribe to group `{group}`: {error}; its members \
                             on this host get only what is published here"
                        ),
                    }
                } else if !wanted && let Some(reader) = readers.remove(&group) {
                    reader.stop().await;
                }
            }
            if subscribed {
                self.link.sync(QUERY_TIMEOUT).await;
            }
            self.interest.applied.send_if_modified(|applied| {
                let advanced = requested > *applied;
                *applied = (*applied).max(requested);
                advanced
            });
        }
        for (_, reader) in readers {
            reader.stop().await;
        }
    }

    /// Wait until the subscriptions of `mark` are made and the broker has
    /// them, if it can be reached, for at most [`QUERY_TIMEOUT`]. The local membership holds
    /// either way; a subscription the broker did not confirm in time is
    /// still made (and renewed by every reconnect).
    pub(super) async fn settled(&self, mark: u64) {
        if !self.link.is_connected() {
            return;
        }
        let mut applied = self.interest.applied.subscribe();
        let _ =
            tokio::time::timeout(QUERY_TIMEOUT, applied.wait_for(|applied| *applied >= mark)).await;
    }
}
