//! What crosses the broker: subjects scoped by app, the headers that say
//! what a message is, and the one binary body (a member listing).
//!
//! ```text
//! wsflow.app.APP.group.GROUP        a publish to GROUP; every host of APP subscribes to
//!                                   `group.*`, and it is sent only while a host holds GROUP
//! wsflow.app.APP.host.HOST          a request to one host: send to a connection, count, list,
//!                                   the groups a host holds and their changes
//! wsflow.app.APP.reply.HOST.Q.PEER  PEER's answer to HOST's request Q
//! wsflow.app.APP.hosts              hello / here / bye: which hosts serve APP
//! wsflow.host.HOST                  the claim on a host id
//! ```
//!
//! APP and GROUP are names turned into one subject token each by
//! [`token`], so no name can reach into another app's subjects or hold a
//! wildcard; HOST, Q and PEER are decimal numbers.

use std::fmt::Write as _;

use async_nats::{HeaderMap, Subject};
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};

use crate::hub::{ConnectionId, GroupName, HostId, MemberInfo};

/// Header names; values are short ASCII.
pub(super) mod header {
    /// What a request or an announcement asks: see [`super::Op`].
    pub(crate) const OP: &str = "Wsflow-Op";
    /// The host an announcement is from.
    pub(crate) const HOST: &str = "Wsflow-Host";
    /// `text` or `binary`: what kind of WebSocket message the payload is.
    pub(crate) const KIND: &str = "Wsflow-Kind";
    /// A publish's excepted connection id.
    pub(crate) const EXCEPT: &str = "Wsflow-Except";
    /// The connection a `send` or a `close` is for.
    pub(crate) const TO: &str = "Wsflow-To";
    /// A `close`'s close code (its reason is the payload).
    pub(crate) const CODE: &str = "Wsflow-Code";
    /// The group a publish, a `count` or a `members` request is about.
    pub(crate) const GROUP: &str = "Wsflow-Group";
    /// A group message's position in its group's history (`EPOCH:OFFSET`,
    /// the epoch in hex), on a stored message and on its copy for other
    /// hosts.
    pub(crate) const POSITION: &str = "Wsflow-Position";
    /// When a stored group message was kept (milliseconds since 1970, the
    /// storing host's clock), for the `ttl` of its rule.
    pub(crate) const KEPT_AT: &str = "Wsflow-Kept-At";
    /// The stream sequence of the stored message before this one in its
    /// group (0: none), so a read walks back from the group's last.
    pub(crate) const PREVIOUS: &str = "Wsflow-Previous";
    /// How many members a `members` answer may hold.
    pub(crate) const LIMIT: &str = "Wsflow-Limit";
    /// How a request went: see [`super::Outcome`].
    pub(crate) const OUTCOME: &str = "Wsflow-Outcome";
    /// Set on every part of an answer but the last.
    pub(crate) const MORE: &str = "Wsflow-More";
}

/// `name` as one subject token: ASCII letters, digits, `-` and `_` stay,
/// every other byte becomes `~` and two hex digits (`room:42` ->
/// `room~3A42`, `a.b` -> `a~2Eb`). Distinct names give distinct tokens, and
/// a token never holds `.`, `*`, `>` or whitespace.
pub(super) fn token(name: &str) -> String {
    let mut token = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            token.push(char::from(byte));
        } else {
            write!(token, "~{byte:02X}").expect("writing to a String");
        }
    }
    token
}

/// The subject of a host's claim on its id.
pub(super) fn host_claim(host: HostId) -> Subject {
    format!("wsflow.host.{host}").into()
}

/// The subjects of one app.
#[derive(Debug, Clone)]
pub(super) struct Subjects {
    /// `wsflow.app.APP`
    prefix: String,
}

impl Subjects {
    pub(super) fn new(app: &str) -> Self {
        Self {
            prefix: format!("wsflow.app.{}", token(app)),
        }
    }

    pub(super) fn group(&self, group: &GroupName) -> Subject {
        format!("{}.group.{}", self.prefix, token(group.as_str())).into()
    }

    /// Every group of the app: what a host subscribes to.
    pub(super) fn groups(&self) -> Subject {
        format!("{}.group.*", self.prefix).into()
    }

    pub(super) fn hosts(&self) -> Subject {
        format!("{}.hosts", self.prefix).into()
    }

    pub(super) fn host(&self, host: HostId) -> Subject {
        format!("{}.host.{host}", self.prefix).into()
    }

    /// Every answer to `me`'s requests.
    pub(super) fn replies(&self, me: HostId) -> Subject {
        format!("{}.reply.{me}.>", self.prefix).into()
    }

    /// Where `peer` answers `me`'s request `query`.
    pub(super) fn reply(&self, me: HostId, query: u64, peer: HostId) -> Subject {
        format!("{}.reply.{me}.{query}.{peer}", self.prefix).into()
    }

