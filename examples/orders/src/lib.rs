//! Orders: a data-mode flow for JSON messages. The handler declares typed
//! query parameters and a header and checks every message against an
//! app-level JSON schema before the flow runs, so the flow only ever sees
//! valid orders.
//!
//! Build and run (from the repository root):
//!
//! ```text
//! cargo run -p wsflow -- up examples/orders/wsflow.toml
//! ```
//!
//! Then connect to `ws://127.0.0.1:9998/orders/eu?user=ann&priority=2&tag=gift&tag=rush`
//! and send `{"item": "tea", "qty": 2}`; the reply is
//! `{"region":"eu","user":"ann","priority":2.0,"tags":["gift","rush"],"item":"tea","qty":2}`.
//! A request without `user` is refused with HTTP 400; a message that breaks
//! the schema closes the connection with 1007.

use serde::{Deserialize, Serialize};
use wsflow_sdk::{Connection, Event, Flow};

/// A message, as the schema in `order.schema.json` guarantees it.
#[derive(Deserialize)]
struct Order {
    item: String,
    qty: u32,
}

#[derive(Serialize)]
struct Accepted {
    region: String,
    user: String,
    priority: Option<f64>,
    tags: Vec<String>,
    item: String,
    qty: u32,
}

struct Orders;

impl Flow for Orders {
    fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
        let order: Order = event.json()?;
        let accepted = Accepted {
            region: event.path_param("region")?,
            user: event.query_param("user")?,
            priority: event.query_param("priority")?,
            tags: event.query_param("tag")?,
            item: order.item,
            qty: order.qty,
        };
        if let Some(client) = event.header::<Option<String>>("X-Client")? {
            wsflow_sdk::debug!("order from client {client}");
        }
        conn.send_json(&accepted)
    }
}

wsflow_sdk::export!(Orders);
