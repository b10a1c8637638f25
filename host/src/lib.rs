//! taskhost: a WebAssembly-sandboxed task runner behind a WebSocket server, after Swoole's
//! task workers. A client sends a task; the server answers `accepted` at once, runs the task
//! in a fresh wasmtime sandbox under fuel, wall-clock and memory limits, and its outcome drives
//! the `finish` callback, which by default sends `finished` or `failed` back.
//!
//! The wire protocol is `docs/PROTOCOL.md`. Embedding the library with callbacks of your own:
//! see [`Callbacks`] and `host/examples/`.
//!
//! # Layout
//!
//! - [`config`]: command-line options and the validated [`Config`].
//! - [`server`]: shared state ([`Server`]), the accept loop and the shutdown.
//! - [`http`]: the plain HTTP side of the port: the page, `/healthz`, `/metrics`, upgrades.
//! - [`connection`]: one WebSocket client: reader loop and writer task.
//! - [`protocol`]: the wire types and frame parsing; no I/O.
//! - [`app`]: the events (open, message, task, finish, close), the default application, the
//!   native baseline (`--native`) and the rate-limited progress channel.
//! - [`dispatch`]: task ids, the queue bound, running permits, cancel handles.
//! - [`slots`]: the running-task slots, handed out to connections in turn.
//! - [`registry`]: task name → loaded module; manifests; watching the tasks folder.
//! - [`sandbox`]: the only door into wasmtime: engine and pool, compile cache, imports
//!   (WASI and `progress`), per-task store and limits, outcomes.
//! - [`metrics`]: the counters behind `/metrics` and `stats`.

pub mod app;
pub mod config;
pub mod connection;
pub mod dispatch;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod sandbox;
pub mod server;
pub mod slots;

pub use app::{Callbacks, Job, NativeTasks, ProtocolApp, Report};
pub use config::{Config, Options};
pub use connection::Connection;
pub use sandbox::Outcome;
pub use server::{Server, run, shutdown_signal};
