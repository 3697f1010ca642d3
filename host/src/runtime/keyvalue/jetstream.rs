//! The cluster backend (`wsflow up --cluster`): NATS JetStream key-value,
//! one bucket per app and store, so every host of the cluster sees the same
//! data. The bucket of store `S` of app `A` is `wsflow-LEN-A-S`, with `LEN`
//! the length of `A`: app and store names may both hold `-` and `_`, and
//! the length keeps `a-b`/`c` apart from `a`/`b-c`. Keys are any string to
//! a flow and base64url (prefixed `k`) to NATS, whose keys are restricted.
//!
//! - Atomic operations go by revision: `increment` and `compare-and-swap`
//!   read the entry and its revision and write with "expected last
//!   revision"; a write by another host in between fails it and the
//!   operation starts again.
//! - Consistency: a write is acknowledged once the JetStream server stored
//!   it, and every read goes to the server (no cache), so a reader on any
//!   host sees a write as soon as the writer was told it succeeded.
//! - Quotas: key and value sizes are checked on the host; the bytes quota
//!   (`max_kv_bytes`) is each bucket's `max_bytes`, enforced by the server
//!   (so per store in a cluster, against the stream's own byte count);
//!   `max_kv_keys` is not enforced on this backend.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::StreamExt as _;

use super::backend::{
    Answer, Backend, KvError, LIST_PAGE, Op, Pending, QuotaError, Quotas, SharedUsage,
};

/// How often an atomic operation starts again after losing a race before
/// it gives up (`unavailable`).
const ATTEMPTS: usize = 100;

/// An app's buckets in the cluster's JetStream.
#[derive(Debug, Clone)]
pub(crate) struct JetStreamBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    app: Arc<str>,
    context: jetstream::Context,
    quotas: Quotas,
    /// Buckets opened so far, by store name.
    buckets: tokio::sync::Mutex<HashMap<String, kv::Store>>,
    usage: Arc<SharedUsage>,
}

impl JetStreamBackend {
    pub(crate) fn new(app: &str, context: jetstream::Context, quotas: Quotas) -> Self {
        Self {
            inner: Arc::new(Inner {
                app: app.into(),
                context,
                quotas,
                buckets: tokio::sync::Mutex::new(HashMap::new()),
                usage: Arc::new(SharedUsage::default()),
            }),
        }
    }
}

/// The bucket of store `store` of app `app`.
pub(crate) fn bucket_name(app: &str, store: &str) -> String {
    format!("wsflow-{}-{app}-{store}", app.len())
}

fn encode(key: &str) -> String {
    format!("k{}", URL_SAFE_NO_PAD.encode(key))
}

fn decode(key: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(key.strip_prefix('k')?).ok()?;
    String::from_utf8(bytes).ok()
}

/// A failure of the broker, with its cause chain, for the log.
fn unavailable(what: &str, error: &dyn std::error::Error) -> KvError {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    tracing::warn!("key-value {what}: {message}");
    KvError::Unavailable(format!("{what}: {message}"))
}

impl Inner {
    /// The bucket of `store`, created with the app's quotas if no host
    /// has created it yet.
    async fn bucket(&self, store: &str) -> Result<kv::Store, KvError> {
        let mut buckets = self.buckets.lock().await;
        if let Some(bucket) = buckets.get(store) {
            return Ok(bucket.clone());
        }
        let name = bucket_name(&self.app, store);
        let bucket = match self.context.get_key_value(&name).await {
            Ok(bucket) => bucket,
            Err(_) => {
                let config = kv::Config {
                    bucket: name.clone(),
                    description: format!("wsflow app `{}`, store `{store}`", self.app),
                    history: 1,
                    max_bytes: i64::try_from(self.quotas.bytes).unwrap_or(i64::MAX),
                    max_value_size: i32::try_from(
                        self.quotas.value_size + self.quotas.key_size * 2,
                    )
                    .unwrap_or(i32::MAX),
                    storage: jetstream::stream::StorageType::File,
                    ..kv::Config::default()
                };
                match self.context.create_key_value(config).await {
                    Ok(bucket) => bucket,
                    // Another host created it in between.
                    Err(_) => self
                        .context
                        .get_key_value(&name)
                        .await
                        .map_err(|error| unavailable(&format!("bucket {name}"), &error))?,
                }
            }
        };
        buckets.insert(store.to_owned(), bucket.clone());
        Ok(bucket)
    }

    async fn run(&self, store: &str, op: Op) -> Result<Answer, KvError> {
        let bucket = self.bucket(store).await?;
        match op {
            Op::Get(key) => Ok(Answer::Value(self.get(&bucket, &key).await?)),
            Op::Exists(key) => Ok(Answer::Exists(self.get(&bucket, &key).await?.is_some())),
            Op::Set(key, value) => {
                self.put(&bucket, &key, value).await?;
                Ok(Answer::Done)
            }
            Op::Delete(key) => {
                self.delete(&bucket, &key).await?;
                Ok(Answer::Done)
            }
            Op::ListKeys(cursor) => self.list_keys(&bucket, cursor).await,
            Op::Increment(key, delta) => self.increment(&bucket, &key, delta).await,
            Op::CompareAndSwap { key, expected, new } => {
                self.compare_and_swap(&bucket, &key, expected.as_deref(), new)
                    .await
            }
            Op::GetMany(keys) => {
                let mut values = Vec::with_capacity(keys.len());
                for key in keys {
                    let value = self.get(&bucket, &key).await?;
                    values.push(value.map(|value| (key, value)));
                }
                Ok(Answer::Values(values))
            }
            Op::SetMany(entries) => {
                for (key, value) in entries {
                    self.put(&bucket, &key, value).await?;
                }
                Ok(Answer::Done)
            }
            Op::DeleteMany(keys) => {
                for key in keys {
                    self.delete(&bucket, &key).await?;
                }
                Ok(Answer::Done)
            }
        }
    }

