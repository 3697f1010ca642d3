//! wsflow: a WebSocket server whose application logic runs as sandboxed
//! WebAssembly components.
//!
//! The crate is a pipeline: [`manifest`] parses a `wsflow.toml`, [`loader`]
//! turns it into a runnable [`loader::LoadedApp`] (components compiled,
//! schemas compiled, paths resolved), [`runtime`] executes flows in wasmtime,
//! and [`trigger`] serves WebSocket clients and drives the flows.

pub mod admin;
pub mod app;
pub mod builder;
pub mod cli;
pub mod loader;
pub mod manifest;
pub mod runtime;
pub mod server;
pub mod trigger;
