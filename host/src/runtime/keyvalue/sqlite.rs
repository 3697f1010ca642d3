//! The embedded backend: one SQLite database per app (`DATA_DIR/APP.sqlite3`;
//! the app name is already a plain file name), every store of the app a
//! keyspace (the `store` column) of its one table.
//!
//! SQLite calls block, so each database has a thread of its own that
//! carries out the app's operations one at a time; the capability awaits
//! the answer without being polled, so the wait is wall time, not the
//! flow's CPU time. One thread per app also keeps apps apart: a flow
//! hammering its store queues behind its own app's operations, not
//! another's.
//!
//! Durability: WAL journal with `synchronous = FULL`, so a write is in
//! the WAL file and synced to disk before the flow hears it succeeded; it
//! survives `kill -9` of the host and the loss of power. One host process
//! per data directory: the running quota totals are the process's own.

use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension as _, params};
use tokio::sync::{mpsc, oneshot};

use super::backend::{
    Answer, Backend, KvError, LIST_PAGE, Op, Pending, Quotas, SharedUsage, Usage,
};

/// Operations that may wait for an app's database thread; more wait to be
/// queued (at most one value each, so what waits stays bounded).
const QUEUE: usize = 64;

/// An app's SQLite database, served by its own thread.
#[derive(Debug)]
pub(crate) struct SqliteBackend {
    requests: mpsc::Sender<Request>,
    usage: Arc<SharedUsage>,
}

struct Request {
    store: String,
    op: Op,
    answer: oneshot::Sender<Result<Answer, KvError>>,
}

impl SqliteBackend {
    /// Open (or create) the database at `path` — in memory if `None` —
    /// and start its thread, named after `app`. Blocks: call it off the
    /// async workers.
    pub(crate) fn open(app: &str, path: Option<&Path>, quotas: Quotas) -> anyhow::Result<Self> {
        let conn = match path {
            Some(path) => Connection::open(path)?,
            None => Connection::open_in_memory()?,
        };
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS entries (
                store TEXT NOT NULL,
                key TEXT NOT NULL,
                value BLOB NOT NULL,
                PRIMARY KEY (store, key)
            ) WITHOUT ROWID",
        )?;
        let usage = conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(length(CAST(key AS BLOB)) + length(value)), 0)
             FROM entries",
            [],
            |row| {
                Ok(Usage {
                    keys: row.get::<_, i64>(0)? as u64,
                    bytes: row.get::<_, i64>(1)? as u64,
                })
            },
        )?;
        let shared = Arc::new(SharedUsage::default());
        shared.store(usage);
        let (requests, queue) = mpsc::channel(QUEUE);
        let database = Database {
            conn,
            quotas,
            usage,
            shared: Arc::clone(&shared),
        };
        std::thread::Builder::new()
            .name(format!("kv {app}"))
            .spawn(move || database.serve(queue))?;
        Ok(Self {
            requests,
            usage: shared,
        })
    }
}

impl Backend for SqliteBackend {
    fn run(&self, store: &str, op: Op) -> Pending {
        let requests = self.requests.clone();
        let store = store.to_owned();
        Box::pin(async move {
            let (answer, answered) = oneshot::channel();
            let request = Request { store, op, answer };
            let closed = || KvError::Unavailable("the app's database is closed".into());
            requests.send(request).await.map_err(|_| closed())?;
            answered.await.map_err(|_| closed())?
        })
    }

    fn usage(&self) -> Arc<SharedUsage> {
        Arc::clone(&self.usage)
    }
}

/// The database thread's state: the connection and the app's usage,
/// exact because this thread is the database's only writer.
struct Database {
    conn: Connection,
    quotas: Quotas,
    usage: Usage,
    shared: Arc<SharedUsage>,
}

impl Database {
    /// Answer requests until every sender is gone (the app is unloaded).
    fn serve(mut self, mut queue: mpsc::Receiver<Request>) {
        while let Some(request) = queue.blocking_recv() {
            let answer = self
                .apply(&request.store, request.op)
                .map_err(|error| match error {
                    Failure::Kv(error) => error,
                    Failure::Sqlite(error) => {
                        tracing::error!("key-value store `{}`: {error}", request.store);
                        KvError::Unavailable("the database failed; the host's log says why".into())
                    }
                });
            self.shared.store(self.usage);
            // The flow may have stopped waiting (a limit ended it).
            let _ = request.answer.send(answer);
        }
    }

