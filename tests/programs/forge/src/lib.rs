//! On any message: makes connection handles out of integers and sends
//! through them, hoping to reach another connection.

use wsflow_sdk::bindings::wsflow::flow::connection::Connection as RawConnection;
use wsflow_sdk::bindings::wsflow::flow::types::Message;
use wsflow_sdk::{Connection, Event, Flow};

struct Forge;

impl Flow for Forge {
    fn handle(_event: Event, _conn: &Connection) -> wsflow_sdk::Result {
        for handle in [0u32, 2, 3, 7, 100, 1_000_000] {
            #[expect(unsafe_code, reason = "forging a handle is the point of this program")]
            let forged = unsafe { RawConnection::from_handle(handle) };
            let _ = forged.send(&Message::Text("forged".into()));
            std::mem::forget(forged);
        }
        Ok(())
    }
}

wsflow_sdk::export!(Forge);
