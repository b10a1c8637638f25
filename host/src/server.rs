//! The server: its shared state ([`Server`]), the accept loop, and the shutdown.
//!
//! Shutdown, in order: stop accepting connections and new tasks (queued tasks end with
//! `shutdown`); give running tasks the grace period; end the rest with `shutdown`; let their
//! finish callbacks deliver; then close every connection with a close frame (1001).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::app::{Callbacks, Job, Report};
use crate::config::Config;
use crate::connection::ConnectionSet;
use crate::dispatch::{Admission, Dispatcher};
use crate::http;
use crate::metrics::Metrics;
use crate::protocol::Reply;
use crate::protocol::Stats;
use crate::registry::Registry;
use crate::registry::watch;
use crate::sandbox::{EngineSettings, Sandbox};

/// How long connections get to flush their last messages and close at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle to the running server, given to every callback. Cheap to clone.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    callbacks: Box<dyn Callbacks>,
    sandbox: Arc<Sandbox>,
    registry: Arc<Registry>,
    dispatcher: Arc<Dispatcher>,
    connections: ConnectionSet,
    metrics: Metrics,
    started: Instant,
    /// Every task's run and finish callback, awaited at shutdown.
    tasks: TaskTracker,
    /// Cancelled when the shutdown begins: /healthz turns 503.
    stopping: CancellationToken,
    /// Cancelled once tasks are done at shutdown: connections close.
    close_connections: CancellationToken,
}

