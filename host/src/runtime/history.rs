//! The `history` capability (`wsflow:flow/history`, `wsflow:flow/opening`):
//! the app's group history, kept by its hub ([`crate::hub`]), and what
//! `on_connect` adds to the start of the connection it accepts.
//!
//! Per execution it keeps [`ExecutionOpening`]: in an `on_connect`, what
//! the connection is to be sent first and the groups it joins from a
//! position; the trigger carries them out once the connection is attached
//! ([`crate::trigger`]). Everywhere else `opening` answers
//! `not-connecting`.

use std::sync::Arc;

use tokio_tungstenite::tungstenite;
use wasmtime::component::{HasSelf, Linker, Resource};

use super::bindings::Message;
use super::bindings::wsflow::flow::history::{self as wit, Entry, HistoryError, Page, Position};
use super::bindings::wsflow::flow::opening;
use super::capabilities::Capability;
use super::connection::{HostConnection, into_ws_message};
use super::ctx::FlowCtx;
use crate::hub::{self, GroupName, HubError, MAX_READ};

pub(super) const CAPABILITY: Capability = Capability {
    name: "history",
    add_to_linker,
};

fn add_to_linker(linker: &mut Linker<FlowCtx>) -> wasmtime::Result<()> {
    wit::add_to_linker::<_, HasSelf<FlowCtx>>(linker, |ctx| ctx)?;
    opening::add_to_linker::<_, HasSelf<FlowCtx>>(linker, |ctx| ctx)
}

/// The most messages `opening.send-first` takes for one connection.
const MAX_FIRST: usize = 1000;

/// How the connection an `on_connect` accepts is to start, beyond its
/// decision.
#[derive(Debug, Default)]
pub(crate) struct Start {
    /// Sent before anything else, in this order.
    pub(crate) first: Vec<tungstenite::Message>,
    /// Groups joined from a position, in call order (one entry a group).
    pub(crate) from: Vec<(GroupName, hub::Position)>,
    /// Bytes of `first`, against the connection's outbound queue.
    bytes: usize,
}

/// The `opening` state of one execution: a [`Start`] while it runs
/// `on_connect`, nothing otherwise.
#[derive(Debug, Default)]
pub(crate) struct ExecutionOpening(Option<Start>);

impl ExecutionOpening {
    /// The execution runs `on_connect`: `opening` calls count.
    pub(crate) fn begin(&mut self) {
        self.0 = Some(Start::default());
    }

    /// What the `on_connect` asked for.
    pub(crate) fn take(&mut self) -> Start {
        self.0.take().unwrap_or_default()
    }
}

impl From<hub::HistoryError> for HistoryError {
    fn from(error: hub::HistoryError) -> Self {
        match error {
            hub::HistoryError::NotKept => HistoryError::NotKept,
            hub::HistoryError::QueueFull => HistoryError::QueueFull,
            hub::HistoryError::Hub(error) => error.into(),
        }
    }
}

impl From<HubError> for HistoryError {
    fn from(error: HubError) -> Self {
        match error {
            HubError::InvalidName => HistoryError::InvalidName,
            HubError::TooLarge => HistoryError::TooLarge,
            HubError::TooManyGroups => HistoryError::TooManyGroups,
            HubError::GroupFull => HistoryError::GroupFull,
            HubError::NotFound | HubError::Closed => HistoryError::Closed,
            HubError::Unavailable | HubError::TooManyToList => HistoryError::Unavailable,
        }
    }
}

fn to_wit(position: hub::Position) -> Position {
    Position {
        epoch: position.epoch,
        offset: position.offset,
    }
}

fn from_wit(position: Position) -> hub::Position {
    hub::Position {
        epoch: position.epoch,
        offset: position.offset,
    }
}

fn group_name(group: &str) -> Result<GroupName, HistoryError> {
    GroupName::parse(group).map_err(Into::into)
}

