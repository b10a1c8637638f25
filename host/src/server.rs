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
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{App, Ctx};
use crate::config::Config;
use crate::http::Edge;

/// How long connections get to flush their last messages and close at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Scheduler ticks between two looks at the sockets (tokio's `event_interval`, 61 by
/// default). A task burning CPU yields every `FUEL_YIELD_INTERVAL` units of fuel, and each
/// yield is one tick: with every worker busy with such tasks, a socket event waited up to 61
/// of those slices. At 31, echo's p99 beside four CPU hogs on two cores fell from 9.7-11.7 ms
/// to 5.7-6.1 ms, with no change measured in echo's CPU per task (at 16 and 8 the p99 fell
/// further, but echo cost 5% and 25% more CPU; docs/PERFORMANCE.md). That was measured with
/// connections on the tasks' runtime; they have a runtime of their own now
/// (`NetworkRuntime`), and the tasks' runtime keeps the setting for the sockets tasks use
/// (a capability's HTTP response, the broker's messages).
pub const NETWORK_POLL_TICKS: u32 = 31;

/// The runtime a server should run on, as the binary builds it: tokio's multi-threaded
/// runtime with every driver, looking at the network every [`NETWORK_POLL_TICKS`] ticks.
/// An embedder calls this instead of `#[tokio::main]` so that the sockets its tasks use are
/// heard beside CPU-bound tasks as the binary's are (connections are served by a runtime the
/// server starts for them).
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
        let connections = TaskTracker::new();
        let edge = Arc::new(Edge::new(self.ctx.config(), connections.clone())?);
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
        let network = NetworkRuntime::start()?;
        // The listener moves to the network's reactor, so every connection it accepts is
        // registered there and served by the network's thread from its first byte.
        let listener = network.adopt(listener)?;
        let stop_accepting = CancellationToken::new();
        let accepting = network.spawn(accept_loop(
            listener,
            self.ctx.clone(),
            edge,
            stop_accepting.clone(),
        ));
        shutdown.await;
        let drain = self.ctx.config().drain;
        tracing::info!(
            drain_ms = drain.as_millis() as u64,
            "shutting down: draining"
        );
        self.ctx.begin_drain();
        tokio::time::sleep(drain).await;
        stop_accepting.cancel();
        if let Err(error) = accepting.await {
            tracing::error!(%error, "the accept loop ended abnormally");
        }
        self.shut_down(connections).await;
        drop(network);
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

/// Accepts connections and serves each on the network's runtime (the one this runs on) until
/// `stop` is cancelled; the listener is closed when it returns.
async fn accept_loop<A: App>(
    listener: TcpListener,
    ctx: Ctx<A>,
    edge: Arc<Edge>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                edge.serve(ctx.clone(), stream, peer);
            }
            Err(error) => {
                // Out of file descriptors, say: wait a little rather than spin.
                tracing::warn!(%error, "could not accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
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

/// The runtime that serves connections: one thread of its own, beside the runtime tasks run
/// on. A burst of tasks fills the task runtime's queues with instantiations; on one runtime,
/// the connections' readers and writers waited behind them, so `accepted` and the answers to
/// other clients were late by seconds (10,000 sleepers: `accepted` p99 1.1-3.1 s). On a
/// thread of its own the network gets its turn from the kernel's scheduler. Measured in
/// docs/PERFORMANCE.md ("The network on a runtime of its own").
struct NetworkRuntime(Option<tokio::runtime::Runtime>);

impl NetworkRuntime {
    fn start() -> anyhow::Result<NetworkRuntime> {
        let runtime = runtime_builder()
            .worker_threads(1)
            .thread_name("taskhost-network")
            .build()
            .context("could not start the network's runtime")?;
        Ok(NetworkRuntime(Some(runtime)))
    }

    /// Moves `listener` from the reactor it was registered with to this runtime's, so that a
    /// failure to move it fails the server's start rather than leaving it deaf.
    fn adopt(&self, listener: TcpListener) -> anyhow::Result<TcpListener> {
        let listener = listener
            .into_std()
            .context("could not take the listener from the caller's runtime")?;
        let _inside = self.runtime().enter();
        TcpListener::from_std(listener).context("could not listen on the network's runtime")
    }

    fn spawn<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime().spawn(work)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        match &self.0 {
            Some(runtime) => runtime,
            None => unreachable!("the network's runtime lives until the server is dropped"),
        }
    }
}

impl Drop for NetworkRuntime {
    /// Without waiting: a runtime dropped in async code (the server's future dropped, or its
    /// end) would panic if it blocked on its threads.
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
