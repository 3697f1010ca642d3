//! Which groups this host tells the other hosts of an app it holds
//! members in, so they send a publish to the broker only when some host
//! may deliver it (a publish to a group nobody else holds costs no
//! bandwidth, and a tenant flooding such a group loads only its own host).
//!
//! Joins and leaves mark groups; one task compares the marked groups'
//! local members with what the peers were told, and tells every peer the
//! changes as a request it answers once it has applied them. A join that
//! made a group's first member here waits for those answers, so a publish
//! made on any host after the join returned is sent, and reaches the new
//! member. A peer that asks gets the whole set; set and changes are queued
//! under one lock in one lane, so a peer sees them in the order they were
//! made, and every peer either had its set before a change (and is told
//! the change) or gets a set that has it.
//!
//! A host that has just joined the broker cannot know yet every host that
//! might skip a publish its member would want: for [`YOUNG`] after
//! connecting, joins wait, and this host sends every publish.
//!
//! The host receives the app's group messages on one subscription for
//! all its groups (`wsflow.app.APP.group.*`): one per app, whatever the
//! number of groups, renewed as one on reconnect.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Bytes;
use tokio_util::sync::CancellationToken;

use super::directory::{Change, HEARTBEAT};
use super::hub::{QUERY_TIMEOUT, Shared};
use super::link::Outgoing;
use super::outbox::Lane;
use super::questions::Question;
use super::wire::{self, Op, Outcome, header};
use crate::hub::{GroupName, HostId};

/// How long after connecting a host treats its view of the other hosts as
/// incomplete: every live host answers a `hello` at once and says `here`
/// every [`HEARTBEAT`], so by then it has heard from each, and each has
/// heard of it.
pub(super) const YOUNG: Duration = HEARTBEAT.saturating_mul(2);

/// What this host told the others, and what changed since.
#[derive(Debug)]
pub(super) struct Interest {
    marked: Mutex<BTreeSet<GroupName>>,
    /// Incremented with every mark.
    requested: AtomicU64,
    /// The last `requested` value whose marks are told (and answered by
    /// every peer that could be reached in time).
    pub(super) applied: watch::Sender<u64>,
    pub(super) wake: Notify,
    /// The groups the peers were told this host holds. Held while a set
    /// or a change is queued for the peers.
    pub(super) told: Mutex<HashSet<GroupName>>,
    /// Until when this host's view of the cluster is incomplete.
    young_until: Mutex<Instant>,
    /// A set or a change could not be queued for a peer: the next
    /// heartbeat says `hello`, so every peer asks for the whole set again.
    pub(super) resend: AtomicBool,
}

impl Default for Interest {
    fn default() -> Self {
        Self {
            marked: Mutex::default(),
            requested: AtomicU64::new(0),
            applied: watch::Sender::new(0),
            wake: Notify::new(),
            told: Mutex::default(),
            young_until: Mutex::new(Instant::now() + YOUNG),
            resend: AtomicBool::new(false),
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

    /// The marks to apply: the last mark counted, and the groups.
    pub(super) fn take_marks(&self) -> (u64, BTreeSet<GroupName>) {
        // Read before taking the marks: every mark counted here is in
        // what is taken.
        let requested = self.requested.load(Ordering::Acquire);
        let marked = std::mem::take(&mut *self.marked.lock().expect("not poisoned"));
        (requested, marked)
    }

    /// Every mark up to `requested` is told.
    pub(super) fn applied(&self, requested: u64) {
        self.applied.send_if_modified(|applied| {
            let advanced = requested > *applied;
            *applied = (*applied).max(requested);
            advanced
        });
    }

    /// This host (re)connected: its view is incomplete for [`YOUNG`].
    pub(super) fn connected(&self) {
        *self.young_until.lock().expect("not poisoned") = Instant::now() + YOUNG;
    }

    /// Until when this host's view is incomplete.
    pub(super) fn young_until(&self) -> Instant {
        *self.young_until.lock().expect("not poisoned")
    }

    pub(super) fn is_young(&self) -> bool {
        Instant::now() < self.young_until()
    }
}

impl Shared {
    /// Tell the peers what changed in the groups this host holds, whenever
    /// groups are marked, until `stop`.
    pub(super) async fn keep_interest(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.interest.wake.notified() => {}
            }
            let (requested, marked) = self.interest.take_marks();
            for (question, peers) in self.tell_changes(marked) {
                if self.answers(question, &peers).await.is_none() {
                    tracing::debug!(
                        app = &*self.app,
                        "cluster: a host did not confirm the groups this host holds in time"
                    );
                }
            }
            self.interest.applied(requested);
        }
    }

