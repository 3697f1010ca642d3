//! Group history on one host: the recent messages of the groups an app's
//! `[[history]]` names, in memory, each with its [`Position`].
//!
//! A group's history ([`Kept`]) is behind a lock of its own, which a
//! publish to the group holds from keeping the message until every member
//! was offered it, and a join from a position holds from reading what the
//! joiner missed until it is a member. So every member gets the group's
//! messages in position order, and a joiner gets each message once: from
//! the history if it was kept before the join, live if after.
//!
//! What history may hold is bounded per app: `size` and `ttl` per group,
//! `max_history_bytes` and `max_history_groups` for all its groups. A loss
//! is never silent: a message that cannot be kept (the app's bytes are
//! full even after the group dropped all it had) or a group dropped to
//! make room for another starts a new epoch, and a position of the old one
//! reads as `complete: false`.

use std::collections::hash_map::{Entry as MapEntry, RandomState};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::GroupName;
use crate::manifest::spec::{AppLimits, HistorySpec};

/// The most entries one read returns, and one join sends first.
pub(crate) const MAX_READ: usize = 1000;

/// Bytes counted for an entry besides its message: its place in the
/// queue, its offset and time, the message's own header.
const ENTRY_OVERHEAD: usize = 64;

/// Where a message is in its group's history: the WIT `position`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Position {
    pub(crate) epoch: u64,
    pub(crate) offset: u64,
}

impl Position {
    /// The position whose text is the longest, for size checks.
    pub(crate) const LARGEST: Self = Self {
        epoch: u64::MAX,
        offset: u64::MAX,
    };
}

impl fmt::Display for Position {
    /// `EPOCH:OFFSET`, the epoch in hex: what `position_field` adds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}:{}", self.epoch, self.offset)
    }
}

/// A kept message.
#[derive(Debug, Clone)]
pub(crate) struct Kept {
    pub(crate) position: Position,
    pub(crate) message: Message,
}

/// What a read found.
#[derive(Debug, Clone, Default)]
pub(crate) struct Page {
    pub(crate) entries: Vec<Kept>,
    /// Whether the history reached back to the position asked from.
    pub(crate) complete: bool,
    /// The group's newest position (offset 0: nothing published yet).
    pub(crate) head: Position,
}

/// The history of all of an app's groups that keep one.
#[derive(Default)]
pub(crate) struct Histories {
    rules: Vec<HistorySpec>,
    max_bytes: usize,
    max_groups: usize,
    groups: Mutex<HashMap<GroupName, Arc<Mutex<GroupHistory>>>>,
    /// Bytes all groups keep now.
    bytes: Arc<AtomicUsize>,
    epochs: EpochSource,
}

impl fmt::Debug for Histories {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histories")
            .field("rules", &self.rules)
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Histories {
    pub(crate) fn new(rules: Vec<HistorySpec>, limits: &AppLimits) -> Self {
        Self {
            rules,
            max_bytes: limits.max_history_bytes,
            max_groups: limits.max_history_groups,
            groups: Mutex::default(),
            bytes: Arc::default(),
            epochs: EpochSource::default(),
        }
    }

    /// Bytes the app's groups keep now.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Groups keeping history now.
    pub(crate) fn groups(&self) -> usize {
        self.groups.lock().expect("not poisoned").len()
    }

    /// Whether a rule names `group`.
    pub(crate) fn names(&self, group: &GroupName) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.groups.matches(group.as_str()))
    }

    /// The history of `group`, made on first use; `None` if no rule
    /// names it.
    pub(crate) fn of(&self, group: &GroupName) -> Option<Arc<Mutex<GroupHistory>>> {
        let rule = self
            .rules
            .iter()
            .find(|rule| rule.groups.matches(group.as_str()))?;
        let mut groups = self.groups.lock().expect("not poisoned");
        if let Some(history) = groups.get(group) {
            return Some(Arc::clone(history));
        }
        if groups.len() >= self.max_groups {
            drop_least_recent(&mut groups);
        }
        let history = Arc::new(Mutex::new(GroupHistory {
            rule: rule.clone(),
            epoch: self.epochs.next(),
            head: 0,
            entries: VecDeque::new(),
            bytes: 0,
            app_bytes: Arc::clone(&self.bytes),
            max_app_bytes: self.max_bytes,
            last_used: Instant::now(),
            epochs: self.epochs.clone(),
            starved: false,
        }));
        match groups.entry(group.clone()) {
            MapEntry::Vacant(vacant) => Some(Arc::clone(vacant.insert(history))),
            MapEntry::Occupied(occupied) => Some(Arc::clone(occupied.get())),
        }
    }
}

