//! The `keyvalue` capability (`wasi:keyvalue/store`, `atomics`, `batch`
//! at 0.2.0-draft, and `wsflow:flow/keyvalue-cas`): state a flow keeps
//! past its execution, in the stores of its own app that the manifest
//! grants it.
//!
//! - Grant: `[key_value.stores]` declares an app's stores, `[flows.NAME]
//!   key_value_stores` grants some of them to a flow. Opening any other
//!   name is an error value (`access-denied` for a declared store the flow
//!   was not granted, `no-such-store` for one the app does not declare),
//!   counted and logged with the store's name and the grant it lacks;
//!   never a trap.
//! - Isolation: the app's [`AppKeyValue`] reaches only the app's own
//!   database; a store name selects a keyspace inside it.
//! - Quotas: the app's `[limits]` `max_kv_*`; a write over one is an
//!   error value naming the limit, counted, and nothing is written.
//! - Backends ([`backend::Backend`]): SQLite per app ([`sqlite`]) on a
//!   host of its own; JetStream key-value ([`jetstream`]) with `--cluster`.

pub(crate) mod backend;
pub(crate) mod jetstream;
pub(crate) mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use wasmtime::component::{HasSelf, Linker, Resource};

use self::backend::{Answer, Backend, KvError, Op, Quotas, Usage};
use self::jetstream::JetStreamBackend;
use self::sqlite::SqliteBackend;
use super::bindings::wasi::keyvalue::{atomics, batch, store};
use super::bindings::wsflow::flow::keyvalue_cas;
use super::capabilities::Capability;
use super::ctx::FlowCtx;
use super::stdio;
use crate::app::AppStats;
use crate::manifest::spec::{AppLimits, FlowGrants};

pub(super) const CAPABILITY: Capability = Capability {
    name: "keyvalue",
    add_to_linker,
};

fn add_to_linker(linker: &mut Linker<FlowCtx>) -> wasmtime::Result<()> {
    store::add_to_linker::<_, HasSelf<FlowCtx>>(linker, |ctx| ctx)?;
    atomics::add_to_linker::<_, HasSelf<FlowCtx>>(linker, |ctx| ctx)?;
    batch::add_to_linker::<_, HasSelf<FlowCtx>>(linker, |ctx| ctx)?;
    keyvalue_cas::add_to_linker::<_, HasSelf<FlowCtx>>(linker, |ctx| ctx)
}

/// The file name of an app's database in the data directory. App names
/// are letters, digits, `-` and `_` (checked at load), so it is a plain
/// file name of that app alone.
pub(crate) fn database_file(data_dir: &Path, app: &str) -> PathBuf {
    data_dir.join(format!("{app}.sqlite3"))
}

/// An app's key-value stores: its backend, opened once, and its quotas.
#[derive(Debug)]
pub(crate) struct AppKeyValue {
    app: Arc<str>,
    place: Place,
    quotas: Quotas,
    backend: tokio::sync::OnceCell<Arc<dyn Backend>>,
}

/// Where an app's stores are.
#[derive(Debug, Clone)]
enum Place {
    /// A SQLite database file; `None`: in memory (nothing kept).
    Sqlite(Option<PathBuf>),
    /// The cluster's JetStream.
    JetStream(async_nats::jetstream::Context),
}

impl AppKeyValue {
    /// The stores of `app`, kept in `data_dir` (in memory without one).
    pub(crate) fn new(app: &str, data_dir: Option<&Path>, limits: &AppLimits) -> Self {
        Self {
            app: app.into(),
            place: Place::Sqlite(data_dir.map(|dir| database_file(dir, app))),
            quotas: Quotas::of(limits),
            backend: tokio::sync::OnceCell::new(),
        }
    }

    /// The stores of `app` on a host of `cluster`: its JetStream buckets,
    /// shared by every host.
    pub(crate) fn in_cluster(
        app: &str,
        cluster: &crate::cluster::Cluster,
        limits: &AppLimits,
    ) -> Self {
        Self {
            app: app.into(),
            place: Place::JetStream(cluster.jetstream()),
            quotas: Quotas::of(limits),
            backend: tokio::sync::OnceCell::new(),
        }
    }

    /// Open the app's database now, so a data directory that cannot be
    /// used stops the start. Blocks: call it off the async workers.
    pub(crate) fn open_now(&self) -> anyhow::Result<()> {
        if self.backend.initialized() {
            return Ok(());
        }
        let backend = self.open()?;
        // A flow racing to open it first is no harm: one of the two wins.
        let _ = self.backend.set(backend);
        Ok(())
    }