/// The WIT form of a kept message.
fn entry(kept: hub::Kept) -> Entry {
    let msg = match kept.message {
        tungstenite::Message::Binary(bytes) => Message::Binary(bytes.to_vec()),
        other => Message::Text(other.into_text().map(|t| t.to_string()).unwrap_or_default()),
    };
    Entry {
        position: to_wit(kept.position),
        msg,
    }
}

impl wit::Host for FlowCtx {
    async fn publish(
        &mut self,
        group: String,
        msg: Message,
        except: Option<u64>,
    ) -> wasmtime::Result<Result<Option<Position>, HistoryError>> {
        let group = match group_name(&group) {
            Ok(group) => group,
            Err(error) => return Ok(Err(error)),
        };
        let fanout = match self
            .publish_counted(&group, into_ws_message(msg), except)
            .await
        {
            Ok(fanout) => fanout,
            Err(error) => return Ok(Err(error.into())),
        };
        Ok(Ok(fanout.position.map(to_wit)))
    }

    async fn read(
        &mut self,
        group: String,
        since: Option<Position>,
        limit: u32,
    ) -> wasmtime::Result<Result<Page, HistoryError>> {
        let group = match group_name(&group) {
            Ok(group) => group,
            Err(error) => return Ok(Err(error)),
        };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(MAX_READ);
        let page = match self
            .app
            .hub
            .read_history(&group, since.map(from_wit), limit)
            .await
        {
            Ok(page) => page,
            Err(error) => return Ok(Err(error.into())),
        };
        Ok(Ok(Page {
            entries: page.entries.into_iter().map(entry).collect(),
            complete: page.complete,
            head: to_wit(page.head),
        }))
    }

    async fn join_from(
        &mut self,
        conn: Resource<HostConnection>,
        group: String,
        since: Position,
    ) -> wasmtime::Result<Result<bool, HistoryError>> {
        let id = self.table.get(&conn)?.shared().id;
        let group = match group_name(&group) {
            Ok(group) => group,
            Err(error) => return Ok(Err(error)),
        };
        let hub = Arc::clone(&self.app.hub);
        Ok(hub
            .join_from(id, group, from_wit(since))
            .await
            .map_err(Into::into))
    }
}

impl opening::Host for FlowCtx {
    async fn send_first(&mut self, msg: Message) -> wasmtime::Result<Result<(), HistoryError>> {
        let largest = self.app.largest_message.get();
        let queue = self.app.limits.queue_per_connection;
        let Some(start) = &mut self.opening.0 else {
            return Ok(Err(HistoryError::NotConnecting));
        };
        let message = into_ws_message(msg);
        if message.len() > largest {
            return Ok(Err(HistoryError::TooLarge));
        }
        let bytes = start.bytes + super::Outbound::cost(message.len());
        if start.first.len() >= MAX_FIRST || bytes > queue {
            return Ok(Err(HistoryError::QueueFull));
        }
        start.bytes = bytes;
        start.first.push(message);
        Ok(Ok(()))
    }

    async fn join_from(
        &mut self,
        group: String,
        since: Position,
    ) -> wasmtime::Result<Result<(), HistoryError>> {
        let max_groups = self.app.limits.max_groups_per_connection;
        if self.opening.0.is_none() {
            return Ok(Err(HistoryError::NotConnecting));
        }
        let group = match group_name(&group) {
            Ok(group) => group,
            Err(error) => return Ok(Err(error)),
        };
        // A group that keeps no history is the flow's mistake now, not
        // the connection's failure later.
        if !self.app.hub.keeps(&group) {
            return Ok(Err(HistoryError::NotKept));
        }
        let start = self.opening.0.as_mut().expect("checked above");
        let since = from_wit(since);
        let joined = start.from.len();
        match start.from.iter_mut().find(|(name, _)| *name == group) {
            Some((_, from)) => *from = since,
            None if joined >= max_groups => return Ok(Err(HistoryError::TooManyGroups)),
            None => start.from.push((group, since)),
        }
        Ok(Ok(()))
    }
}