/// Drop the group published to least recently (its history lost: a
/// position in it reads as incomplete), to make room for another.
fn drop_least_recent(groups: &mut HashMap<GroupName, Arc<Mutex<GroupHistory>>>) {
    let oldest = groups
        .iter()
        .filter_map(|(name, history)| {
            // A group being published to or read now is not the least recent.
            let used = history.try_lock().ok()?.last_used;
            Some((used, name.clone()))
        })
        .min_by_key(|(used, _)| *used);
    if let Some((_, name)) = oldest
        && let Some(history) = groups.remove(&name)
    {
        history.lock().expect("not poisoned").forget();
    }
}

/// A fresh epoch, never 0: random, so no host, before or after a restart,
/// makes the same one.
pub(crate) fn fresh_epoch() -> u64 {
    static EPOCHS: std::sync::OnceLock<EpochSource> = std::sync::OnceLock::new();
    EPOCHS.get_or_init(EpochSource::default).next()
}

/// The page of a read after `since` (the newest `limit` without it) of a
/// history whose kept messages are `entries`, oldest first, all of the
/// epoch of `head` with consecutive offsets ending at most at `head`.
pub(crate) fn page_of(
    entries: Vec<Kept>,
    head: Position,
    since: Option<Position>,
    limit: usize,
) -> Page {
    let limit = limit.min(MAX_READ);
    let first = entries
        .first()
        .map_or(head.offset + 1, |kept| kept.position.offset);
    let (skip, complete) = match since {
        None => (entries.len().saturating_sub(limit), true),
        Some(since)
            if since.epoch == head.epoch
                && (first.saturating_sub(1)..=head.offset).contains(&since.offset) =>
        {
            let skip = usize::try_from(since.offset + 1 - first).unwrap_or(usize::MAX);
            (skip, true)
        }
        Some(_) => (0, false),
    };
    Page {
        entries: entries.into_iter().skip(skip).take(limit).collect(),
        complete,
        head,
    }
}

/// Fresh epochs: random, so a host that restarts never reuses one.
#[derive(Debug, Clone, Default)]
struct EpochSource(Arc<EpochState>);

#[derive(Debug, Default)]
struct EpochState {
    hasher: RandomState,
    count: AtomicU64,
}

impl EpochSource {
    fn next(&self) -> u64 {
        let count = self.0.count.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        // Never 0, which no position of a real history has.
        self.0.hasher.hash_one((count, now)).max(1)
    }
}

/// One group's history.
pub(crate) struct GroupHistory {
    rule: HistorySpec,
    epoch: u64,
    /// The newest offset (0: none yet).
    head: u64,
    entries: VecDeque<Entry>,
    bytes: usize,
    app_bytes: Arc<AtomicUsize>,
    max_app_bytes: usize,
    last_used: Instant,
    epochs: EpochSource,
    /// The last message could not be kept (said once, not per message).
    starved: bool,
}

struct Entry {
    offset: u64,
    message: Message,
    kept_at: Instant,
    bytes: usize,
}