    /// The entry of `key` and its revision, if it has a value.
    async fn entry(&self, bucket: &kv::Store, key: &str) -> Result<Option<kv::Entry>, KvError> {
        let entry = bucket
            .entry(encode(key))
            .await
            .map_err(|error| unavailable("read", &error))?;
        Ok(entry.filter(|entry| entry.operation == kv::Operation::Put))
    }

    async fn get(&self, bucket: &kv::Store, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self
            .entry(bucket, key)
            .await?
            .map(|entry| entry.value.to_vec()))
    }

    /// A write the server refused over the bucket's `max_bytes` is the
    /// app's bytes quota; anything else is the broker's failure.
    fn write_failed(&self, error: &dyn std::error::Error) -> KvError {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        if text.contains("maximum bytes") || text.contains("resource limits exceeded") {
            return KvError::Quota(QuotaError::StoreFull {
                limit: self.quotas.bytes,
            });
        }
        unavailable("write", error)
    }

    async fn put(&self, bucket: &kv::Store, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        bucket
            .put(encode(key), Bytes::from(value))
            .await
            .map_err(|error| self.write_failed(&error))?;
        Ok(())
    }

    async fn delete(&self, bucket: &kv::Store, key: &str) -> Result<(), KvError> {
        bucket
            .purge(encode(key))
            .await
            .map_err(|error| unavailable("delete", &error))
    }

    async fn list_keys(&self, bucket: &kv::Store, cursor: Option<u64>) -> Result<Answer, KvError> {
        let mut stream = bucket
            .keys()
            .await
            .map_err(|error| unavailable("list", &error))?;
        let mut keys = Vec::new();
        while let Some(key) = stream.next().await {
            let key = key.map_err(|error| unavailable("list", &error))?;
            keys.extend(decode(&key));
        }
        keys.sort();
        let offset = usize::try_from(cursor.unwrap_or(0)).unwrap_or(usize::MAX);
        let page: Vec<String> = keys.iter().skip(offset).take(LIST_PAGE).cloned().collect();
        let next =
            (offset.saturating_add(LIST_PAGE) < keys.len()).then(|| (offset + LIST_PAGE) as u64);
        Ok(Answer::Keys(page, next))
    }

    /// Write `value` to `key` if its revision is still `revision` (`None`:
    /// it has no value). `Ok(false)`: another write came first.
    async fn write_if(
        &self,
        bucket: &kv::Store,
        key: &str,
        revision: Option<u64>,
        value: Vec<u8>,
    ) -> Result<bool, KvError> {
        let value = Bytes::from(value);
        match revision {
            Some(revision) => match bucket.update(encode(key), value, revision).await {
                Ok(_) => Ok(true),
                Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(error) => Err(self.write_failed(&error)),
            },
            None => match bucket.create(encode(key), value).await {
                Ok(_) => Ok(true),
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(error) => Err(self.write_failed(&error)),
            },
        }
    }

    async fn increment(
        &self,
        bucket: &kv::Store,
        key: &str,
        delta: u64,
    ) -> Result<Answer, KvError> {
        for _ in 0..ATTEMPTS {
            let entry = self.entry(bucket, key).await?;
            let current = match &entry {
                None => 0,
                Some(entry) => std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|text| text.parse::<u64>().ok())
                    .ok_or_else(|| KvError::NotANumber(key.to_owned()))?,
            };
            let new = current
                .checked_add(delta)
                .ok_or_else(|| KvError::Overflow(key.to_owned()))?;
            let revision = entry.map(|entry| entry.revision);
            if self
                .write_if(bucket, key, revision, new.to_string().into_bytes())
                .await?
            {
                return Ok(Answer::Number(new));
            }
        }
        Err(contended(key))
    }

    async fn compare_and_swap(
        &self,
        bucket: &kv::Store,
        key: &str,
        expected: Option<&[u8]>,
        new: Vec<u8>,
    ) -> Result<Answer, KvError> {
        for _ in 0..ATTEMPTS {
            let entry = self.entry(bucket, key).await?;
            if entry.as_ref().map(|entry| &entry.value[..]) != expected {
                return Ok(Answer::Swapped(false));
            }
            let revision = entry.map(|entry| entry.revision);
            if self.write_if(bucket, key, revision, new.clone()).await? {
                return Ok(Answer::Swapped(true));
            }
            // Written in between: swap only if it holds the expected
            // value again.
        }
        Err(contended(key))
    }
}

fn contended(key: &str) -> KvError {
    KvError::Unavailable(format!(
        "`{key}` kept changing under {ATTEMPTS} attempts; try again"
    ))
}

impl Backend for JetStreamBackend {
    fn run(&self, store: &str, op: Op) -> Pending {
        let inner = Arc::clone(&self.inner);
        let store = store.to_owned();
        Box::pin(async move { inner.run(&store, op).await })
    }

    fn usage(&self) -> Arc<SharedUsage> {
        Arc::clone(&self.inner.usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_keep_apps_and_stores_apart() {
        assert_ne!(bucket_name("a-b", "c"), bucket_name("a", "b-c"));
        assert_ne!(bucket_name("a_b", "c"), bucket_name("a", "b_c"));
        assert_eq!(bucket_name("chat", "default"), "wsflow-4-chat-default");
    }

    #[test]
    fn any_key_round_trips_through_a_nats_key() {
        for key in ["", "a.b", "with space", "*>", "ünï"] {
            let encoded = encode(key);
            assert!(
                encoded
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{encoded}"
            );
            assert_eq!(decode(&encoded).as_deref(), Some(key));
        }
    }
}