    /// The request and the peer an answer's subject names.
    pub(super) fn parse_reply(subject: &str) -> Option<(u64, HostId)> {
        let mut tokens = subject.rsplit('.');
        let peer = tokens.next()?.parse().ok().and_then(HostId::new)?;
        let query = tokens.next()?.parse().ok()?;
        Some((query, peer))
    }
}

/// What a request or an announcement asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// Announcement: a host starts serving the app (or is back); the
    /// others answer `here`.
    Hello,
    /// Announcement: a host serves the app (every heartbeat).
    Here,
    /// Announcement: a host stops serving the app.
    Bye,
    /// Request: queue a message for one connection.
    Send,
    /// Request: close one connection (after what was queued for it).
    Close,
    /// Request: how many members a group has on the host.
    Count,
    /// Request: the members a group has on the host.
    Members,
    /// Request: is the host there (answered `ok`)? For a silent host.
    Ping,
    /// Request: send me the groups you hold members in (as `groups`
    /// requests, in parts).
    AskGroups,
    /// Request: one part of the groups the sender holds members in, one
    /// name a line; the last part has no `Wsflow-More`.
    Groups,
    /// Request: the groups the sender holds members in changed (`+GROUP`,
    /// `-GROUP`, one a line); answered once applied.
    GroupsChanged,
}

impl Op {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Here => "here",
            Self::Bye => "bye",
            Self::Send => "send",
            Self::Close => "close",
            Self::Count => "count",
            Self::Members => "members",
            Self::Ping => "ping",
            Self::AskGroups => "ask-groups",
            Self::Groups => "groups",
            Self::GroupsChanged => "groups-changed",
        }
    }

    fn parse(op: &str) -> Option<Self> {
        [
            Self::Hello,
            Self::Here,
            Self::Bye,
            Self::Send,
            Self::Close,
            Self::Count,
            Self::Members,
            Self::Ping,
            Self::AskGroups,
            Self::Groups,
            Self::GroupsChanged,
        ]
        .into_iter()
        .find(|known| known.as_str() == op)
    }
}

/// How a request went, beside its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Ok,
    NotFound,
    TooLarge,
    TooManyToList,
}

impl Outcome {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NotFound => "not-found",
            Self::TooLarge => "too-large",
            Self::TooManyToList => "too-many-to-list",
        }
    }

    fn parse(outcome: &str) -> Option<Self> {
        [
            Self::Ok,
            Self::NotFound,
            Self::TooLarge,
            Self::TooManyToList,
        ]
        .into_iter()
        .find(|known| known.as_str() == outcome)
    }
}

/// Read header `name` of a message's headers.
pub(super) fn get<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|value| value.as_str())
}

pub(super) fn op(headers: Option<&HeaderMap>) -> Option<Op> {
    get(headers, header::OP).and_then(Op::parse)
}

pub(super) fn outcome(headers: Option<&HeaderMap>) -> Option<Outcome> {
    get(headers, header::OUTCOME).and_then(Outcome::parse)
}

pub(super) fn number<T: std::str::FromStr>(headers: Option<&HeaderMap>, name: &str) -> Option<T> {
    get(headers, name)?.parse().ok()
}

/// Headers for `op`.
pub(super) fn headers(op: Op) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::OP, op.as_str());
    headers
}

/// The bytes `headers` take on the wire, which count against the broker's
/// `max_payload` with the payload: `NATS/1.0`, `Name: value` each, and
/// the line ends.
pub(super) fn headers_len(headers: &HeaderMap) -> usize {
    let mut len = "NATS/1.0\r\n\r\n".len();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        for value in values {
            len += name.len() + ": \r\n".len() + value.as_str().len();
        }
    }
    len
}

/// A WebSocket message as a payload and the `Wsflow-Kind` it travels with;
/// only data messages travel.
pub(super) fn split(message: Message) -> Option<(&'static str, Bytes)> {
    match message {
        Message::Text(text) => Some(("text", Bytes::from(text))),
        Message::Binary(bytes) => Some(("binary", bytes)),
        _ => None,
    }
}

/// The WebSocket message a payload of `kind` is; text must be UTF-8.
pub(super) fn join(kind: Option<&str>, payload: Bytes) -> Option<Message> {
    match kind? {
        "text" => Utf8Bytes::try_from(payload).ok().map(Message::Text),
        "binary" => Some(Message::Binary(payload)),
        _ => None,
    }
}

/// One member as a listing encodes it: id (8 bytes, big-endian),
/// attachment length (4 bytes, big-endian), attachment.
const MEMBER_HEAD: usize = 12;

