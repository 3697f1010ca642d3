//! Integration tests: the real server on port 0, a real WebSocket client,
//! guest programs compiled to components by the harness.

mod api;
mod backpressure;
mod chat;
mod closing;
mod cluster;
mod connection_mode;
mod content;
mod data_mode;
mod examples;
mod failures;
mod groups;
mod history;
mod history_cluster;
mod hooks;
mod keyvalue;
mod limits;
mod manifests;
mod outbound;
mod params;
mod reload;
mod shutdown;
mod static_files;
mod tenancy;
mod tls;
