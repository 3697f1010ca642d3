//! Group history in a cluster: one JetStream stream per app, one subject
//! per group, so every host reads the same history, and it outlives the
//! restart of any host and of the broker with its storage.
//!
//! - The stream of app `A` is `wsflow-hist-LEN-A` (`LEN` the length of
//!   `A`, as the key-value buckets are named), subjects
//!   `wsflow.hist.APP.GROUP` (tokens as [`wire::token`] makes them), file
//!   storage, one replica. Its limits are the app's: per group the largest
//!   `size` of its `[[history]]` (`max_msgs_per_subject`), the largest
//!   `ttl` (`max_age`), `max_history_bytes` for all groups (`max_bytes`),
//!   and `max_history_groups` times the largest size in all (`max_msgs`);
//!   the oldest go first. A rule with a smaller size or ttl is applied
//!   when reading.
//! - Positions are written into the messages, so they mean the same on
//!   every host: each stored message carries its own (`Wsflow-Position`).
//!   A group's next message takes the offset after its last one, written
//!   with "expected last subject sequence": a host that raced another
//!   reads the subject's last message again and retries, so offsets are
//!   exact and consecutive whoever publishes. A group with nothing kept
//!   (never published, all of it aged out, or the stream lost) starts a
//!   new random epoch: a position of the old one reads as incomplete.
//! - Each stored message also carries the stream sequence of the group's
//!   message before it, so a read walks back from the group's last message
//!   (direct gets by sequence) only as far as it needs. Messages only ever
//!   leave a subject oldest first, so what a group keeps is a run of
//!   consecutive offsets, and a read knows exactly whether it reaches back
//!   to a position.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{self, DirectGetErrorKind, DiscardPolicy, StorageType};
use tokio_tungstenite::tungstenite::Message;

use super::wire::{self, header};
use crate::hub::{
    GroupName, HistoryError, HubError, HubResult, Kept, Page, Position, fresh_epoch, page_of, stamp,
};
use crate::manifest::spec::{AppLimits, HistorySpec};

/// How often a publish starts again after another host took the offset
/// it was writing, before it answers `unavailable`.
const ATTEMPTS: usize = 100;

/// How long a read of a group's history may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Groups whose last position this host remembers; beyond, it forgets
/// those not in use (they are read again from the stream).
const REMEMBERED: usize = 10_000;

/// The stream of app `app`.
pub(crate) fn stream_name(app: &str) -> String {
    format!("wsflow-hist-{}-{app}", app.len())
}

/// A group's last stored message, as this host knows it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Last {
    seq: u64,
    position: Position,
}

/// What this host knows of a group's end: `None` until read from the
/// stream; `Some(None)` when the group keeps nothing.
pub(super) type Tail = Option<Option<Last>>;

/// A group's tail, locked while a publish of this host to the group is
/// stored and fanned out: this host's members get its messages in
/// position order.
pub(super) type TailGuard = tokio::sync::OwnedMutexGuard<Tail>;

/// An app's group history in the cluster's JetStream.
pub(super) struct StreamHistory {
    app: Arc<str>,
    rules: Vec<HistorySpec>,
    config: stream::Config,
    /// `wsflow.hist.APP`
    prefix: String,
    context: Context,
    stream: tokio::sync::Mutex<Option<stream::Stream>>,
    tails: Mutex<HashMap<GroupName, Arc<tokio::sync::Mutex<Tail>>>>,
}

