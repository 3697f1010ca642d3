//! Key-value state: the stores of your app that the manifest grants this
//! flow, kept by the host past the execution (and past a host restart).
//!
//! ```toml
//! [key_value.stores]
//! default = {}
//!
//! [flows.room]
//! component = "..."
//! key_value_stores = ["default"]
//! ```
//!
//! ```no_run
//! use wsflow_sdk::{kv::Store, Connection, Event, Flow};
//!
//! struct Room;
//!
//! impl Flow for Room {
//!     fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
//!         let store = Store::open("default")?;
//!         // Atomic across every execution of the app.
//!         let messages = store.increment("messages", 1)?;
//!         let topic: Option<String> = store.get_json("topic")?;
//!         conn.send_json(&serde_json::json!({ "messages": messages, "topic": topic }))?;
//!         Ok(())
//!     }
//! }
//!
//! wsflow_sdk::export!(Room);
//! ```
//!
//! Every failure is a value ([`KvError`]): a store the flow was not
//! granted, a write over one of the app's quotas (`max_kv_*` in
//! `[limits]`), a value that is not a number to increment. The raw
//! `wasi:keyvalue` bindings ([`Store::bucket`]) work too, so libraries
//! written against `wasi:keyvalue` can share the store.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::wasi::keyvalue::{atomics, store as raw};
use crate::bindings::wsflow::flow::keyvalue_cas;

/// Why a key-value operation failed.
#[derive(Debug)]
pub enum KvError {
    /// The app declares the store but the manifest does not grant it to
    /// this flow (`[flows.NAME] key_value_stores`).
    NotGranted {
        /// The store asked for.
        store: String,
    },
    /// The app declares no store of that name (`[key_value.stores]`).
    NoSuchStore {
        /// The store asked for.
        store: String,
    },
    /// The host refused or could not do it: a quota, a value that is not
    /// a number to increment, an unavailable store. The message says which.
    Store {
        /// The store.
        store: String,
        /// What the host said.
        message: String,
    },
    /// A value was not the JSON [`Store::get_json`] expected, or could not
    /// be written as JSON.
    Json {
        /// The key.
        key: String,
        /// Why.
        error: serde_json::Error,
    },
}

impl KvError {
    fn from_raw(store: &str, error: raw::Error) -> Self {
        let store = store.to_owned();
        match error {
            raw::Error::AccessDenied => Self::NotGranted { store },
            raw::Error::NoSuchStore => Self::NoSuchStore { store },
            raw::Error::Other(message) => Self::Store { store, message },
        }
    }
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotGranted { store } => write!(
                f,
                "key-value store `{store}` is not granted to this flow: \
                 add it to the flow's `key_value_stores` in the manifest"
            ),
            Self::NoSuchStore { store } => write!(
                f,
                "the app has no key-value store `{store}`: declare it under \
                 [key_value.stores] in the manifest and grant it to the flow"
            ),
            Self::Store { store, message } => write!(f, "key-value store `{store}`: {message}"),
            Self::Json { key, error } => write!(f, "key-value `{key}`: {error}"),
        }
    }
}

impl std::error::Error for KvError {}

/// A key-value store of the app, open for this execution.
pub struct Store {
    name: String,
    bucket: raw::Bucket,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("name", &self.name).finish()
    }
}

impl Store {
    /// Open the store `name`: one of the app's, granted to this flow.
    pub fn open(name: &str) -> Result<Self, KvError> {
        let bucket = raw::open(name).map_err(|error| KvError::from_raw(name, error))?;
        Ok(Self {
            name: name.to_owned(),
            bucket,
        })
    }

    fn error(&self, error: raw::Error) -> KvError {
        KvError::from_raw(&self.name, error)
    }

    /// The value of `key`, if it has one.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.bucket.get(key).map_err(|error| self.error(error))
    }

    /// The value of `key` as JSON of type `T`, if it has one.
    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, KvError> {
        let Some(bytes) = self.get(key)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| KvError::Json {
                key: key.to_owned(),
                error,
            })
    }

    /// Set `key` to `value`. Once this returns `Ok`, the value is on disk.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.bucket
            .set(key, value)
            .map_err(|error| self.error(error))
    }

    /// Set `key` to `value` as JSON.
    pub fn set_json<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), KvError> {
        let bytes = serde_json::to_vec(value).map_err(|error| KvError::Json {
            key: key.to_owned(),
            error,
        })?;
        self.set(key, &bytes)
    }

    /// Remove `key` (nothing happens if it has no value).
    pub fn delete(&self, key: &str) -> Result<(), KvError> {
        self.bucket.delete(key).map_err(|error| self.error(error))
    }

    /// Whether `key` has a value.
    pub fn exists(&self, key: &str) -> Result<bool, KvError> {
        self.bucket.exists(key).map_err(|error| self.error(error))
    }

    /// Add `delta` to the number at `key` (absent: 0) as one atomic step,
    /// and return the new number. The value is the number's decimal text,
    /// so [`Store::get_json`] reads it as a `u64`.
    pub fn increment(&self, key: &str, delta: u64) -> Result<u64, KvError> {
        atomics::increment(&self.bucket, key, delta).map_err(|error| self.error(error))
    }

    /// Set `key` to `new` if its value is `expected` now (`None`: if it
    /// has none), as one atomic step. `Ok(false)`: it was something else
    /// and nothing changed; read it again and retry.
    pub fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, KvError> {
        keyvalue_cas::compare_and_swap(&self.bucket, key, expected, new)
            .map_err(|error| self.error(error))
    }

    /// Every key of the store, in order (page by page).
    pub fn keys(&self) -> Result<Vec<String>, KvError> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .bucket
                .list_keys(cursor)
                .map_err(|error| self.error(error))?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// The raw `wasi:keyvalue` bucket, for the `batch` interface or a
    /// library written against `wasi:keyvalue`.
    pub fn bucket(&self) -> &raw::Bucket {
        &self.bucket
    }
}
