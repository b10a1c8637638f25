//! The events where an application's behaviour lives, after Swoole's WebSocket server:
//! `open`, `message`, `task`, `finish` and `close`.
//!
//! Every method has a default that implements `docs/PROTOCOL.md` ([`protocol`]), so an
//! application overrides only what it changes and can still call the default for the rest.
//! [`ProtocolApp`] overrides nothing: it is what the `taskhost` binary runs.
//!
//! - `open`: a client connected (default: send `hello`).
//! - `message`: a client sent a request (default: serve `task`, `cancel`, `list`, `stats`).
//! - `task`: run one task, in a task worker (default: in a fresh sandbox). It returns the
//!   outcome; it never sends anything itself.
//! - `finish`: a task ended; decide where its outcome goes (default: `finished` or `failed`
//!   to the submitting connection).
//! - `close`: a client left (default: nothing; its tasks run on to their end).

pub mod native;
pub mod progress;
pub mod protocol;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::connection::Connection;
use crate::protocol::{Limits, Ref, Request};
use crate::registry::TaskModule;
use crate::sandbox::{Outcome, RunSpec};
use crate::server::Server;
use progress::ProgressThrottle;

/// One accepted task, as the `task` and `finish` callbacks see it.
#[derive(Debug)]
pub struct Job {
    /// Unique and increasing for the server's whole run.
    pub task_id: u64,
    /// The module version this task runs, held so a reload never touches it.
    pub module: Arc<TaskModule>,
    /// The input as JSON text, for the module's stdin.
    pub input: Bytes,
    /// The effective limits: the task's own, lowered by what the client asked.
    pub limits: Limits,
    /// The client's `ref`, echoed on every message about the task.
    pub reference: Option<Ref>,
    /// The connection that submitted the task. It may have closed by the time the task ends.
    pub origin: Connection,
    /// Where the task's progress reports go (to `origin`, rate-limited).
    pub progress: Arc<ProgressThrottle>,
}

impl Job {
    pub fn name(&self) -> &str {
        &self.module.name
    }

    /// What the sandbox needs to run this job; its progress goes to the submitter as
    /// `progress` messages, rate-limited.
    pub fn run_spec(&self) -> RunSpec {
        RunSpec {
            name: self.module.name.clone(),
            input: self.input.clone(),
            limits: self.limits,
            progress: Some(self.progress.sink()),
        }
    }
}

/// A task's end, as the `finish` callback receives it.
#[derive(Debug)]
pub struct Report {
    pub job: Job,
    pub outcome: Outcome,
    /// Time from the task's start to its end; time in the queue does not count.
    pub elapsed: Duration,
}

/// An application's behaviour on the server's events. See the module docs.
pub trait Callbacks: Send + Sync + 'static {
    fn on_open<'a>(&'a self, server: &'a Server, connection: &'a Connection) -> BoxFuture<'a, ()> {
        Box::pin(protocol::greet(server, connection))
    }

    fn on_message<'a>(
        &'a self,
        server: &'a Server,
        connection: &'a Connection,
        request: Request,
    ) -> BoxFuture<'a, ()> {
        Box::pin(protocol::serve(server, connection, request))
    }

    fn on_task<'a>(&'a self, server: &'a Server, job: &'a Job) -> BoxFuture<'a, Outcome> {
        Box::pin(server.sandbox().run(&job.module.wasm, job.run_spec()))
    }

    fn on_finish<'a>(&'a self, server: &'a Server, report: Report) -> BoxFuture<'a, ()> {
        Box::pin(protocol::deliver(server, report))
    }

    fn on_close<'a>(&'a self, server: &'a Server, connection: &'a Connection) -> BoxFuture<'a, ()> {
        let _ = (server, connection);
        Box::pin(async {})
    }
}

/// The application the `taskhost` binary runs: `docs/PROTOCOL.md`, unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProtocolApp;

impl Callbacks for ProtocolApp {}

pub use native::NativeTasks;
