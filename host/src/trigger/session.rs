//! Connection mode: one flow execution per connection. The flow receives
//! and sends through its handle; when it returns, the host closes.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Handler, report};
use crate::close::Close;
use crate::runtime::bindings::Event;
use crate::runtime::connection::Inbound;
use crate::runtime::{ConnectionShared, HostConnection, Lifetime};

/// Run the connection's flow to its end. Returns the close to send.
pub(super) async fn run(
    handler: &Handler,
    shared: &Arc<ConnectionShared>,
    inbound: Inbound,
    event: Event,
    shutdown: &CancellationToken,
) -> Option<Close> {
    let connection = HostConnection::new(Arc::clone(shared), Some(inbound));
    // The version current now serves the whole connection, across reloads.
    let flow = handler.flow();
    let execution = flow.execute(&event, connection, Lifetime::Connection);
    tokio::pin!(execution);
    let outcome = tokio::select! {
        finished = &mut execution => finished,
        () = shutdown.cancelled() => {
            // Tell the client; its close reply ends the flow's `receive`.
            shared.close(Close::GOING_AWAY);
            execution.await
        }
    };
    Some(report(handler, shared, outcome).unwrap_or(Close::NORMAL))
}
