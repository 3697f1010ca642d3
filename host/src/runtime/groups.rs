//! The WIT `groups` interface: what a flow asks of its app's hub, checked
//! and converted here, decided in [`crate::hub`].
//!
//! The connection a flow names (`borrow<connection>`) comes from the
//! execution's own resource table, so a flow can only join, leave or
//! attach data for the connection it serves; everything else it names by
//! group or id is looked up in its own app's hub only.

use std::sync::Arc;

use tokio_tungstenite::tungstenite;
use wasmtime::component::Resource;

use super::bindings::Message;
use super::bindings::wsflow::flow::groups::{self as wit, GroupError, Member};
use super::connection::{ConnectionShared, HostConnection, into_ws_message};
use super::ctx::FlowCtx;
use crate::close::Close;
use crate::hub::{
    ConnectionId, Delivery, Fanout, GroupName, HubError, MAX_LISTED_MEMBERS, Outlet, Pending,
};

impl From<HubError> for GroupError {
    fn from(error: HubError) -> Self {
        match error {
            HubError::InvalidName => GroupError::InvalidName,
            HubError::NotFound => GroupError::NotFound,
            HubError::TooLarge => GroupError::TooLarge,
            HubError::TooManyGroups => GroupError::TooManyGroups,
            HubError::GroupFull => GroupError::GroupFull,
            HubError::TooManyToList => GroupError::TooManyToList,
            HubError::Closed => GroupError::Closed,
            HubError::Unavailable => GroupError::Unavailable,
        }
    }
}

/// A local connection as its app's hub sees it.
impl Outlet for Arc<ConnectionShared> {
    fn id(&self) -> ConnectionId {
        self.id
    }

    fn try_send(&self, message: tungstenite::Message) -> Delivery {
        ConnectionShared::try_send(self, message)
    }

    fn is_closed(&self) -> bool {
        ConnectionShared::is_closed(self)
    }

    fn close(&self, close: Close) -> bool {
        // Never waits: the writer delivers what was queued before the
        // close, within `slow_client_timeout`, then the close frame.
        ConnectionShared::close(self, close)
    }
}

impl FlowCtx {
    /// The id of the connection behind `conn`, a handle of this execution.
    fn connection_id(&self, conn: &Resource<HostConnection>) -> wasmtime::Result<ConnectionId> {
        Ok(self.table.get(conn)?.shared().id)
    }

    /// Wait for the hub's answer. Time spent waiting on other hosts is not
    /// the flow's CPU time (the execution is not polled meanwhile); work the
    /// local hub does is.
    async fn hub_answer<T>(&mut self, pending: Pending<'_, T>) -> Result<T, HubError> {
        pending.await
    }

    /// Publish for this execution: counted, and once members were woken
    /// this flow lets them write before it goes on, so a burst of
    /// publishes does not outrun them on a busy host (their time is not
    /// this flow's: it is not polled meanwhile). `groups.publish` and
    /// `history.publish` both go here.
    pub(super) async fn publish_counted(
        &mut self,
        group: &GroupName,
        message: tungstenite::Message,
        except: Option<ConnectionId>,
    ) -> Result<Fanout, HubError> {
        let fanout = self.app.hub.publish(group, message, except).await?;
        self.app.count_fanout(fanout);
        if fanout.delivered > 0 {
            tokio::task::yield_now().await;
        }
        Ok(fanout)
    }
}

/// The `groups` capability (`wsflow:flow/groups`): the app's own hub.
pub(super) const CAPABILITY: super::capabilities::Capability = super::capabilities::Capability {
    name: "groups",
    add_to_linker: |linker| {
        wit::add_to_linker::<_, wasmtime::component::HasSelf<FlowCtx>>(linker, |ctx| ctx)
    },
};

impl wit::Host for FlowCtx {
    async fn join(
        &mut self,
        conn: Resource<HostConnection>,
        group: String,
    ) -> wasmtime::Result<Result<(), GroupError>> {
        let id = self.connection_id(&conn)?;
        let group = match GroupName::parse(&group) {
            Ok(group) => group,
            Err(error) => return Ok(Err(error.into())),
        };
        let hub = Arc::clone(&self.app.hub);
        Ok(self
            .hub_answer(hub.join(id, group))
            .await
            .map_err(Into::into))
    }

