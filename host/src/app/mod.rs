//! The application layer: the events where an application's behaviour lives, after Swoole's
//! WebSocket server (`open`, `message`, `task`, `finish`, `close`), and [`Ctx`], what the
//! callbacks can do with the server.
//!
//! Every callback has a default that implements `docs/PROTOCOL.md` ([`protocol_app`]), so an
//! application overrides only what it changes and can still call the default for the rest.
//! [`ProtocolApp`] overrides nothing: it is what the `taskhost` binary runs.
//!
//! - `open`: a client connected (default: send `hello`).
//! - `message`: a client sent a message (default: serve `task`, `cancel`, `attach`, `list`,
//!   `stats`, `subscribe`, `unsubscribe`;
//!   answer any other `type` with `bad_request`). Messages of types of its own reach the
//!   application here as [`Request::Custom`].
//! - `task`: run one task, in a task worker (default: [`Ctx::run_in_sandbox`]). It returns the
//!   outcome; it never sends anything itself.
//! - `finish`: a task ended; decide where its outcome goes (default: `finished` or `failed`
//!   to the submitting connection).
//! - `close`: a client left (default: nothing; its tasks run on to their end).
//!
//! Callbacks are `async fn`s in an implementation (`async fn on_task(&self, ctx: &Ctx<Self>,
//! job: &Job) -> Outcome`); their futures must be `Send`, since tasks move between threads.

mod after_answer;
mod background;
mod client;
mod cluster;
mod context;
mod dead;
mod failures;
mod job;
pub mod native;
mod progress;
pub mod protocol_app;
mod results;
mod retry;
mod topics;
mod watch;

use std::future::Future;

pub use client::Client;
pub use context::Ctx;
pub(crate) use failures::panic_message;
pub use job::{Admitted, Job, NewTask, Outcome, Report};
pub use native::NativeTasks;
pub use progress::PROGRESS_INTERVAL;
pub use protocol_app::ProtocolApp;
pub use results::{ResultsSummary, RunState, TaskRecord};
pub use topics::MAX_TOPICS_PER_CONNECTION;

use crate::protocol::Request;

/// An application's behaviour on the server's events. See the module docs.
pub trait App: Send + Sync + Sized + 'static {
    /// What the application keeps for each connection (`()` for nothing): created with
    /// `Default` when a client connects, reached through [`Client::session`].
    type Session: Default + Send + Sync + 'static;

    fn on_open(
        &self,
        ctx: &Ctx<Self>,
        client: &Client<Self::Session>,
    ) -> impl Future<Output = ()> + Send {
        protocol_app::greet(ctx, client)
    }

    fn on_message(
        &self,
        ctx: &Ctx<Self>,
        client: &Client<Self::Session>,
        request: Request,
    ) -> impl Future<Output = ()> + Send {
        protocol_app::answer(ctx, client, request)
    }

    fn on_task(&self, ctx: &Ctx<Self>, job: &Job) -> impl Future<Output = Outcome> + Send {
        ctx.run_in_sandbox(job)
    }

    fn on_finish(&self, ctx: &Ctx<Self>, report: Report) -> impl Future<Output = ()> + Send {
        protocol_app::deliver(ctx, report)
    }

    fn on_close(
        &self,
        ctx: &Ctx<Self>,
        client: &Client<Self::Session>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (ctx, client);
        async {}
    }
}