    fn apply(&mut self, store: &str, op: Op) -> Result<Answer, Failure> {
        match op {
            Op::Get(key) => Ok(Answer::Value(self.get(store, &key)?)),
            Op::Exists(key) => Ok(Answer::Exists(self.size(store, &key)?.is_some())),
            Op::Set(key, value) => {
                self.set(store, &key, &value)?;
                Ok(Answer::Done)
            }
            Op::Delete(key) => {
                self.delete(store, &key)?;
                Ok(Answer::Done)
            }
            Op::ListKeys(cursor) => self.list_keys(store, cursor),
            Op::Increment(key, delta) => self.increment(store, &key, delta),
            Op::CompareAndSwap { key, expected, new } => {
                self.compare_and_swap(store, &key, expected.as_deref(), &new)
            }
            Op::GetMany(keys) => keys
                .into_iter()
                .map(|key| Ok(self.get(store, &key)?.map(|value| (key, value))))
                .collect::<Result<_, Failure>>()
                .map(Answer::Values),
            Op::SetMany(entries) => {
                // One transaction, one sync: what was set before an error
                // stays set, as `wasi:keyvalue/batch` allows.
                self.in_one_transaction(&entries, |this, (key, value)| this.set(store, key, value))
            }
            Op::DeleteMany(keys) => {
                self.in_one_transaction(&keys, |this, key| this.delete(store, key))
            }
        }
    }

