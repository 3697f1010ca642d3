//! wsflow: a WebSocket server whose application logic runs as sandboxed
//! WebAssembly components.
//!
//! The crate is a pipeline that data flows through one way:
//! [`manifest`] parses and validates a `wsflow.toml` into an
//! [`manifest::AppSpec`] (plain data, the config layer's only output);
//! [`loader`] builds stale flows and hands the specs to the runtime
//! (wasmtime: compiled flows, stores, limits) and the trigger (listeners,
//! handshake, data and connection modes); [`server`] binds and serves them.
//! With [`cluster`], several hosts serve the same apps as one.
#![deny(missing_docs)]

mod admin;
mod api;
mod app;
mod builder;
pub mod cli;
mod close;
pub mod cluster;
mod http_endpoint;
mod hub;
pub mod loader;
pub mod manifest;
mod metrics;
pub mod reload;
mod runtime;
mod scaffold;
pub mod server;
mod sockets;
mod stats;
mod trigger;

pub use runtime::http::{Resolve, Resolver};
pub use stats::StatsSnapshot;
