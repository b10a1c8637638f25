//! The server: the accept loop and the shutdown. Everything a connection does after it is
//! accepted belongs to `http` and `connection`; everything about tasks to the application
//! ([`Ctx`]).
//!
//! Shutdown, in order:
//! 1. drain (`--drain-ms`): /healthz answers 503, so a load balancer stops sending clients
//!    here, while connections and tasks are still taken;
//! 2. stop accepting connections and new tasks (`shutdown`); queued and running tasks go on;
//! 3. after the grace period (`--grace-ms`), end the rest with `shutdown`;
//! 4. let their finish callbacks deliver, then close every connection with 1001.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::app::{App, Ctx};
use crate::config::Config;
use crate::http::{self, Edge};

/// How long connections get to flush their last messages and close at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Scheduler ticks between two looks at the network (tokio's `event_interval`, 61 by
/// default). A task burning CPU yields every `FUEL_YIELD_INTERVAL` units of fuel, and each
/// yield is one tick: with every worker busy with such tasks, a frame that arrived waited up
/// to 61 of those slices for its connection to be woken. At 31, echo's p99 beside four CPU
/// hogs on two cores fell from 9.7-11.7 ms to 5.7-6.1 ms, with no change measured in echo's
/// CPU per task (at 16 and 8 the p99 fell further, but echo cost 5% and 25% more CPU;
/// docs/PERFORMANCE.md).
pub const NETWORK_POLL_TICKS: u32 = 31;

/// The runtime a server should run on, as the binary builds it: tokio's multi-threaded
/// runtime with every driver, looking at the network every [`NETWORK_POLL_TICKS`] ticks.
/// An embedder calls this instead of `#[tokio::main]` so that its connections are heard
/// beside CPU-bound tasks as the binary's are.
pub fn runtime_builder() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.event_interval(NETWORK_POLL_TICKS).enable_all();
    builder
}

/// A server ready to serve: its tasks are loaded and its application is set.
pub struct Server<A> {
    ctx: Ctx<A>,
}

impl<A: App> Server<A> {
    /// Builds the sandbox and loads the tasks folder. Fails only on what makes serving
    /// impossible (an impossible pool size, an unreadable folder); a bad module is logged
    /// and listed, and the server starts without it.
    pub fn new(config: Config, app: A) -> anyhow::Result<Server<A>> {
        Ok(Server {
            ctx: Ctx::new(config, app)?,
        })
    }

    /// The handle the callbacks get, for work outside them (starting tasks from a timer, say).
    pub fn ctx(&self) -> &Ctx<A> {
        &self.ctx
    }

    /// Serves connections from `listener` until `shutdown` resolves, then shuts down.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future) -> anyhow::Result<()> {
        let address = listener
            .local_addr()
            .context("the listener has no local address")?;
        let edge = std::sync::Arc::new(Edge::new(self.ctx.config())?);
        let scheme = if edge.is_tls() { "wss" } else { "ws" };
        tracing::info!(%address, scheme, tasks = ?self.ctx.task_names(), "taskhost listening");
        if self
            .ctx
            .config()
            .allowed_origins
            .iter()
            .any(|o| o == "null" || o == "*")
        {
            tracing::warn!(
                "--allow-origin null (or *): pages opened from files, and sandboxed frames of \
                 any web site, can open connections and run tasks here"
            );
        }
        self.ctx.start_background_work();
        let connections = TaskTracker::new();
        let accept = |accepted: std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)>| {
            let ctx = self.ctx.clone();
            let edge = std::sync::Arc::clone(&edge);
            let connections = &connections;
            async move {
                match accepted {
                    Ok((stream, peer)) => {
                        connections.spawn(http::handle(ctx, edge, stream, peer));
                    }
                    Err(error) => {
                        // Out of file descriptors, say: wait a little rather than spin.
                        tracing::warn!(%error, "could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                accepted = listener.accept() => accept(accepted).await,
            }
        }
        let drain = self.ctx.config().drain;
        tracing::info!(
            drain_ms = drain.as_millis() as u64,
            "shutting down: draining"
        );
        self.ctx.begin_drain();
        let drained = tokio::time::sleep(drain);
        tokio::pin!(drained);
        loop {
            tokio::select! {
                biased;
                () = &mut drained => break,
                accepted = listener.accept() => accept(accepted).await,
            }
        }
        drop(listener);
        self.shut_down(connections).await;
        Ok(())
    }

    async fn shut_down(&self, connections: TaskTracker) {
        let ctx = &self.ctx;
        let grace = ctx.config().grace;
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "taking no new tasks; waiting for queued and running ones"
        );
        ctx.stop_taking_work();
        if !ctx.tasks_done(grace).await {
            tracing::warn!("grace period over: ending the remaining tasks with `shutdown`");
            ctx.stop_running_tasks();
            // Tasks end at once now; delivering an outcome can still wait on a client that
            // does not read, which must not hold the shutdown up for ever.
            if !ctx.tasks_done(CLOSE_TIMEOUT).await {
                tracing::warn!("some outcomes could not be delivered: their clients do not read");
            }
        }
        ctx.close_connections();
        connections.close();
        if tokio::time::timeout(CLOSE_TIMEOUT, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close in time");
        }
        tracing::info!("stopped");
    }
}

/// Runs a server with application `app` on `listener` until `shutdown` resolves. Tests bind
/// `127.0.0.1:0` and pass a future of their own; the binary passes Ctrl-C or SIGTERM.
pub async fn run(
    listener: TcpListener,
    config: Config,
    app: impl App,
    shutdown: impl Future,
) -> anyhow::Result<()> {
    Server::new(config, app)?.serve(listener, shutdown).await
}

/// Resolves on Ctrl-C or SIGTERM. The signal handlers are installed by this call, not when
/// the future is first polled: a signal that arrives while the server is still starting
/// (compiling its modules, say) must not kill the process with the default action.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {},
                        _ = terminate.recv() => {},
                    }
                }
                (Err(error), _) | (_, Err(error)) => {
                    tracing::error!(%error, "cannot listen for Ctrl-C and SIGTERM; stop the server with SIGKILL");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}