impl GroupHistory {
    /// Keep `message` as the group's next, with its position (added to it
    /// when the rule says so); answers the position and the message as the
    /// members are to get it.
    pub(crate) fn keep(&mut self, message: Message) -> (Position, Message) {
        let now = Instant::now();
        self.last_used = now;
        self.expire(now);
        self.head += 1;
        let position = Position {
            epoch: self.epoch,
            offset: self.head,
        };
        let message = match &self.rule.position_field {
            Some(field) => stamp(message, field, position),
            None => message,
        };
        let bytes = message.len() + ENTRY_OVERHEAD;
        while self.entries.len() >= self.rule.size
            || (!self.entries.is_empty() && !self.fits(bytes))
        {
            self.drop_oldest();
        }
        if self.fits(bytes) {
            self.app_bytes.fetch_add(bytes, Ordering::Relaxed);
            self.bytes += bytes;
            self.entries.push_back(Entry {
                offset: position.offset,
                message: message.clone(),
                kept_at: now,
                bytes,
            });
            self.starved = false;
            return (position, message);
        }
        // The app's other groups hold all its bytes: this one cannot be
        // kept. Its history starts again after it, so nobody reads past
        // it as if nothing were missing.
        self.epoch = self.epochs.next();
        self.head = 0;
        if std::mem::replace(&mut self.starved, true) {
            return (position, message);
        }
        tracing::warn!(
            max_history_bytes = self.max_app_bytes,
            "a group message could not be kept in history: the app's history is full; \
             the group's history starts again (raise limits.max_history_bytes, or lower a \
             [[history]] size)"
        );
        (position, message)
    }

    /// The kept messages after `since`, at most `limit` (without `since`,
    /// the newest `limit`). Not capped here: a join sends all it missed;
    /// a flow's read is capped at [`MAX_READ`] by its caller.
    pub(crate) fn read(&mut self, since: Option<Position>, limit: usize) -> Page {
        self.expire(Instant::now());
        let head = Position {
            epoch: self.epoch,
            offset: self.head,
        };
        let (skip, complete) = match since {
            None => (self.entries.len().saturating_sub(limit), true),
            Some(since) if self.reaches(since) => {
                let first = self.entries.front().map_or(self.head + 1, |e| e.offset);
                let skip = usize::try_from(since.offset + 1 - first).unwrap_or(usize::MAX);
                (skip, true)
            }
            Some(_) => (0, false),
        };
        let entries = self
            .entries
            .iter()
            .skip(skip)
            .take(limit)
            .map(|entry| Kept {
                position: Position {
                    epoch: self.epoch,
                    offset: entry.offset,
                },
                message: entry.message.clone(),
            })
            .collect();
        Page {
            entries,
            complete,
            head,
        }
    }

    /// Whether every message after `since` is still kept.
    fn reaches(&self, since: Position) -> bool {
        let oldest_after = self.entries.front().map_or(self.head, |e| e.offset - 1);
        since.epoch == self.epoch && (oldest_after..=self.head).contains(&since.offset)
    }

    fn fits(&self, bytes: usize) -> bool {
        self.app_bytes.load(Ordering::Relaxed) + bytes <= self.max_app_bytes
    }

    fn expire(&mut self, now: Instant) {
        let ttl: Duration = self.rule.ttl;
        while self
            .entries
            .front()
            .is_some_and(|entry| now.duration_since(entry.kept_at) >= ttl)
        {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.bytes -= entry.bytes;
            self.app_bytes.fetch_sub(entry.bytes, Ordering::Relaxed);
        }
    }

    /// The group was dropped: give back its bytes; whoever still holds it
    /// keeps it in a new epoch.
    fn forget(&mut self) {
        while !self.entries.is_empty() {
            self.drop_oldest();
        }
        self.epoch = self.epochs.next();
        self.head = 0;
    }
}

