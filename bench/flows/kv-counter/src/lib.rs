//! A key-value read and write per message (`bench/run.sh work`): each
//! message increments `count:ID` (ID: the connection's id) in the store
//! `default`, reads the key back and replies with its value, the number of
//! messages the connection has sent so far. Data mode.
//!
//! `native-work --work sqlite` and `--work jetstream` do the same work in a
//! plain tokio server, for comparison.

use wsflow_sdk::kv::Store;
use wsflow_sdk::{Connection, Event, Flow};

struct KvCounter;

impl Flow for KvCounter {
    fn handle(_event: Event, conn: &Connection) -> wsflow_sdk::Result {
        let store = Store::open("default")?;
        let key = format!("count:{}", conn.id());
        store.increment(&key, 1)?;
        let count = store.get(&key)?.ok_or_else(|| {
            wsflow_sdk::Error::msg(format!("{key} has no value after its increment"))
        })?;
        conn.send_text(&String::from_utf8_lossy(&count))?;
        Ok(())
    }
}

wsflow_sdk::export!(KvCounter);