    /// Queue the changes of the `marked` groups for every peer; returns
    /// the questions to wait for.
    fn tell_changes(&self, marked: BTreeSet<GroupName>) -> Vec<(Question, Vec<HostId>)> {
        let mut told = self.interest.told.lock().expect("not poisoned");
        let mut changes = Vec::new();
        for group in marked {
            let holds = self.local_count(&group) > 0;
            if holds && told.insert(group.clone()) {
                changes.push(Change::Holds(group));
            } else if !holds && told.remove(&group) {
                changes.push(Change::Dropped(group));
            }
        }
        // Under the lock: a peer not listed now asks for the whole set
        // later, and gets these changes in it.
        let peers = self.peers.peers();
        if changes.is_empty() || peers.is_empty() {
            return Vec::new();
        }
        let headers = self.headers(Op::GroupsChanged);
        let mut questions = Vec::new();
        for body in in_parts(encode_changes(&changes), self.part_budget()) {
            match self.put_question(&Lane::Control, &peers, &headers, &Bytes::from(body)) {
                Ok(question) => questions.push((question, peers.clone())),
                Err(_) => {
                    self.interest.resend.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
        questions
    }

    /// Peer `to` asks for the groups this host holds: send them, in parts.
    pub(super) fn send_groups(&self, to: HostId) {
        let told = self.interest.told.lock().expect("not poisoned");
        // Under the lock: from now on `to` is told every change.
        if self.peers.heard(to) {
            self.ask_groups(to);
        }
        let parts = in_parts(told.iter().map(ToString::to_string), self.part_budget());
        let last = parts.len() - 1;
        for (n, body) in parts.into_iter().enumerate() {
            let mut headers = self.headers(Op::Groups);
            if n < last {
                headers.insert(header::MORE, "1");
            }
            let part = Outgoing {
                subject: self.subjects.host(to),
                reply: None,
                headers,
                payload: Bytes::from(body),
            };
            if self.link.send(&Lane::Control, part).is_err() {
                self.interest.resend.store(true, Ordering::Relaxed);
                return;
            }
        }
    }

    /// Ask `host` for the groups it holds.
    pub(super) fn ask_groups(&self, host: HostId) {
        let _ = self.link.send(
            &Lane::Control,
            Outgoing {
                subject: self.subjects.host(host),
                reply: None,
                headers: self.headers(Op::AskGroups),
                payload: Bytes::new(),
            },
        );
    }

    /// A part of the groups peer `from` holds.
    pub(super) fn take_groups(&self, from: HostId, part: &async_nats::Message) {
        let Some(groups) = decode_groups(&part.payload) else {
            return;
        };
        let last = wire::get(part.headers.as_ref(), header::MORE).is_none();
        self.peers.groups_part(from, groups, last);
    }

    /// Peer `from` tells what changed in the groups it holds.
    pub(super) fn take_changes(&self, from: HostId, request: &async_nats::Message) -> Outcome {
        if self.peers.heard(from) {
            self.ask_groups(from);
        }
        if let Some(changes) = decode_changes(&request.payload) {
            self.peers.changed(from, changes);
        }
        Outcome::Ok
    }

    /// Whether a publish to `group` must go to the broker: another host
    /// holds a member of it, or may.
    pub(super) fn others_may_hold(&self, group: &GroupName) -> bool {
        self.interest.is_young() || self.peers.may_hold(group)
    }

    /// Wait until the changes of `mark` are told and every peer that could
    /// be reached in time has them, and until this host knows every peer
    /// ([`YOUNG`]), if the broker can be reached. The local membership
    /// holds either way.
    pub(super) async fn settled(&self, mark: u64) {
        if !self.link.is_connected() {
            return;
        }
        let mut applied = self.interest.applied.subscribe();
        let told = applied.wait_for(|applied| *applied >= mark);
        // The task may be waiting for an earlier change's answers first.
        let _ = tokio::time::timeout(QUERY_TIMEOUT * 2, told).await;
        tokio::time::sleep_until(self.interest.young_until()).await;
    }
}

/// The changes, one a line: `+GROUP` holds, `-GROUP` dropped.
pub(super) fn encode_changes(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|change| match change {
            Change::Holds(group) => format!("+{group}"),
            Change::Dropped(group) => format!("-{group}"),
        })
        .collect()
}

pub(super) fn decode_changes(body: &[u8]) -> Option<Vec<Change>> {
    let body = std::str::from_utf8(body).ok()?;
    body.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (sign, name) = line.split_at_checked(1)?;
            let group = GroupName::parse(name).ok()?;
            match sign {
                "+" => Some(Change::Holds(group)),
                "-" => Some(Change::Dropped(group)),
                _ => None,
            }
        })
        .collect()
}

pub(super) fn decode_groups(body: &[u8]) -> Option<Vec<GroupName>> {
    let body = std::str::from_utf8(body).ok()?;
    body.lines()
        .filter(|line| !line.is_empty())
        .map(|line| GroupName::parse(line).ok())
        .collect()
}

/// `lines` joined by newlines into bodies of at most `budget` bytes each
/// (a group's line is at most 129 bytes); at least one body.
pub(super) fn in_parts(lines: impl IntoIterator<Item = String>, budget: usize) -> Vec<Vec<u8>> {
    let mut parts = vec![Vec::new()];
    for line in lines {
        let part = parts.last_mut().expect("one part at least");
        if !part.is_empty() && part.len() + line.len() + 1 > budget {
            parts.push(Vec::new());
        }
        let part = parts.last_mut().expect("one part at least");
        part.extend_from_slice(line.as_bytes());
        part.push(b'\n');
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str) -> GroupName {
        GroupName::parse(name).unwrap()
    }

    #[test]
    fn changes_and_sets_survive_the_trip_in_parts() {
        let changes = vec![
            Change::Holds(group("a.b")),
            Change::Dropped(group("room:1")),
        ];
        let parts = in_parts(encode_changes(&changes), 1000);
        assert_eq!(parts.len(), 1);
        assert_eq!(decode_changes(&parts[0]).unwrap(), changes);

        let names: Vec<String> = (0..100).map(|n| format!("group-{n}")).collect();
        let parts = in_parts(names.clone(), 64);
        assert!(parts.iter().all(|part| part.len() <= 64));
        let back: Vec<String> = parts
            .iter()
            .flat_map(|part| decode_groups(part).unwrap())
            .map(|group| group.to_string())
            .collect();
        assert_eq!(back, names);
        assert_eq!(decode_groups(b"").unwrap(), []);
        assert!(decode_changes(b"*bad\n").is_none());
    }
}