    fn open(&self) -> anyhow::Result<Arc<dyn Backend>> {
        let path = match &self.place {
            Place::Sqlite(path) => path,
            // Buckets are opened by their first operation: the broker
            // may not be up yet.
            Place::JetStream(context) => {
                let backend = JetStreamBackend::new(&self.app, context.clone(), self.quotas);
                return Ok(Arc::new(backend));
            }
        };
        if let Some(dir) = path.as_deref().and_then(Path::parent) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the data directory {}", dir.display()))?;
        }
        let backend = SqliteBackend::open(&self.app, path.as_deref(), self.quotas).with_context(
            || match path {
                Some(path) => format!("opening the key-value database {}", path.display()),
                None => "opening an in-memory key-value database".to_owned(),
            },
        )?;
        Ok(Arc::new(backend))
    }

    /// The backend, opened on first use (an app that declared its first
    /// store in a reload).
    async fn backend(&self) -> Result<&Arc<dyn Backend>, KvError> {
        self.backend
            .get_or_try_init(|| async {
                let this = AppKeyValue {
                    app: Arc::clone(&self.app),
                    place: self.place.clone(),
                    quotas: self.quotas,
                    backend: tokio::sync::OnceCell::new(),
                };
                let opened = tokio::task::spawn_blocking(move || this.open()).await;
                match opened {
                    Ok(Ok(backend)) => Ok(backend),
                    Ok(Err(error)) => {
                        tracing::error!("key-value stores of app `{}`: {error:#}", self.app);
                        Err(KvError::Unavailable(
                            "the app's database cannot be opened; the host's log says why".into(),
                        ))
                    }
                    Err(error) => Err(KvError::Unavailable(error.to_string())),
                }
            })
            .await
    }

    /// What the app's stores hold (nothing before they are opened).
    pub(crate) fn usage(&self) -> Usage {
        self.backend
            .get()
            .map_or_else(Usage::default, |backend| backend.usage().load())
    }
}

/// A store a flow opened: a handle in its execution's resource table.
#[derive(Debug)]
pub struct HostBucket {
    store: Arc<str>,
}

/// An execution's key-value state: what its flow was granted.
pub(super) struct ExecutionKeyValue {
    grants: Arc<FlowGrants>,
}

impl ExecutionKeyValue {
    pub(super) fn new(grants: &Arc<FlowGrants>) -> Self {
        Self {
            grants: Arc::clone(grants),
        }
    }
}

impl FlowCtx {
    /// Run `op` on the store behind `bucket`, timed and counted.
    async fn key_value(
        &mut self,
        bucket: &Resource<HostBucket>,
        op: Op,
    ) -> wasmtime::Result<Result<Answer, store::Error>> {
        let store = Arc::clone(&self.table.get(bucket)?.store);
        let app = Arc::clone(&self.app);
        let stats = &app.stats;
        let started = Instant::now();
        let result = match app.key_value.quotas.check_op(&op) {
            Err(quota) => Err(KvError::from(quota)),
            Ok(()) => match app.key_value.backend().await {
                Ok(backend) => backend.run(&store, op).await,
                Err(error) => Err(error),
            },
        };
        stats
            .metrics
            .kv_operation_time
            .record_duration(started.elapsed());
        match &result {
            Ok(_) => AppStats::add(&stats.kv_operations_ok, 1),
            Err(error) => {
                AppStats::add(&stats.kv_operations_failed, 1);
                if matches!(error, KvError::Quota(_)) {
                    AppStats::add(&stats.kv_quota_exceeded, 1);
                }
            }
        }
        Ok(result.map_err(|error| store::Error::Other(error.to_string())))
    }

    /// Refuse to open `name`, counted and logged within the app's log
    /// budget (the name is the flow's).
    fn deny(&self, name: &str, error: store::Error, why: &str) -> store::Error {
        AppStats::add(&self.app.stats.kv_denied, 1);
        let line = format!("key-value store `{name}` refused: {why}");
        if let Some(line) = stdio::guest_line(&self.app, &line) {
            tracing::warn!("{line}");
        }
        error
    }
}

/// An answer of a kind the operation never gives: a bug in a backend.
fn unexpected(answer: &Answer) -> wasmtime::Error {
    wasmtime::format_err!("key-value backend gave an unexpected answer: {answer:?}")
}

type Answered<T> = wasmtime::Result<Result<T, store::Error>>;