impl Server {
    /// Builds the sandbox and loads the tasks folder. Fails only on what makes serving
    /// impossible (an impossible pool size, an unreadable folder); a bad module is logged
    /// and listed, and the server starts without it.
    pub fn new(config: Config, callbacks: impl Callbacks) -> anyhow::Result<Server> {
        let sandbox = Arc::new(Sandbox::new(
            &EngineSettings {
                instances: config.task_workers,
                max_memory_bytes: config.limits.memory_bytes,
                cache_dir: config.cache_dir.clone(),
            },
            config.max_output,
        )?);
        let registry = Arc::new(Registry::new(
            Arc::clone(&sandbox),
            &config.tasks_dir,
            config.limits,
        ));
        let loading = Instant::now();
        registry.load_all()?;
        let (from_cache, compiled) = sandbox.cache_counts().unwrap_or((0, 0));
        tracing::info!(
            tasks = registry.ready_names().len(),
            from_cache,
            compiled,
            elapsed_ms = loading.elapsed().as_millis() as u64,
            "tasks loaded"
        );
        Ok(Server {
            shared: Arc::new(Shared {
                dispatcher: Arc::new(Dispatcher::new(
                    config.task_workers,
                    config.queue,
                    config.max_connection_tasks,
                )),
                config,
                callbacks: Box::new(callbacks),
                sandbox,
                registry,
                connections: ConnectionSet::default(),
                metrics: Metrics::new(),
                started: Instant::now(),
                tasks: TaskTracker::new(),
                stopping: CancellationToken::new(),
                close_connections: CancellationToken::new(),
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn callbacks(&self) -> &dyn Callbacks {
        self.shared.callbacks.as_ref()
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.shared.sandbox
    }

    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.shared.dispatcher
    }

    pub fn connections(&self) -> &ConnectionSet {
        &self.shared.connections
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Whether the server still takes work (for /healthz).
    pub fn is_accepting(&self) -> bool {
        !self.shared.stopping.is_cancelled()
    }

    /// Resolves when connections must close (the last step of a shutdown).
    pub async fn closing_connections(&self) {
        self.shared.close_connections.cancelled().await;
    }

    /// The counters of the `stats` message.
    pub fn stats(&self) -> Stats {
        let load = self.dispatcher().load();
        let metrics = self.metrics();
        Stats {
            connections: self.connections().len() as u64,
            queued: load.queued,
            running: load.running,
            completed: metrics.finished(),
            failed: metrics.failed(),
            rejected: metrics.rejected(),
            task_workers: self.dispatcher().task_workers() as u64,
            uptime_ms: u64::try_from(self.shared.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The Prometheus text of `/metrics`, with the queue and running gauges read now.
    pub fn metrics_text(&self) -> String {
        let load = self.dispatcher().load();
        let metrics = self.metrics();
        metrics.queued.set(load.queued as i64);
        metrics.running.set(load.running as i64);
        metrics.encode()
    }

    /// Runs an admitted task in the pool: waits for a worker, calls `on_task`, logs and
    /// counts its end, then calls `on_finish` with the outcome.
    pub fn start_task(&self, admission: Admission, job: Job) {
        let server = self.clone();
        let span = tracing::info_span!("task", task_id = job.task_id, task = %job.name());
        self.shared.tasks.spawn(
            async move {
                let run = server.callbacks().on_task(&server, &job);
                let timeout = Duration::from_millis(job.limits.timeout_ms);
                let (outcome, elapsed) = server.dispatcher().run(admission, timeout, run).await;
                let fuel_used = outcome.fuel_used();
                server
                    .metrics()
                    .task_ended(outcome.label(), elapsed, fuel_used);
                tracing::info!(
                    outcome = outcome.label(),
                    elapsed_ms = elapsed.as_millis() as u64,
                    fuel_used,
                    "task ended"
                );
                let report = Report {
                    job,
                    outcome,
                    elapsed,
                };
                server.callbacks().on_finish(&server, report).await;
            }
            .instrument(span),
        );
    }

    /// Serves connections from `listener` until `shutdown` resolves, then shuts down.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future) -> anyhow::Result<()> {
        let address = listener
            .local_addr()
            .context("the listener has no local address")?;
        tracing::info!(%address, tasks = ?self.registry().ready_names(), "taskhost listening");
        let default_task = &self.config().default_task;
        if !self.registry().ready_names().contains(default_task) {
            tracing::warn!(
                default_task = %default_task,
                "plain-text frames run the default task, which is not in the tasks folder: add \
                 it, or pass --default-task with one that is"
            );
        }
        if self.config().watch {
            // Serving matters more than watching: without a watcher (out of inotify watches,
            // say) the server still runs, with the modules it loaded at start.
            let registry = Arc::clone(&self.shared.registry);
            if let Err(error) = watch::spawn(registry, self.shared.stopping.clone()) {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "the tasks folder is not watched: restart to pick up changes"
                );
            }
        }
        tokio::spawn(self.clone().push_task_lists());
        if self.config().warm_slots > 0 {
            // Set before the first connection, so that a client can wait for the warm pool.
            self.metrics().pool_warming.set(1);
            tokio::spawn(self.clone().warm_pool());
        }
        let connections = TaskTracker::new();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(http::handle(self.clone(), stream, peer));
                }
                Err(error) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(%error, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(listener);
        self.shut_down(connections).await;
        Ok(())
    }

    /// Sends every connection the new task list whenever it changes, until the server stops.
    /// Warms `--warm-slots` slots of the sandbox pool with worker permits the dispatcher
    /// lends, giving them back at once if a task needs one (see `sandbox::warm`).
    async fn warm_pool(self) {
        let slots = self.config().warm_slots;
        let started = Instant::now();
        let dispatcher = self.dispatcher();
        let release = dispatcher.reclaimed().child_token();
        match self
            .sandbox()
            .warm_pool(slots, || dispatcher.lend(), release)
            .await
        {
            Ok(warmed) => {
                self.metrics().pool_warmed_slots.set(warmed as i64);
                tracing::info!(
                    warmed,
                    of = slots,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "sandbox pool warmed"
                );
            }
            // Only the first tasks' speed depends on it: serve on.
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                "could not warm the sandbox pool; the first tasks in each slot start cold"
            ),
        }
        self.metrics().pool_warming.set(0);
    }

    async fn push_task_lists(self) {
        let mut changes = self.registry().subscribe();
        loop {
            tokio::select! {
                () = self.shared.stopping.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            let tasks = self.registry().listing();
            self.connections()
                .offer_all(Reply::TasksChanged { tasks: &tasks }.to_json());
        }
    }

    async fn shut_down(&self, connections: TaskTracker) {
        let shared = &self.shared;
        tracing::info!(
            grace_ms = shared.config.grace.as_millis() as u64,
            "shutting down"
        );
        shared.stopping.cancel();
        shared.dispatcher.stop_starting();
        shared.tasks.close();
        if tokio::time::timeout(shared.config.grace, shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("grace period over: ending the remaining tasks with `shutdown`");
            shared.dispatcher.stop_running();
            // Tasks end at once now; delivering an outcome can still wait on a client that
            // does not read, which must not hold the shutdown up for ever.
            if tokio::time::timeout(CLOSE_TIMEOUT, shared.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!("some outcomes could not be delivered: their clients do not read");
            }
        }
        shared.close_connections.cancel();
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

/// Runs a server with `callbacks` on `listener` until `shutdown` resolves. Tests bind
/// `127.0.0.1:0` and pass a future of their own; the binary passes Ctrl-C or SIGTERM.
pub async fn run(
    listener: TcpListener,
    config: Config,
    callbacks: impl Callbacks,
    shutdown: impl Future,
) -> anyhow::Result<()> {
    Server::new(config, callbacks)?
        .serve(listener, shutdown)
        .await
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