    fn get(&self, store: &str, key: &str) -> Result<Option<Vec<u8>>, Failure> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM entries WHERE store = ?1 AND key = ?2")?
            .query_row(params![store, key], |row| row.get(0))
            .optional()?)
    }

    /// The size of the value of `key`, if it has one.
    fn size(&self, store: &str, key: &str) -> Result<Option<usize>, Failure> {
        Ok(self
            .conn
            .prepare_cached("SELECT length(value) FROM entries WHERE store = ?1 AND key = ?2")?
            .query_row(params![store, key], |row| row.get::<_, i64>(0))
            .optional()?
            .map(|size| size as usize))
    }

    /// Set `key` to `value` if the app's quotas allow it.
    /// Run `each` over `items` in one transaction: all of them or, if one
    /// fails, those before it (committed), the usage totals kept in step
    /// with what was committed.
    fn in_one_transaction<T>(
        &mut self,
        items: &[T],
        mut each: impl FnMut(&mut Self, &T) -> Result<(), Failure>,
    ) -> Result<Answer, Failure> {
        let before = self.usage;
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let mut result = Ok(());
        for item in items {
            result = each(self, item);
            if result.is_err() {
                break;
            }
        }
        if let Err(error) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            self.usage = before;
            return Err(error.into());
        }
        result.map(|()| Answer::Done)
    }

    fn set(&mut self, store: &str, key: &str, value: &[u8]) -> Result<(), Failure> {
        let old = self.size(store, key)?;
        let after = Usage {
            keys: self.usage.keys + u64::from(old.is_none()),
            bytes: (self.usage.bytes + Usage::entry(key, value.len()))
                .saturating_sub(old.map_or(0, |old| Usage::entry(key, old))),
        };
        self.quotas
            .check_usage(self.usage, after)
            .map_err(KvError::from)?;
        self.conn
            .prepare_cached(
                "INSERT INTO entries (store, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![store, key, value])?;
        self.usage = after;
        Ok(())
    }

    fn delete(&mut self, store: &str, key: &str) -> Result<(), Failure> {
        let Some(old) = self.size(store, key)? else {
            return Ok(());
        };
        self.conn
            .prepare_cached("DELETE FROM entries WHERE store = ?1 AND key = ?2")?
            .execute(params![store, key])?;
        self.usage.keys = self.usage.keys.saturating_sub(1);
        self.usage.bytes = self.usage.bytes.saturating_sub(Usage::entry(key, old));
        Ok(())
    }

    fn list_keys(&self, store: &str, cursor: Option<u64>) -> Result<Answer, Failure> {
        let offset = cursor.unwrap_or(0);
        let mut statement = self.conn.prepare_cached(
            "SELECT key FROM entries WHERE store = ?1 ORDER BY key LIMIT ?2 OFFSET ?3",
        )?;
        // One more than a page says whether another page follows.
        let keys = statement
            .query_map(params![store, LIST_PAGE as i64 + 1, offset as i64], |row| {
                row.get::<_, String>(0)
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut keys = keys;
        let next = (keys.len() > LIST_PAGE).then(|| {
            keys.truncate(LIST_PAGE);
            offset + LIST_PAGE as u64
        });
        Ok(Answer::Keys(keys, next))
    }

    fn increment(&mut self, store: &str, key: &str, delta: u64) -> Result<Answer, Failure> {
        let current = match self.get(store, key)? {
            None => 0,
            Some(value) => std::str::from_utf8(&value)
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .ok_or_else(|| KvError::NotANumber(key.to_owned()))?,
        };
        let new = current
            .checked_add(delta)
            .ok_or_else(|| KvError::Overflow(key.to_owned()))?;
        self.set(store, key, new.to_string().as_bytes())?;
        Ok(Answer::Number(new))
    }

    fn compare_and_swap(
        &mut self,
        store: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<Answer, Failure> {
        if self.get(store, key)?.as_deref() != expected {
            return Ok(Answer::Swapped(false));
        }
        self.set(store, key, new)?;
        Ok(Answer::Swapped(true))
    }
}

/// An operation's failure: the flow's own (a quota, a bad value) or the
/// database's.
enum Failure {
    Kv(KvError),
    Sqlite(rusqlite::Error),
}

impl From<KvError> for Failure {
    fn from(error: KvError) -> Self {
        Self::Kv(error)
    }
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Self::Sqlite(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas() -> Quotas {
        Quotas {
            key_size: 16,
            value_size: 64,
            bytes: 150,
            keys: 4,
        }
    }

    async fn run(backend: &SqliteBackend, store: &str, op: Op) -> Result<Answer, KvError> {
        backend.run(store, op).await
    }

    #[tokio::test]
    async fn stores_are_keyspaces_and_values_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sqlite3");
        let backend = SqliteBackend::open("app", Some(&path), quotas()).unwrap();
        let set = Op::Set("k".into(), b"one".to_vec());
        assert_eq!(run(&backend, "a", set).await, Ok(Answer::Done));
        let get = || Op::Get("k".into());
        assert_eq!(run(&backend, "b", get()).await, Ok(Answer::Value(None)));
        drop(backend);
        let backend = SqliteBackend::open("app", Some(&path), quotas()).unwrap();
        let value = Answer::Value(Some(b"one".to_vec()));
        assert_eq!(run(&backend, "a", get()).await, Ok(value));
        assert_eq!(backend.usage().load(), Usage { keys: 1, bytes: 4 });
    }

    #[tokio::test]
    async fn increment_and_compare_and_swap() {
        let backend = SqliteBackend::open("app", None, quotas()).unwrap();
        let incr = |delta| Op::Increment("n".into(), delta);
        assert_eq!(run(&backend, "s", incr(2)).await, Ok(Answer::Number(2)));
        assert_eq!(run(&backend, "s", incr(3)).await, Ok(Answer::Number(5)));
        let overflow = run(&backend, "s", incr(u64::MAX)).await;
        assert_eq!(overflow, Err(KvError::Overflow("n".into())));
        let cas = |expected: Option<&[u8]>, new: &[u8]| Op::CompareAndSwap {
            key: "n".into(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.to_vec(),
        };
        assert_eq!(
            run(&backend, "s", cas(Some(b"4"), b"x")).await,
            Ok(Answer::Swapped(false))
        );
        assert_eq!(
            run(&backend, "s", cas(Some(b"5"), b"x")).await,
            Ok(Answer::Swapped(true))
        );
        assert_eq!(
            run(&backend, "s", cas(None, b"y")).await,
            Ok(Answer::Swapped(false))
        );
        let not_a_number = run(&backend, "s", incr(1)).await;
        assert_eq!(not_a_number, Err(KvError::NotANumber("n".into())));
    }

    #[tokio::test]
    async fn totals_are_kept_across_overwrites_and_deletes_and_enforced() {
        let backend = SqliteBackend::open("app", None, quotas()).unwrap();
        for key in ["a", "b", "c", "d"] {
            let set = Op::Set(key.into(), vec![0; 10]);
            assert_eq!(run(&backend, "s", set).await, Ok(Answer::Done));
        }
        let fifth = run(&backend, "s", Op::Set("e".into(), vec![])).await;
        assert!(matches!(fifth, Err(KvError::Quota(_))), "{fifth:?}");
        // Overwriting grows the bytes: 4 x 11 = 44, then 44 - 11 + 61.
        let grow = Op::Set("a".into(), vec![0; 60]);
        assert_eq!(run(&backend, "s", grow).await, Ok(Answer::Done));
        assert_eq!(backend.usage().load(), Usage { keys: 4, bytes: 94 });
        let grow = Op::Set("b".into(), vec![0; 60]);
        assert_eq!(run(&backend, "s", grow).await, Ok(Answer::Done));
        let over = run(&backend, "s", Op::Set("c".into(), vec![0; 60])).await;
        assert!(matches!(over, Err(KvError::Quota(_))), "{over:?}");
        let delete = Op::DeleteMany(vec!["a".into(), "zz".into()]);
        assert_eq!(run(&backend, "s", delete).await, Ok(Answer::Done));
        assert_eq!(backend.usage().load(), Usage { keys: 3, bytes: 83 });
    }

    #[tokio::test]
    async fn keys_are_listed_in_pages() {
        let quotas = Quotas {
            keys: 5000,
            bytes: 1 << 20,
            ..quotas()
        };
        let backend = SqliteBackend::open("app", None, quotas).unwrap();
        let entries = (0..LIST_PAGE + 5)
            .map(|i| (format!("k{i:05}"), Vec::new()))
            .collect();
        assert_eq!(
            run(&backend, "s", Op::SetMany(entries)).await,
            Ok(Answer::Done)
        );
        let Ok(Answer::Keys(first, Some(cursor))) = run(&backend, "s", Op::ListKeys(None)).await
        else {
            panic!("a first page with a cursor")
        };
        assert_eq!(first.len(), LIST_PAGE);
        let rest = run(&backend, "s", Op::ListKeys(Some(cursor))).await;
        let Ok(Answer::Keys(rest, None)) = rest else {
            panic!("a last page: {rest:?}")
        };
        assert_eq!(rest.len(), 5);
        assert_eq!(rest[0], format!("k{LIST_PAGE:05}"));
    }
}