impl std::fmt::Debug for StreamHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamHistory")
            .field("stream", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl StreamHistory {
    pub(super) fn new(
        app: &str,
        rules: Vec<HistorySpec>,
        limits: &AppLimits,
        context: Context,
    ) -> Self {
        let prefix = format!("wsflow.hist.{}", wire::token(app));
        let size = rules.iter().map(|rule| rule.size).max().unwrap_or(1);
        let ttl = rules.iter().map(|rule| rule.ttl).max().unwrap_or_default();
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let config = stream::Config {
            name: stream_name(app),
            description: Some(format!("wsflow app `{app}`: group history")),
            subjects: vec![format!("{prefix}.*")],
            storage: StorageType::File,
            num_replicas: 1,
            max_messages_per_subject: as_i64(size),
            max_messages: as_i64(size.saturating_mul(limits.max_history_groups)),
            max_bytes: as_i64(limits.max_history_bytes),
            max_age: ttl,
            discard: DiscardPolicy::Old,
            allow_direct: true,
            ..stream::Config::default()
        };
        Self {
            app: app.into(),
            rules,
            config,
            prefix,
            context,
            stream: tokio::sync::Mutex::new(None),
            tails: Mutex::default(),
        }
    }

    /// The rule that names `group`, if one does.
    pub(super) fn rule(&self, group: &GroupName) -> Option<&HistorySpec> {
        self.rules
            .iter()
            .find(|rule| rule.groups.matches(group.as_str()))
    }

    fn subject(&self, group: &GroupName) -> String {
        format!("{}.{}", self.prefix, wire::token(group.as_str()))
    }

    /// A failure of the broker, logged with its cause chain.
    fn unavailable(&self, what: &str, error: &dyn std::error::Error) -> HubError {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        tracing::warn!(
            app = &*self.app,
            "cluster: group history: {what}: {message}"
        );
        HubError::Unavailable
    }

    /// The app's stream, created or brought to the app's limits the first
    /// time (and again after the broker lost it).
    pub(super) async fn stream(&self) -> HubResult<stream::Stream> {
        let mut stream = self.stream.lock().await;
        if let Some(stream) = &*stream {
            return Ok(stream.clone());
        }
        let name = &self.config.name;
        self.context
            .create_or_update_stream(self.config.clone())
            .await
            .map_err(|error| {
                self.unavailable(
                    &format!(
                        "cannot make stream {name}, where the groups [[history]] names keep \
                         their messages (publishes and reads of them answer `unavailable` until \
                         it can; is JetStream enabled on the NATS server: `nats-server -js`?)"
                    ),
                    &error,
                )
            })?;
        let opened = self
            .context
            .get_stream(name)
            .await
            .map_err(|error| self.unavailable(&format!("open stream {name}"), &error))?;
        *stream = Some(opened.clone());
        Ok(opened)
    }

    async fn forget_stream(&self) {
        *self.stream.lock().await = None;
    }

    /// The tail of `group`, locked: see [`TailGuard`].
    pub(super) async fn lock(&self, group: &GroupName) -> TailGuard {
        let tail = {
            let mut tails = self.tails.lock().expect("not poisoned");
            if tails.len() >= REMEMBERED {
                tails.retain(|_, tail| Arc::strong_count(tail) > 1);
            }
            Arc::clone(tails.entry(group.clone()).or_default())
        };
        tail.lock_owned().await
    }

    /// The last message of `subject`, if it keeps one.
    async fn last_message(
        &self,
        stream: &stream::Stream,
        subject: &str,
    ) -> HubResult<Option<StreamMessage>> {
        match stream.direct_get_last_for_subject(subject).await {
            Ok(message) => Ok(Some(message)),
            Err(error) if error.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(error) => {
                self.forget_stream().await;
                Err(self.unavailable("read a group's last message", &error))
            }
        }
    }

    /// Where `subject` ends, if it keeps a message.
    async fn last(&self, stream: &stream::Stream, subject: &str) -> HubResult<Option<Last>> {
        Ok(self
            .last_message(stream, subject)
            .await?
            .map(|message| last_of(&message)))
    }

    /// Store `message` as `group`'s next (with its position added when
    /// the group's rule says so), `tail` locked; answers the position and
    /// the message as the members are to get it.
    pub(super) async fn append(
        &self,
        group: &GroupName,
        tail: &mut TailGuard,
        message: Message,
    ) -> HubResult<(Position, Message)> {
        let rule = self.rule(group).ok_or(HubError::NotFound)?;
        let subject = self.subject(group);
        for _ in 0..ATTEMPTS {
            let stream = self.stream().await?;
            let last = match **tail {
                Some(last) => last,
                None => {
                    let last = self.last(&stream, &subject).await?;
                    **tail = Some(last);
                    last
                }
            };
            let position = match last {
                Some(last) => Position {
                    offset: last.position.offset + 1,
                    ..last.position
                },
                None => Position {
                    epoch: fresh_epoch(),
                    offset: 1,
                },
            };
            let stamped = match &rule.position_field {
                Some(field) => stamp(message.clone(), field, position),
                None => message.clone(),
            };
            let Some((kind, payload)) = wire::split(stamped.clone()) else {
                return Err(HubError::NotFound);
            };
            let mut headers = HeaderMap::new();
            headers.insert(header::KIND, kind);
            headers.insert(header::POSITION, position.to_string());
            headers.insert(header::KEPT_AT, now_millis().to_string());
            let previous = last.map_or(0, |last| last.seq).to_string();
            headers.insert(header::PREVIOUS, previous.as_str());
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                previous.as_str(),
            );
            let acked = match self
                .context
                .publish_with_headers(subject.clone(), headers, payload)
                .await
            {
                Ok(ack) => ack.await,
                Err(error) => return Err(self.unavailable("store a group message", &error)),
            };
            match acked {
                Ok(ack) => {
                    **tail = Some(Some(Last {
                        seq: ack.sequence,
                        position,
                    }));
                    return Ok((position, stamped));
                }
                // Another host stored the group's next message first.
                Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                    **tail = None;
                }
                // The broker lost the stream: it starts again.
                Err(error) if error.kind() == PublishErrorKind::StreamNotFound => {
                    **tail = None;
                    self.forget_stream().await;
                }
                Err(error) => return Err(self.unavailable("store a group message", &error)),
            }
        }
        tracing::warn!(
            app = &*self.app,
            group = group.as_str(),
            "cluster: group history: {ATTEMPTS} attempts to store a message lost the race to \
             other hosts; answered `unavailable`"
        );
        Err(HubError::Unavailable)
    }

    /// `group`'s kept messages after `since` (the newest `limit` without
    /// it), read from the stream.
    pub(super) async fn read(
        &self,
        group: &GroupName,
        since: Option<Position>,
        limit: usize,
    ) -> Result<Page, HistoryError> {
        let rule = self.rule(group).ok_or(HistoryError::NotKept)?;
        let subject = self.subject(group);
        let mut stream = self.stream().await?;
        let last = match self.last_message(&stream, &subject).await {
            Ok(last) => last,
            // The broker may have lost the stream: it is made again.
            Err(_) => {
                stream = self.stream().await?;
                self.last_message(&stream, &subject).await?
            }
        };
        let Some(last) = last else {
            return Ok(page_of(Vec::new(), Position::default(), since, limit));
        };
        let head = last_of(&last).position;
        // Back from the last message to the one after `since` (without
        // it, to the newest `limit`; from a position this history never
        // had, as far as it goes).
        let back_to = match since {
            None => head.offset.saturating_sub(limit as u64),
            Some(since) if since.epoch == head.epoch && since.offset <= head.offset => since.offset,
            Some(_) => 0,
        };
        let walk = self.walk_back(&stream, last, head, back_to, rule);
        let entries = tokio::time::timeout(READ_TIMEOUT, walk)
            .await
            .map_err(|_| {
                tracing::warn!(
                    app = &*self.app,
                    "cluster: group history: a read took longer than {READ_TIMEOUT:?}"
                );
                HubError::Unavailable
            })??;
        Ok(page_of(entries, head, since, limit))
    }

    /// The messages of a group from `last` back to the one after offset
    /// `back_to`, oldest first, each found by the sequence of the one
    /// before it: the walk stops where the group's history stops (a
    /// message dropped for the stream's limits, or past the rule's `size`
    /// or `ttl`).
    async fn walk_back(
        &self,
        stream: &stream::Stream,
        last: StreamMessage,
        head: Position,
        back_to: u64,
        rule: &HistorySpec,
    ) -> HubResult<Vec<Kept>> {
        let oldest =
            now_millis().saturating_sub(u64::try_from(rule.ttl.as_millis()).unwrap_or(u64::MAX));
        let mut kept = std::collections::VecDeque::new();
        let mut message = last;
        let mut expected = head.offset;
        loop {
            let headers = Some(&message.headers);
            let kept_at: u64 = wire::number(headers, header::KEPT_AT).unwrap_or(0);
            let (Some(position), Some(content)) = (
                position_of(&message.headers),
                wire::join(wire::get(headers, header::KIND), message.payload.clone()),
            ) else {
                break;
            };
            if position.epoch != head.epoch
                || position.offset != expected
                || kept_at < oldest
                || kept.len() >= rule.size
            {
                break;
            }
            kept.push_front(Kept {
                position,
                message: content,
            });
            let previous: u64 = wire::number(headers, header::PREVIOUS).unwrap_or(0);
            if position.offset <= back_to + 1 || previous == 0 {
                break;
            }
            expected -= 1;
            message = match stream.direct_get(previous).await {
                Ok(message) => message,
                // Dropped: the history stops here.
                Err(error) if error.kind() == DirectGetErrorKind::NotFound => break,
                Err(error) => return Err(self.unavailable("read a group's history", &error)),
            };
        }
        Ok(kept.into())
    }
}

