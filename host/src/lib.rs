//! taskhost: a WebAssembly-sandboxed task runner behind a WebSocket server, after Swoole's
//! task workers. A client sends a task; the server answers `accepted` at once, runs the task
//! in a fresh wasmtime sandbox under fuel, wall-clock and memory limits, and its outcome drives
//! the `finish` callback, which by default sends `finished` or `failed` back.
//!
//! The wire protocol is `docs/PROTOCOL.md`. Embedding the library with an application of
//! your own: implement [`App`] (every callback has a default), and see `host/examples/`.
//!
//! # Layout
//!
//! Three layers; each imports only from the layers below it.
//!
//! 1. **Network**: bytes in and out.
//!    - [`server`]: the accept loop and the shutdown.
//!    - `http`: the plain HTTP side of the port (the page, `/healthz`, `/metrics`, upgrades)
//!      and who may use it (`Host`, `Origin`, the token).
//!    - `peers`: connection counts and caps, overall and per client address; `tls`: the
//!      certificate and the plain-or-TLS stream.
//!    - `connection`: one WebSocket connection's reader loop and writer task.
//! 2. **Application**: [`app`], the events (open, message, task, finish, close), [`Ctx`] (what
//!    callbacks can do: submit, wait for, broadcast), the default application
//!    ([`ProtocolApp`]), the native baseline ([`NativeTasks`]) and the mapping of the layers
//!    below to the protocol's codes and messages.
//! 3. **Parts**, which know nothing of sockets or of the application:
//!    - [`protocol`]: the wire types and frame parsing; no I/O.
//!    - `outbox`: the way back to a client (a bounded queue of text frames), without I/O.
//!    - `dispatch`: task ids, the queue bound, running permits, cancel handles; with
//!      `workers`, the worker permits handed to connections in turn.
//!    - `registry`: task name → loaded module; manifests; watching the tasks folder. Its
//!      `list` entries are serialized as they go on the wire, so [`protocol`] re-exports them.
//!    - `sandbox`: the only door into wasmtime: engine and pool, compile cache, imports
//!      (WASI and `progress`), per-task store and limits, and how a run ended, in its own
//!      terms.
//!    - `capabilities`: what a task's manifest grants it beyond computing (key-value, SQL,
//!      mail, publish, HTTP), behind one call that the sandbox's imports make; it holds
//!      the stores, pools and relay, and publishes through a trait the application
//!      provides.
//!    - [`limits`], [`config`], `metrics`, `clip`, `secret`: plain data, counters, the
//!      cutting of client text for logs and the settings kept out of it, used by all.
//!
//! Beside them, [`calibrate`]: `taskhost --host-index`, the sandbox's fixed price per task and
//! a native micro-benchmark, for the benchmark to tell hosts apart.
//! Beside them, `tools`: `taskhost run` and `taskhost check` for task authors, on top of
//! the server's own registry and sandbox.
//!
//! The sandbox, the dispatcher and the registry import nothing from the protocol: their
//! errors and outcomes are their own types, which the application turns into wire codes.

pub mod app;
pub mod calibrate;
mod capabilities;
pub mod cli_docs;
mod clip;
pub mod config;
mod connection;
mod dispatch;
mod freed_memory;
#[cfg(test)]
mod fuzz_tests;
mod history;
mod http;
mod json;
pub mod limits;
mod metrics;
mod outbox;
mod peers;
mod process_metrics;
pub mod protocol;
mod registry;
mod sandbox;
mod secret;
pub mod server;
mod task_stats;
mod tls;
pub mod tools;
mod workers;

pub use app::{
    Admitted, App, Client, Ctx, Job, NativeTasks, NewTask, Outcome, ProtocolApp, Report,
};
pub use capabilities::http as http_capability;
pub use config::{Config, Options};
pub use outbox::{Outbox, Outboxes, Text};
pub use server::{Server, run, runtime_builder, shutdown_signal};