impl store::Host for FlowCtx {
    async fn open(&mut self, identifier: String) -> Answered<Resource<HostBucket>> {
        let grants = &self.key_value.grants;
        if !grants.key_value_stores.contains(&identifier) {
            let declared = self.app.key_value_stores.contains(&identifier);
            let denied = if declared {
                let why = "the flow is not granted it: add it to the flow's \
                           `key_value_stores` in the manifest";
                self.deny(&identifier, store::Error::AccessDenied, why)
            } else {
                let why = "the app declares no such store: declare it under \
                           [key_value.stores] and grant it in the flow's `key_value_stores`";
                self.deny(&identifier, store::Error::NoSuchStore, why)
            };
            return Ok(Err(denied));
        }
        let bucket = HostBucket {
            store: identifier.into(),
        };
        Ok(Ok(self.table.push(bucket)?))
    }
}

impl store::HostBucket for FlowCtx {
    async fn get(
        &mut self,
        bucket: Resource<HostBucket>,
        key: String,
    ) -> Answered<Option<Vec<u8>>> {
        Ok(match self.key_value(&bucket, Op::Get(key)).await? {
            Ok(Answer::Value(value)) => Ok(value),
            Ok(other) => return Err(unexpected(&other)),
            Err(error) => Err(error),
        })
    }

    async fn set(
        &mut self,
        bucket: Resource<HostBucket>,
        key: String,
        value: Vec<u8>,
    ) -> Answered<()> {
        Ok(match self.key_value(&bucket, Op::Set(key, value)).await? {
            Ok(Answer::Done) => Ok(()),
            Ok(other) => return Err(unexpected(&other)),
            Err(error) => Err(error),
        })
    }

    async fn delete(&mut self, bucket: Resource<HostBucket>, key: String) -> Answered<()> {
        Ok(match self.key_value(&bucket, Op::Delete(key)).await? {
            Ok(Answer::Done) => Ok(()),
            Ok(other) => return Err(unexpected(&other)),
            Err(error) => Err(error),
        })
    }

    async fn exists(&mut self, bucket: Resource<HostBucket>, key: String) -> Answered<bool> {
        Ok(match self.key_value(&bucket, Op::Exists(key)).await? {
            Ok(Answer::Exists(exists)) => Ok(exists),
            Ok(other) => return Err(unexpected(&other)),
            Err(error) => Err(error),
        })
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<HostBucket>,
        cursor: Option<u64>,
    ) -> Answered<store::KeyResponse> {
        Ok(match self.key_value(&bucket, Op::ListKeys(cursor)).await? {
            Ok(Answer::Keys(keys, cursor)) => Ok(store::KeyResponse { keys, cursor }),
            Ok(other) => return Err(unexpected(&other)),
            Err(error) => Err(error),
        })
    }

    async fn drop(&mut self, bucket: Resource<HostBucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for FlowCtx {
    async fn increment(
        &mut self,
        bucket: Resource<HostBucket>,
        key: String,
        delta: u64,
    ) -> Answered<u64> {
        Ok(
            match self.key_value(&bucket, Op::Increment(key, delta)).await? {
                Ok(Answer::Number(value)) => Ok(value),
                Ok(other) => return Err(unexpected(&other)),
                Err(error) => Err(error),
            },
        )
    }
}

impl batch::Host for FlowCtx {
    async fn get_many(
        &mut self,
        bucket: Resource<HostBucket>,
        keys: Vec<String>,
    ) -> Answered<Vec<Option<(String, Vec<u8>)>>> {
        Ok(match self.key_value(&bucket, Op::GetMany(keys)).await? {
            Ok(Answer::Values(values)) => Ok(values),
            Ok(other) => return Err(unexpected(&other)),
            Err(error) => Err(error),
        })
    }

    async fn set_many(
        &mut self,
        bucket: Resource<HostBucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Answered<()> {
        Ok(
            match self.key_value(&bucket, Op::SetMany(key_values)).await? {
                Ok(Answer::Done) => Ok(()),
                Ok(other) => return Err(unexpected(&other)),
                Err(error) => Err(error),
            },
        )
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<HostBucket>,
        keys: Vec<String>,
    ) -> Answered<()> {
        Ok(match self.key_value(&bucket, Op::DeleteMany(keys)).await? {
            Ok(Answer::Done) => Ok(()),
            Ok(other) => return Err(unexpected(&other)),
            Err(error) => Err(error),
        })
    }
}

impl keyvalue_cas::Host for FlowCtx {
    async fn compare_and_swap(
        &mut self,
        bucket: Resource<HostBucket>,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Answered<bool> {
        let op = Op::CompareAndSwap { key, expected, new };
        Ok(match self.key_value(&bucket, op).await? {
            Ok(Answer::Swapped(swapped)) => Ok(swapped),
            Ok(other) => return Err(unexpected(&other)),
            Err(error) => Err(error),
        })
    }
}