/// Where a group ends, from its last stored message.
fn last_of(message: &StreamMessage) -> Last {
    Last {
        seq: message.sequence,
        // Not a message of this host's making: the next starts an epoch
        // of its own.
        position: position_of(&message.headers).unwrap_or(Position {
            epoch: fresh_epoch(),
            offset: 0,
        }),
    }
}

/// The position a stored message carries.
fn position_of(headers: &HeaderMap) -> Option<Position> {
    let (epoch, offset) = headers.get(header::POSITION)?.as_str().split_once(':')?;
    Some(Position {
        epoch: u64::from_str_radix(epoch, 16).ok()?,
        offset: offset.parse().ok()?,
    })
}

/// The position a group message from another host carries, if its group
/// keeps history.
pub(super) fn carried(headers: Option<&HeaderMap>) -> Option<Position> {
    headers.and_then(position_of)
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_travel_in_a_header_and_back() {
        let position = Position {
            epoch: 0xdead_beef,
            offset: 42,
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::POSITION, position.to_string());
        assert_eq!(carried(Some(&headers)), Some(position));
        headers.insert(header::POSITION, "zz:1");
        assert_eq!(carried(Some(&headers)), None);
        assert_eq!(carried(None), None);
    }

    #[test]
    fn streams_of_apps_whose_names_run_together_stay_apart() {
        assert_ne!(stream_name("a-b"), stream_name("a"));
        assert_eq!(stream_name("chat"), "wsflow-hist-4-chat");
    }
}