/// `members` in parts of at most `budget` bytes each (at least one part,
/// empty for no members); `None` if one member alone does not fit.
pub(super) fn encode_members(members: &[MemberInfo], budget: usize) -> Option<Vec<Bytes>> {
    let mut parts = Vec::new();
    let mut part = Vec::new();
    for member in members {
        let size = MEMBER_HEAD + member.attachment.len();
        if size > budget {
            return None;
        }
        if part.len() + size > budget {
            parts.push(Bytes::from(std::mem::take(&mut part)));
        }
        part.extend_from_slice(&member.id.to_be_bytes());
        let len = u32::try_from(member.attachment.len()).ok()?;
        part.extend_from_slice(&len.to_be_bytes());
        part.extend_from_slice(&member.attachment);
    }
    parts.push(Bytes::from(part));
    Some(parts)
}

/// The members in one part of a listing; `None` if it is malformed.
pub(super) fn decode_members(mut body: &[u8]) -> Option<Vec<MemberInfo>> {
    let mut members = Vec::new();
    while !body.is_empty() {
        let (id, rest) = body.split_first_chunk::<8>()?;
        let (len, rest) = rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        if rest.len() < len {
            return None;
        }
        let (attachment, rest) = rest.split_at(len);
        members.push(MemberInfo {
            id: ConnectionId::from_be_bytes(*id),
            attachment: Bytes::copy_from_slice(attachment),
        });
        body = rest;
    }
    Some(members)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_become_one_safe_token_each_and_stay_distinct() {
        assert_eq!(token("lobby"), "lobby");
        assert_eq!(token("room:42"), "room~3A42");
        assert_eq!(token("a.b"), "a~2Eb");
        assert_eq!(token("user/ann"), "user~2Fann");
        assert_eq!(token("x~2E"), "x~7E2E");
        let names = ["a.b", "a~2Eb", "a:b", "a/b", "a_b", "a-b", "ab", "a~3Ab"];
        let tokens: HashSet<String> = names.iter().map(|name| token(name)).collect();
        assert_eq!(tokens.len(), names.len());
        for name in names {
            let token = token(name);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_~".contains(&b)),
                "{token}"
            );
        }
    }

    #[test]
    fn subjects_are_scoped_by_app_and_answers_name_their_request() {
        let subjects = Subjects::new("chat");
        let group = GroupName::parse("room.1").unwrap();
        assert_eq!(
            subjects.group(&group).as_str(),
            "wsflow.app.chat.group.room~2E1"
        );
        let me = HostId::new(7).unwrap();
        let peer = HostId::new(9).unwrap();
        let reply = subjects.reply(me, 42, peer);
        assert_eq!(reply.as_str(), "wsflow.app.chat.reply.7.42.9");
        assert_eq!(Subjects::parse_reply(&reply), Some((42, peer)));
        assert_eq!(Subjects::parse_reply("wsflow.app.chat.reply.7.x.9"), None);
        assert_eq!(subjects.replies(me).as_str(), "wsflow.app.chat.reply.7.>");
    }

    #[test]
    fn a_listing_survives_the_trip_in_parts_that_fit_the_budget() {
        let members: Vec<MemberInfo> = (1..=50u64)
            .map(|id| MemberInfo {
                id: id << 33 | id,
                attachment: Bytes::from(vec![
                    u8::try_from(id).unwrap();
                    usize::try_from(id).unwrap()
                ]),
            })
            .collect();
        let parts = encode_members(&members, 200).unwrap();
        assert!(parts.len() > 1);
        assert!(parts.iter().all(|part| part.len() <= 200));
        let decoded: Vec<MemberInfo> = parts
            .iter()
            .flat_map(|part| decode_members(part).unwrap())
            .collect();
        assert_eq!(decoded, members);
        assert_eq!(encode_members(&[], 200).unwrap(), [Bytes::new()]);
        assert_eq!(
            encode_members(&members, 40),
            None,
            "member 50 alone is 62 bytes"
        );
        assert_eq!(decode_members(&[0; 11]), None);
        assert_eq!(
            decode_members(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9, 1]),
            None
        );
    }

    #[test]
    fn headers_count_as_the_broker_counts_them() {
        let mut headers = HeaderMap::new();
        assert_eq!(headers_len(&headers), "NATS/1.0\r\n\r\n".len());
        headers.insert(header::KIND, "binary");
        headers.insert(header::EXCEPT, "42");
        assert_eq!(
            headers_len(&headers),
            "NATS/1.0\r\nWsflow-Kind: binary\r\nWsflow-Except: 42\r\n\r\n".len()
        );
    }

    #[test]
    fn data_messages_travel_and_text_stays_text() {
        let (kind, payload) = split(Message::text("hi")).unwrap();
        assert_eq!(join(Some(kind), payload), Some(Message::text("hi")));
        let (kind, payload) = split(Message::binary(vec![0xff])).unwrap();
        assert_eq!(join(Some(kind), payload), Some(Message::binary(vec![0xff])));
        assert_eq!(join(Some("text"), Bytes::from_static(&[0xff])), None);
        assert_eq!(join(None, Bytes::new()), None);
        assert_eq!(split(Message::Ping(Bytes::new())), None);
    }
}
