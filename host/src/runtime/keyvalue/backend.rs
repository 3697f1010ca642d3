//! What a key-value backend does for the capability: the operations of
//! `wasi:keyvalue` (and compare-and-swap) on one app's stores, within the
//! app's quotas. A backend serves exactly one app: it is opened for that
//! app's data (a database file, a set of buckets) and has no way to name
//! another's, so no store name a flow asks for can reach another app.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::manifest::spec::AppLimits;

/// How many keys [`Op::ListKeys`] returns at most per page.
pub(crate) const LIST_PAGE: usize = 1000;

/// One operation on a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Get(String),
    Set(String, Vec<u8>),
    Delete(String),
    Exists(String),
    /// A page of keys, from the cursor a previous page returned.
    ListKeys(Option<u64>),
    /// Add to the key's value (decimal text of a `u64`; absent: 0).
    Increment(String, u64),
    /// Set the key to `new` if its value is `expected` now.
    CompareAndSwap {
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    },
    GetMany(Vec<String>),
    SetMany(Vec<(String, Vec<u8>)>),
    DeleteMany(Vec<String>),
}

/// What an [`Op`] answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// `Get`.
    Value(Option<Vec<u8>>),
    /// `Set`, `Delete`, `SetMany`, `DeleteMany`.
    Done,
    /// `Exists`.
    Exists(bool),
    /// `ListKeys`: the page, and the cursor of the next one if any.
    Keys(Vec<String>, Option<u64>),
    /// `Increment`: the new value.
    Number(u64),
    /// `CompareAndSwap`: whether it swapped.
    Swapped(bool),
    /// `GetMany`, in the order of the keys asked for.
    Values(Vec<Option<(String, Vec<u8>)>>),
}

/// Why an operation failed. Every one reaches the flow as an error value
/// (`wasi:keyvalue/store.error.other`) with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KvError {
    #[error("{0}")]
    Quota(#[from] QuotaError),
    /// `increment` of a value that is not the decimal text of a `u64`.
    #[error(
        "the value of `{0}` is not a number to increment (decimal text of an unsigned 64-bit integer)"
    )]
    NotANumber(String),
    #[error("incrementing `{0}` would overflow an unsigned 64-bit integer")]
    Overflow(String),
    /// The backend could not do it (I/O, a closed database, ...); the
    /// details are in the host's log.
    #[error("the key-value store is unavailable: {0}")]
    Unavailable(String),
}

/// A write that would take the app over one of its quotas; nothing was
/// written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QuotaError {
    #[error("quota: a key of {size} bytes is over the app's max_kv_key_size of {limit} bytes")]
    KeySize { size: usize, limit: usize },
    #[error("quota: a value of {size} bytes is over the app's max_kv_value_size of {limit} bytes")]
    ValueSize { size: usize, limit: usize },
    #[error(
        "quota: the app's stores would hold {size} bytes, over its max_kv_bytes of {limit} bytes"
    )]
    Bytes { size: u64, limit: u64 },
    #[error("quota: the app's stores would hold {count} keys, over its max_kv_keys of {limit}")]
    Keys { count: u64, limit: u64 },
    /// JetStream: the store's bucket is at the app's `max_kv_bytes`.
    #[error("quota: the store is full: its bucket holds the app's max_kv_bytes of {limit} bytes")]
    StoreFull { limit: u64 },
}

/// The quotas of one app's stores, from its `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Quotas {
    pub(crate) key_size: usize,
    pub(crate) value_size: usize,
    /// Keys and values of all the app's stores together.
    pub(crate) bytes: u64,
    pub(crate) keys: u64,
}

impl Quotas {
    pub(crate) fn of(limits: &AppLimits) -> Self {
        Self {
            key_size: limits.max_kv_key_size,
            value_size: limits.max_kv_value_size,
            bytes: limits.max_kv_bytes as u64,
            keys: limits.max_kv_keys as u64,
        }
    }

    /// Whether `key` may be used at all.
    pub(crate) fn check_key(&self, key: &str) -> Result<(), QuotaError> {
        if key.len() > self.key_size {
            return Err(QuotaError::KeySize {
                size: key.len(),
                limit: self.key_size,
            });
        }
        Ok(())
    }

    /// Whether `key` may hold `value`, on its own.
    pub(crate) fn check_entry(&self, key: &str, value: &[u8]) -> Result<(), QuotaError> {
        self.check_key(key)?;
        if value.len() > self.value_size {
            return Err(QuotaError::ValueSize {
                size: value.len(),
                limit: self.value_size,
            });
        }
        Ok(())
    }

    /// Whether the app's stores may hold `keys` keys of `bytes` bytes
    /// together after a write. A write that shrinks or keeps the usage is
    /// always allowed, so an app over a lowered quota can still delete and
    /// overwrite.
    pub(crate) fn check_usage(&self, before: Usage, after: Usage) -> Result<(), QuotaError> {
        if after.keys > before.keys && after.keys > self.keys {
            return Err(QuotaError::Keys {
                count: after.keys,
                limit: self.keys,
            });
        }
        if after.bytes > before.bytes && after.bytes > self.bytes {
            return Err(QuotaError::Bytes {
                size: after.bytes,
                limit: self.bytes,
            });
        }
        Ok(())
    }

    /// Check what an operation writes that can be checked without the
    /// store: the size of each key and value.
    pub(crate) fn check_op(&self, op: &Op) -> Result<(), QuotaError> {
        match op {
            Op::Get(key) | Op::Delete(key) | Op::Exists(key) | Op::Increment(key, _) => {
                self.check_key(key)
            }
            Op::Set(key, value)
            | Op::CompareAndSwap {
                key, new: value, ..
            } => self.check_entry(key, value),
            Op::ListKeys(_) => Ok(()),
            Op::GetMany(keys) | Op::DeleteMany(keys) => {
                keys.iter().try_for_each(|key| self.check_key(key))
            }
            Op::SetMany(entries) => entries
                .iter()
                .try_for_each(|(key, value)| self.check_entry(key, value)),
        }
    }
}

/// Keys and bytes (keys and values) an app's stores hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) keys: u64,
    pub(crate) bytes: u64,
}

impl Usage {
    /// The bytes an entry takes against `max_kv_bytes`.
    pub(crate) fn entry(key: &str, value_len: usize) -> u64 {
        (key.len() + value_len) as u64
    }
}

/// The last [`Usage`] a backend reported, for `/stats` and `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct SharedUsage {
    keys: AtomicU64,
    bytes: AtomicU64,
}

impl SharedUsage {
    pub(crate) fn store(&self, usage: Usage) {
        self.keys.store(usage.keys, Ordering::Relaxed);
        self.bytes.store(usage.bytes, Ordering::Relaxed);
    }

    pub(crate) fn load(&self) -> Usage {
        Usage {
            keys: self.keys.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// A boxed future of a backend's answer.
pub(crate) type Pending = Pin<Box<dyn Future<Output = Result<Answer, KvError>> + Send>>;

/// Where one app's stores live.
///
/// ```ignore
/// let answer = backend.run("default", Op::Get("topic".into())).await?;
/// ```
pub(crate) trait Backend: Send + Sync + fmt::Debug {
    /// Carry out `op` on the app's store `store` (a name the manifest
    /// declares: the capability checked the grant). The future does not
    /// borrow the backend; waiting on it is not the flow's CPU time.
    fn run(&self, store: &str, op: Op) -> Pending;

    /// What the app's stores hold, as last known.
    fn usage(&self) -> Arc<SharedUsage>;
}
