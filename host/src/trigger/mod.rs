//! The WebSocket trigger: listeners (plain or TLS), the upgrade handshake,
//! and the two ways a handler drives its flow (data and connection mode).

mod admission;
mod connection;
mod data;
mod files;
mod handshake;
mod hooks;
mod http1;
mod inputs;
mod listener;
mod params;
mod progress;
mod pump;
mod session;
mod tls;
mod together;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::app::AppInfo;
use crate::close::Close;
use crate::manifest::spec::{HandlerSpec, Mode, TriggerLimits, TriggerSpec};
use crate::runtime::{ConnectionShared, FlowPre, Outcome, Role, guest_line};

pub(crate) use listener::Listening;

/// A path segment or query value, percent-decoded (`+` kept as is); `None`
/// if it is not valid percent-encoded UTF-8.
pub(crate) fn percent_decode(raw: &str) -> Option<String> {
    handshake::percent_decode(raw, false)
}

/// A path served by a flow.
pub(crate) struct Handler {
    spec: HandlerSpec,
    app: Arc<AppInfo>,
    flow: Arc<FlowSlot>,
    /// The flow whose `on-connect` admits clients.
    on_connect: Option<Arc<FlowSlot>>,
    /// The flow whose `on-close` runs after each connection.
    on_close: Option<Arc<FlowSlot>>,
}

impl Handler {
    /// The current version of the handler's flow: a reload swaps it for
    /// every handler that names it, so the next execution runs the new one.
    fn flow(&self) -> Arc<FlowPre> {
        self.flow.current()
    }
}

/// The current version of one flow of an app, shared by every handler
/// (of every trigger version) that names it.
pub(crate) struct FlowSlot(RwLock<Arc<FlowPre>>);

impl FlowSlot {
    fn current(&self) -> Arc<FlowPre> {
        Arc::clone(&self.0.read().expect("not poisoned"))
    }
}

/// An app's flows by name, each in the slot its handlers read.
#[derive(Default)]
pub(crate) struct AppFlows {
    slots: Mutex<BTreeMap<String, Arc<FlowSlot>>>,
}

impl AppFlows {
    /// The slot of flow `name`, made with `flow` in it if there is none yet.
    fn slot(&self, name: &str, flow: &FlowPre) -> Arc<FlowSlot> {
        let mut slots = self.slots.lock().expect("not poisoned");
        Arc::clone(
            slots
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(FlowSlot(RwLock::new(Arc::new(flow.clone()))))),
        )
    }

    /// Put these versions of the flows in their slots: executions that
    /// start from now on run them.
    pub(crate) fn install(&self, flows: &BTreeMap<String, FlowPre>) {
        for (name, flow) in flows {
            let slot = self.slot(name, flow);
            *slot.0.write().expect("not poisoned") = Arc::new(flow.clone());
        }
    }

    /// The version of flow `name` in use, if the app has one.
    pub(crate) fn current(&self, name: &str) -> Option<Arc<FlowPre>> {
        let slots = self.slots.lock().expect("not poisoned");
        slots.get(name).map(|slot| slot.current())
    }
}

/// Log how an execution ended and decide whether the connection must close.
/// Details of a failure go to the log only, never to the client; what the
/// guest wrote there (its error, the names in a backtrace) goes through
/// [`guest_line`], within the app's log budget.
fn report(handler: &Handler, connection: &ConnectionShared, outcome: Outcome) -> Option<Close> {
    let app = &handler.app;
    match outcome {
        Outcome::Completed => None,
        // A flow that fails because its client has gone is no news.
        Outcome::Failed(message) if connection.is_closed() => {
            if let Some(message) = guest_line(app, &message) {
                tracing::debug!("flow returned an error after the close: {message}");
            }
            None
        }
        Outcome::Failed(message) => {
            if let Some(message) = guest_line(app, &message) {
                tracing::warn!("flow returned an error: {message}");
            }
            match handler.spec.mode {
                Mode::Data => None,
                Mode::Connection => Some(Close::FLOW_FAILED),
            }
        }
        Outcome::Trapped(trap) => {
            // The cause on one line; the wasm backtrace, which names the
            // guest's functions, at debug level.
            let cause = trap.root_cause().to_string().replace('\n', " ");
            tracing::error!("flow trapped: {cause}");
            if let Some(details) = guest_line(app, &format!("{trap:?}")) {
                tracing::debug!("trap details: {details}");
            }
            Some(Close::INTERNAL_ERROR)
        }
        Outcome::LimitExceeded(exceeded) => {
            tracing::error!("execution stopped: {exceeded}");
            Some(if exceeded.is_client_fault() {
                Close::SLOW_CLIENT
            } else {
                Close::INTERNAL_ERROR
            })
        }
    }
}

/// A running WebSocket listener for one `[[triggers]]` entry.
pub(crate) struct WsTrigger {
    app: Arc<AppInfo>,
    handlers: Vec<Arc<Handler>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: TriggerLimits,
    allowed_origins: Option<Vec<String>>,
    /// Files for plain HTTP requests (`static_dir`).
    static_files: Option<files::StaticFiles>,
    ws_config: WebSocketConfig,
    /// Upgraded connections currently open.
    open: Arc<AtomicUsize>,
}

