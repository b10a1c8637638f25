//! taskhost's integration tests: one binary (each test binary links wasmtime, and linking is
//! slow), real servers on ephemeral ports, real WebSocket clients, real modules built from
//! `guest-tasks/` by `just build-guests`.
//!
//! - `protocol`: every message type and error code, bad frames, the ordering guarantees.
//! - `sandbox`: the limits, the failure modules, isolation, sleeping tasks, cancel.
//! - `lifecycle`: HTTP endpoints and graceful shutdown.
//! - `browser`: the page in headless Chromium, driven through `cdp`.
//! - `examples`: the applications in `host/examples/`, on real servers.
//! - `security`: Host, Origin and token checks, TLS, connection caps.
//! - `slow_clients`: readers that do not keep up, silent and half-sent connections.
//! - `crash`: the binary killed with SIGKILL under load, and started again.
//! - `durable`: `started`, results kept past the connection (`attach`), idempotency keys,
//!   retries and dead letters.
//! - `operations`: running it as a service: per-task and process metrics, the dashboard
//!   and its `watch` feed, configuration, completions and man page, the systemd unit and
//!   the container image.
//! - `capabilities`: grants, key-value, publish/subscribe, SQL (SQLite and PostgreSQL 15),
//!   mail through a real SMTP sink, against the library and the binary.
//! - `author_tools`: `taskhost run` and `taskhost check`, through the binary.
//! - `http_capability`: outbound HTTP for tasks against HTTP servers started in the test.
//! - `languages`: tasks in other languages, built from registry packages (Python through
//!   componentize-py), loading after start while the server serves.
//! - `cluster`: nodes sharing work through a real `nats-server -js` (`--nats`): a node
//!   killed mid-run, a broker restart, attach across nodes, keys, retries.

mod author_tools;
mod browser;
mod capabilities;
mod cdp;
mod cluster;
mod common;
mod crash;
mod durable;
mod examples;
mod http_capability;
mod languages;
mod lifecycle;
mod operations;
mod protocol;
mod reload;
mod sandbox;
mod security;
mod slow_clients;
