//! Manifests built from TOML values. A test says what its app is made of
//! (flows, triggers, handlers, limits) and the `toml` crate writes the file,
//! so a setting that the host no longer knows fails the load instead of an
//! edit to a template that silently stops matching.
//!
//! ```no_run
//! use toml::toml;
//! use wsflow_tests::manifest::{Manifest, Trigger};
//! use wsflow_tests::programs;
//!
//! let echo = Manifest::app("echo")
//!     .flow("main", programs::EXAMPLE_ECHO)
//!     .trigger(
//!         Trigger::on_port(0)
//!             .with(toml! { max_connections = 2 })
//!             .handler(toml! { path = "/echo" flow = "main" }),
//!     );
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};

use toml::{Table, Value};

/// A table of computed values, for settings `toml!` cannot spell because
/// they are only known at run time (paths, PEM text).
pub fn table<const N: usize>(entries: [(&str, Value); N]) -> Table {
    entries
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
}

/// `table` with the entries of `more` added; a key in both is a mistake in
/// the test and panics.
pub fn merged(mut table: Table, more: Table) -> Table {
    for (key, value) in more {
        insert_new(&mut table, &key, value);
    }
    table
}

/// One app's manifest. `[app].name` is the name the test asked for with a
/// suffix that no other app of this process has, so the app's log lines
/// and counters are its own; the server maps the asked name to it.
#[derive(Debug, Clone)]
pub struct Manifest {
    asked: String,
    table: Table,
}

impl Manifest {
    /// App `name`, with no flows or triggers yet.
    pub fn app(name: &str) -> Self {
        let mut app = Table::new();
        app.insert("name".into(), name.into());
        let mut table = Table::new();
        table.insert("app".into(), app.into());
        Self::from_table(table)
    }

    /// App `name` with one flow, `main`, running `component`, served by one
    /// handler with the settings `handler` on a trigger on port 0.
    pub fn one_flow(name: &str, component: &str, mut handler: Table) -> Self {
        insert_new(&mut handler, "flow", "main".into());
        Self::app(name)
            .flow("main", component)
            .trigger(Trigger::on_port(0).handler(handler))
    }

    /// A manifest from TOML values, e.g. an example's file parsed into a
    /// [`Table`]. Panics unless it has `[app].name`.
    pub fn from_table(mut table: Table) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let name = &mut table["app"]["name"];
        let asked = name
            .as_str()
            .unwrap_or_else(|| panic!("app.name is not a string: {name}"))
            .to_owned();
        let suffix = NEXT.fetch_add(1, Ordering::Relaxed);
        *name = format!("{asked}-{suffix}").into();
        Self { asked, table }
    }

    /// This manifest with `other`'s app name, for a test of two manifests
    /// that define the same app.
    pub fn named_like(mut self, other: &Manifest) -> Self {
        self.table["app"]["name"] = other.name().into();
        self.asked = other.asked.clone();
        self
    }

    /// This manifest for the app whose real name is `real`: a new version
    /// of a running app.
    pub(crate) fn with_real_name(mut self, real: &str) -> Self {
        self.table["app"]["name"] = real.into();
        self
    }

    /// Add `[flows.NAME]` running `component`.
    pub fn flow(self, name: &str, component: &str) -> Self {
        self.flow_with(name, component, Table::new())
    }

    /// Add `[flows.NAME]` running `component`, with more `settings` (what it
    /// is granted, how it is built).
    pub fn flow_with(mut self, name: &str, component: &str, mut settings: Table) -> Self {
        insert_new(&mut settings, "component", component.into());
        insert_new(self.section("flows"), name, settings.into());
        self
    }

    /// Add a `[[triggers]]` entry.
    pub fn trigger(mut self, trigger: Trigger) -> Self {
        let triggers = self
            .table
            .entry("triggers")
            .or_insert_with(|| Value::Array(Vec::new()));
        triggers
            .as_array_mut()
            .expect("triggers is an array")
            .push(trigger.0.into());
        self
    }

    /// Set `[limits]`.
    pub fn limits(mut self, limits: Table) -> Self {
        insert_new(&mut self.table, "limits", limits.into());
        self
    }

    /// Set `[properties]`.
    pub fn properties(mut self, properties: Table) -> Self {
        insert_new(&mut self.table, "properties", properties.into());
        self
    }

    /// Set `[api]`.
    pub fn api(mut self, api: Table) -> Self {
        insert_new(&mut self.table, "api", api.into());
        self
    }

    /// Add `[schemas.NAME]`.
    pub fn schema(mut self, name: &str, schema: Table) -> Self {
        insert_new(self.section("schemas"), name, schema.into());
        self
    }

    /// Add a `[[history]]`.
    pub fn history(mut self, history: Table) -> Self {
        self.table
            .entry("history")
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .expect("history is an array")
            .push(history.into());
        self
    }

    /// Declare the key-value stores `names` (`[key_value.stores]`).
    pub fn key_value_stores(mut self, names: &[&str]) -> Self {
        let key_value = self
            .section("key_value")
            .entry("stores")
            .or_insert_with(|| Table::new().into())
            .as_table_mut()
            .expect("key_value.stores is a table");
        for name in names {
            key_value.insert((*name).to_owned(), Table::new().into());
        }
        self
    }

    /// The name the test asked for.
    pub fn asked_name(&self) -> &str {
        &self.asked
    }

    /// The app's name in this process: `[app].name`.
    pub fn name(&self) -> &str {
        self.table["app"]["name"].as_str().expect("app.name")
    }

    /// The manifest as the TOML text the host reads.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.table).expect("a manifest is TOML")
    }

    /// The top-level table `key`, created if it is not there yet.
    fn section(&mut self, key: &str) -> &mut Table {
        self.table
            .entry(key)
            .or_insert_with(|| Table::new().into())
            .as_table_mut()
            .unwrap_or_else(|| panic!("{key} is a table"))
    }
}

/// One `[[triggers]]` entry: its settings and its handlers.
#[derive(Debug, Clone)]
pub struct Trigger(Table);

impl Trigger {
    /// A trigger listening on `port` (`0` for any free port, or a
    /// `"${PROPERTY}"` string).
    pub fn on_port(port: impl Into<Value>) -> Self {
        Self(table([("port", port.into())]))
    }

    /// Add trigger settings (`max_connections`, `tls`, ...).
    pub fn with(self, settings: Table) -> Self {
        Self(merged(self.0, settings))
    }

    /// Add a `[[triggers.handlers]]` entry with the settings `handler`.
    pub fn handler(mut self, handler: Table) -> Self {
        let handlers = self
            .0
            .entry("handlers")
            .or_insert_with(|| Value::Array(Vec::new()));
        handlers
            .as_array_mut()
            .expect("handlers is an array")
            .push(handler.into());
        self
    }
}

/// Insert `key`, which a test must not set twice: the second value would
/// silently win.
fn insert_new(table: &mut Table, key: &str, value: Value) {
    if let Some(old) = table.insert(key.to_owned(), value) {
        panic!("`{key}` is set twice (first to {old})");
    }
}