impl Drop for GroupHistory {
    fn drop(&mut self) {
        self.app_bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The lock of a group's history.
pub(crate) fn lock(history: &Mutex<GroupHistory>) -> MutexGuard<'_, GroupHistory> {
    history.lock().expect("not poisoned")
}

/// `message` with `"FIELD":"POSITION"` added first, if it is a text
/// message holding a JSON object; other messages as they are.
pub(crate) fn stamp(message: Message, field: &str, position: Position) -> Message {
    let Message::Text(text) = &message else {
        return message;
    };
    let Some(rest) = text.trim_start().strip_prefix('{') else {
        return message;
    };
    let separator = if rest.trim_start().starts_with('}') {
        ""
    } else {
        ","
    };
    let stamped = format!("{{\"{field}\":\"{position}\"{separator}{rest}");
    Message::Text(Utf8Bytes::from(stamped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::spec::GroupPattern;

    fn rule(size: usize) -> HistorySpec {
        HistorySpec {
            groups: GroupPattern::Prefix("room:".into()),
            size,
            ttl: Duration::from_secs(60),
            position_field: Some("pos".into()),
        }
    }

    fn histories(size: usize, max_bytes: usize) -> Histories {
        let limits = AppLimits {
            max_history_bytes: max_bytes,
            max_history_groups: 3,
            ..AppLimits::default()
        };
        Histories::new(vec![rule(size)], &limits)
    }

    fn group(name: &str) -> GroupName {
        GroupName::parse(name).unwrap()
    }

    fn texts(page: &Page) -> Vec<String> {
        page.entries
            .iter()
            .map(|kept| kept.message.to_text().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn only_named_groups_keep_history() {
        let histories = histories(10, 1 << 20);
        assert!(histories.of(&group("room:a")).is_some());
        assert!(histories.of(&group("lobby")).is_none());
        assert!(histories.of(&group("roomy")).is_none());
    }

    #[test]
    fn positions_grow_by_one_and_json_objects_carry_them() {
        let histories = histories(10, 1 << 20);
        let history = histories.of(&group("room:a")).unwrap();
        let mut history = lock(&history);
        let (first, stamped) = history.keep(Message::text(r#"{"text":"hi"}"#));
        let (second, _) = history.keep(Message::text("{}"));
        let (third, plain) = history.keep(Message::text("plain"));
        assert_eq!(first.offset, 1);
        assert_eq!(second.offset, 2);
        assert_eq!(third.offset, 3);
        assert_eq!(first.epoch, third.epoch);
        assert_eq!(
            stamped.to_text().unwrap(),
            format!(r#"{{"pos":"{first}","text":"hi"}}"#)
        );
        let page = history.read(Some(first), 10);
        assert!(page.complete);
        assert_eq!(
            texts(&page),
            [format!(r#"{{"pos":"{second}"}}"#), "plain".to_owned()]
        );
        assert_eq!(plain.to_text().unwrap(), "plain");
        assert_eq!(page.head, third);
    }

    #[test]
    fn a_position_the_history_no_longer_reaches_reads_as_incomplete() {
        let histories = histories(3, 1 << 20);
        let history = histories.of(&group("room:a")).unwrap();
        let mut history = lock(&history);
        let positions: Vec<Position> = (0..5)
            .map(|n| history.keep(Message::text(format!("m{n}"))).0)
            .collect();
        // Kept: m2 m3 m4. After m1 is everything from m2: complete.
        let page = history.read(Some(positions[1]), 10);
        assert!(page.complete);
        assert_eq!(texts(&page), ["m2", "m3", "m4"]);
        // After m0, m1 is missing: incomplete, with what is kept.
        let page = history.read(Some(positions[0]), 10);
        assert!(!page.complete);
        assert_eq!(texts(&page), ["m2", "m3", "m4"]);
        // Another epoch, or a position from the future.
        let stranger = Position {
            epoch: positions[0].epoch ^ 1,
            offset: 4,
        };
        assert!(!history.read(Some(stranger), 10).complete);
        let future = Position {
            offset: 99,
            ..positions[4]
        };
        assert!(!history.read(Some(future), 10).complete);
        // At the head: complete, nothing to send.
        let page = history.read(Some(positions[4]), 10);
        assert!(page.complete && page.entries.is_empty());
        // The newest two, oldest first.
        assert_eq!(texts(&history.read(None, 2)), ["m3", "m4"]);
    }

    #[test]
    fn the_apps_bytes_bound_all_its_groups_and_a_message_not_kept_starts_a_new_epoch() {
        // Room for about three 100-byte entries in the whole app.
        let histories = histories(100, 3 * (100 + ENTRY_OVERHEAD));
        let a = histories.of(&group("room:a")).unwrap();
        let b = histories.of(&group("room:b")).unwrap();
        let big = || Message::text("x".repeat(100));
        let mut a = lock(&a);
        let (from, _) = a.keep(big());
        for _ in 0..10 {
            a.keep(big());
        }
        assert!(histories.bytes() <= 3 * (100 + ENTRY_OVERHEAD));
        // room:a dropped its oldest for its own; room:b finds no room left.
        assert!(!a.read(Some(from), 100).complete);
        let mut b = lock(&b);
        let (first_b, _) = b.keep(big());
        let (after, _) = b.keep(big());
        assert_ne!(first_b.epoch, b.read(None, 1).head.epoch);
        assert!(!b.read(Some(first_b), 100).complete);
        assert_eq!(after.offset, 1);
        drop(a);
        drop(b);
        assert!(histories.bytes() <= 3 * (100 + ENTRY_OVERHEAD));
    }

    #[test]
    fn past_max_groups_the_least_recent_group_is_dropped_and_its_bytes_given_back() {
        let histories = histories(10, 1 << 20);
        let first = histories.of(&group("room:0")).unwrap();
        let (position, _) = lock(&first).keep(Message::text("old"));
        for n in 1..10 {
            let history = histories.of(&group(&format!("room:{n}"))).unwrap();
            lock(&history).keep(Message::text("new"));
        }
        assert_eq!(histories.groups(), 3);
        let again = histories.of(&group("room:0")).unwrap();
        assert!(!lock(&again).read(Some(position), 10).complete);
        drop((first, again));
        assert!(histories.bytes() <= 3 * (3 + ENTRY_OVERHEAD));
    }

    #[test]
    fn a_page_of_kept_entries_reaches_back_exactly_as_far_as_they_go() {
        let head = Position {
            epoch: 5,
            offset: 7,
        };
        let entries = |from: u64| -> Vec<Kept> {
            (from..=7)
                .map(|offset| Kept {
                    position: Position { epoch: 5, offset },
                    message: Message::text(format!("m{offset}")),
                })
                .collect()
        };
        let at = |offset| Some(Position { epoch: 5, offset });
        let page = page_of(entries(4), head, at(3), 10);
        assert!(page.complete);
        assert_eq!(texts(&page), ["m4", "m5", "m6", "m7"]);
        assert!(!page_of(entries(4), head, at(2), 10).complete);
        assert!(!page_of(entries(4), head, at(8), 10).complete);
        let stranger = Some(Position {
            epoch: 6,
            offset: 5,
        });
        assert!(!page_of(entries(4), head, stranger, 10).complete);
        assert_eq!(texts(&page_of(entries(4), head, None, 2)), ["m6", "m7"]);
        // Nothing kept at all: only "before anything" reaches back.
        let nothing = page_of(
            Vec::new(),
            Position::default(),
            Some(Position::default()),
            10,
        );
        assert!(nothing.complete && nothing.entries.is_empty());
        assert!(!page_of(Vec::new(), Position::default(), at(3), 10).complete);
    }

    #[test]
    fn a_join_reads_all_it_missed_beyond_a_flows_read_cap() {
        let histories = histories(5000, 64 << 20);
        let history = histories.of(&group("room:a")).unwrap();
        let mut history = lock(&history);
        let (first, _) = history.keep(Message::text("0"));
        for n in 1..3000 {
            history.keep(Message::text(n.to_string()));
        }
        let page = history.read(Some(first), usize::MAX);
        assert!(page.complete);
        assert_eq!(page.entries.len(), 2999);
        assert_eq!(page.entries.last().unwrap().position, page.head);
    }

    #[test]
    fn messages_past_their_ttl_are_dropped() {
        let mut short = rule(10);
        short.ttl = Duration::from_millis(1);
        let histories = Histories::new(vec![short], &AppLimits::default());
        let history = histories.of(&group("room:a")).unwrap();
        let mut history = lock(&history);
        let (first, _) = history.keep(Message::text("a"));
        std::thread::sleep(Duration::from_millis(5));
        let page = history.read(Some(Position { offset: 0, ..first }), 10);
        assert!(!page.complete);
        assert!(page.entries.is_empty());
        assert_eq!(histories.bytes(), 0);
        // After the last message nothing is missing.
        assert!(history.read(Some(first), 10).complete);
    }
}