    async fn leave(
        &mut self,
        conn: Resource<HostConnection>,
        group: String,
    ) -> wasmtime::Result<Result<(), GroupError>> {
        let id = self.connection_id(&conn)?;
        let group = match GroupName::parse(&group) {
            Ok(group) => group,
            Err(error) => return Ok(Err(error.into())),
        };
        let hub = Arc::clone(&self.app.hub);
        Ok(self
            .hub_answer(hub.leave(id, &group))
            .await
            .map_err(Into::into))
    }

    async fn joined(&mut self, conn: Resource<HostConnection>) -> wasmtime::Result<Vec<String>> {
        let id = self.connection_id(&conn)?;
        Ok(self
            .app
            .hub
            .joined(id)
            .iter()
            .map(|group| group.as_str().to_owned())
            .collect())
    }

    async fn set_attachment(
        &mut self,
        conn: Resource<HostConnection>,
        attachment: Vec<u8>,
    ) -> wasmtime::Result<Result<(), GroupError>> {
        let id = self.connection_id(&conn)?;
        Ok(self
            .app
            .hub
            .set_attachment(id, attachment.into())
            .map_err(Into::into))
    }

    async fn attachment(&mut self, conn: Resource<HostConnection>) -> wasmtime::Result<Vec<u8>> {
        let id = self.connection_id(&conn)?;
        // The connection is attached while any execution serves it.
        Ok(self
            .app
            .hub
            .attachment(id)
            .map(|bytes| bytes.to_vec())
            .unwrap_or_default())
    }

    async fn publish(
        &mut self,
        group: String,
        msg: Message,
        except: Option<u64>,
    ) -> wasmtime::Result<Result<(), GroupError>> {
        let group = match GroupName::parse(&group) {
            Ok(group) => group,
            Err(error) => return Ok(Err(error.into())),
        };
        // Encoded once; every member's queue gets a reference to it.
        let message = into_ws_message(msg);
        let fanout = match self.publish_counted(&group, message, except).await {
            Ok(fanout) => fanout,
            Err(error) => return Ok(Err(error.into())),
        };
        if fanout.unreached {
            // This host's members have it; the other hosts' do not.
            return Ok(Err(GroupError::Unavailable));
        }
        Ok(Ok(()))
    }

    async fn send_to(&mut self, id: u64, msg: Message) -> wasmtime::Result<Result<(), GroupError>> {
        let message = into_ws_message(msg);
        let hub = Arc::clone(&self.app.hub);
        let fanout = match self.hub_answer(hub.send_to(id, message)).await {
            Ok(fanout) => fanout,
            Err(error) => return Ok(Err(error.into())),
        };
        self.app.count_fanout(fanout);
        Ok(Ok(()))
    }

    async fn member_count(&mut self, group: String) -> wasmtime::Result<Result<u32, GroupError>> {
        let group = match GroupName::parse(&group) {
            Ok(group) => group,
            Err(error) => return Ok(Err(error.into())),
        };
        let hub = Arc::clone(&self.app.hub);
        Ok(self
            .hub_answer(hub.member_count(&group))
            .await
            .map_err(Into::into))
    }

    async fn members(
        &mut self,
        group: String,
    ) -> wasmtime::Result<Result<Vec<Member>, GroupError>> {
        let group = match GroupName::parse(&group) {
            Ok(group) => group,
            Err(error) => return Ok(Err(error.into())),
        };
        let hub = Arc::clone(&self.app.hub);
        let listed = match self
            .hub_answer(hub.members(&group, MAX_LISTED_MEMBERS))
            .await
        {
            Ok(listed) => listed,
            Err(error) => return Ok(Err(error.into())),
        };
        Ok(Ok(listed
            .into_iter()
            .map(|member| Member {
                id: member.id,
                attachment: member.attachment.to_vec(),
            })
            .collect()))
    }
}
