//! On any message: replies with what the sandbox lets the flow see — its
//! environment, a few files, the network — as JSON. A message that is a
//! socket address (`127.0.0.1:PORT`) names where to try to connect.

use serde_json::json;
use wsflow_sdk::{Connection, Event, Flow};

struct Probe;

fn read(path: &str) -> serde_json::Value {
    match std::fs::read_to_string(path) {
        Ok(text) => json!({ "ok": text }),
        Err(error) => json!({ "error": error.kind().to_string() }),
    }
}

impl Flow for Probe {
    fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
        let env: serde_json::Map<String, serde_json::Value> =
            std::env::vars().map(|(k, v)| (k, json!(v))).collect();
        let target = event
            .text()
            .and_then(|text| text.parse::<std::net::SocketAddr>().ok())
            .unwrap_or_else(|| ([127, 0, 0, 1], 9).into());
        let network = match std::net::TcpStream::connect(target) {
            Ok(_) => "connected".to_owned(),
            Err(error) => error.kind().to_string(),
        };
        conn.send_json(&json!({
            "env": env,
            "etc_hostname": read("/etc/hostname"),
            "granted": read("/data/hello.txt"),
            "escape": read("/data/../etc/hostname"),
            "network": network,
        }))
    }
}

wsflow_sdk::export!(Probe);