/// Buffers sized for messages, not bulk transfer: tungstenite's defaults
/// (128 KiB each way) would cost every idle connection a quarter MiB.
const READ_BUFFER: usize = 4 * 1024;
const WRITE_BUFFER: usize = 4 * 1024;

/// Room in the write buffer beyond one message: its frame header and a
/// control frame (pong, close) queued beside it.
const WRITE_BUFFER_SLACK: usize = 1024;

impl WsTrigger {
    /// The trigger `spec` describes, for `app`, whose flows are `flows`;
    /// its handlers read them from the slots in `slots`. A new version of a
    /// running trigger shares its count of open connections (`open`).
    /// Sets up TLS; fails if the certificate or key cannot be used, or a
    /// handler names a flow for something its component does not export.
    /// Errors name the trigger as `key` (e.g. `triggers[0]`).
    pub(crate) fn new(
        app: Arc<AppInfo>,
        key: &str,
        spec: &TriggerSpec,
        flows: &BTreeMap<String, FlowPre>,
        slots: &AppFlows,
        open: Option<Arc<AtomicUsize>>,
    ) -> anyhow::Result<Self> {
        let tls = match &spec.tls {
            Some(tls) => Some(tokio_rustls::TlsAcceptor::from(
                tls::server_config(tls).with_context(|| format!("{key}.tls"))?,
            )),
            None => None,
        };
        let handlers: Vec<Arc<Handler>> = spec
            .handlers
            .iter()
            .enumerate()
            .map(|(h, handler)| {
                let pick = |name: &str, role: Role| {
                    let flow = flows
                        .get(name)
                        .expect("validation checked that every handler names flows of its app");
                    flow.role(role).with_context(|| {
                        format!("{key}.handlers[{h}] (path `{}`)", handler.path)
                    })?;
                    anyhow::Ok(slots.slot(name, flow))
                };
                Ok(Arc::new(Handler {
                    spec: handler.clone(),
                    app: Arc::clone(&app),
                    flow: pick(&handler.flow, Role::Handle)?,
                    on_connect: handler
                        .on_connect
                        .as_deref()
                        .map(|name| pick(name, Role::Hooks))
                        .transpose()?,
                    on_close: handler
                        .on_close
                        .as_deref()
                        .map(|name| pick(name, Role::Hooks))
                        .transpose()?,
                }))
            })
            .collect::<anyhow::Result<_>>()?;
        let limits = spec.limits.clone();
        // tungstenite's write buffer is unbounded by default. The writer
        // flushes it before it queues the next message, so it holds at most
        // the buffer, one message (flows send at most max_message_size) and
        // a control frame; bounded there, a stream that keeps failing cannot
        // make it grow.
        let max_write_buffer = WRITE_BUFFER
            .saturating_add(limits.max_message_size)
            .saturating_add(WRITE_BUFFER_SLACK);
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(WRITE_BUFFER)
            .max_write_buffer_size(max_write_buffer)
            .max_message_size(Some(limits.max_message_size))
            .max_frame_size(Some(limits.max_message_size));
        Ok(Self {
            app,
            handlers,
            tls,
            limits,
            allowed_origins: spec.allowed_origins.clone(),
            static_files: spec.static_dir.clone().map(files::StaticFiles::new),
            ws_config,
            open: open.unwrap_or_default(),
        })
    }

    /// The request paths the trigger serves.
    pub(crate) fn paths(&self) -> impl Iterator<Item = String> + '_ {
        self.handlers
            .iter()
            .map(|handler| handler.spec.path.to_string())
    }

    /// The count of its open connections, for a new version to share.
    pub(crate) fn open_connections(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.open)
    }

    /// `ws` or `wss`.
    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "wss" } else { "ws" }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::manifest::spec::AppSpec;

    fn limits(max_message_size: usize) -> TriggerLimits {
        TriggerLimits {
            max_connections: None,
            max_pending_handshakes: 256,
            max_message_size,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: None,
            ping_interval: None,
        }
    }

    fn trigger(limits: TriggerLimits) -> WsTrigger {
        let app = AppInfo::new(&AppSpec::bare("t", Default::default()));
        let spec = TriggerSpec {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls: None,
            limits,
            allowed_origins: None,
            static_dir: None,
            handlers: Vec::new(),
        };
        WsTrigger::new(
            Arc::new(app),
            "triggers[0]",
            &spec,
            &BTreeMap::new(),
            &AppFlows::default(),
            None,
        )
        .unwrap()
    }

    #[test]
    fn the_write_buffer_is_bounded_yet_holds_a_largest_message() {
        for max_message_size in [1024, 1 << 20, 64 << 20] {
            let config = trigger(limits(max_message_size)).ws_config;
            assert!(config.max_write_buffer_size > WRITE_BUFFER + max_message_size + 14);
            assert!(config.max_write_buffer_size <= WRITE_BUFFER + max_message_size + (64 << 10));
        }
    }
}
