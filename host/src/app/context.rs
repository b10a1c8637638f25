//! [`Ctx`]: what an application's callbacks can do with the server, and the state behind it.
//!
//! Tasks, after Swoole's task workers:
//! - [`Ctx::submit`] (Swoole's `task`) starts a task; its outcome goes to the `finish`
//!   callback. [`Ctx::admit`] and [`Ctx::start`] do the same in two steps, so that the task
//!   can be announced (`accepted`) before any of its messages can be sent.
//! - [`Ctx::task_wait`] (Swoole's `taskwait`) runs a task and returns its outcome to the
//!   caller, within a timeout; `finish` is not called. [`Ctx::task_wait_multi`]
//!   (`taskWaitMulti`) runs several at once.
//! - [`Ctx::run_in_sandbox`] is the default `task` callback.
//!
//! Design: every task goes through the dispatcher ([`crate::dispatch`]), which holds its
//! place in the queue, waits for a worker permit, races it against its cancel token and the
//! wall clock, and frees both when it ends. Started tasks run as tokio tasks in a tracker
//! that the shutdown awaits; waited tasks run inside the caller's future, so dropping the
//! caller stops them.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::App;
use super::failures;
use super::job::{Admitted, Job, NewTask, Outcome};
use super::progress::ProgressThrottle;
use super::topics::{SubscribeRefusal, Topics};
use crate::capabilities::{Capabilities, Publisher};
use crate::config::Config;
use crate::dispatch::{Caps, Dispatcher, Owner};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, Outboxes, Text};
use crate::protocol::{ErrorCode, Stats, TaskListing, WireError};
use crate::registry::Registry;
use crate::sandbox::{EngineSettings, Sandbox};

/// The dispatcher's owner for tasks an application starts without a client (connection ids
/// start at 1): they wait in one line of their own, with no per-address cap.
const APPLICATION_OWNER: Owner = Owner {
    connection: 0,
    address: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
};

/// A handle to the running server, given to every callback. Cheap to clone.
pub struct Ctx<A> {
    shared: Arc<Shared<A>>,
}

impl<A> Clone for Ctx<A> {
    fn clone(&self) -> Self {
        Ctx {
            shared: Arc::clone(&self.shared),
        }
    }
}

struct Shared<A> {
    app: A,
    config: Config,
    sandbox: Arc<Sandbox>,
    registry: Arc<Registry>,
    dispatcher: Arc<Dispatcher>,
    outboxes: Outboxes,
    metrics: Metrics,
    /// The host's side of the capabilities tasks are granted.
    capabilities: Arc<Capabilities>,
    /// Who is subscribed to which topic; tasks publish through it.
    topics: Arc<Topics>,
    started: Instant,
    /// Every started task's run and finish callback, awaited at shutdown.
    tasks: TaskTracker,
    /// Cancelled when the shutdown begins: /healthz turns 503, background work stops.
    stopping: CancellationToken,
    /// Cancelled once tasks are done at shutdown: connections close.
    close_connections: CancellationToken,
}

impl<A: App> Ctx<A> {
    /// Builds the sandbox and loads the tasks folder. Fails only on what makes serving
    /// impossible (an impossible pool size, an unreadable folder); a bad module is logged
    /// and listed, and the server starts without it.
    pub(crate) fn new(config: Config, app: A) -> anyhow::Result<Ctx<A>> {
        let sandbox = Arc::new(Sandbox::new(
            &EngineSettings {
                instances: config.task_workers,
                max_memory_bytes: config.limits.memory_bytes,
                memory_budget_bytes: config.memory_budget,
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
        let outbox_bytes = config.outbox_bytes;
        let metrics = Metrics::new();
        let topics = Arc::new(Topics::default());
        let capabilities = Arc::new(Capabilities::new(
            &config.capabilities,
            Arc::clone(&topics) as Arc<dyn Publisher>,
            metrics.capabilities.clone(),
        )?);
        Ok(Ctx {
            shared: Arc::new(Shared {
                dispatcher: Arc::new(Dispatcher::new(Caps {
                    task_workers: config.task_workers,
                    queue: config.queue,
                    per_connection: config.max_connection_tasks,
                    per_address: config.max_address_tasks,
                    input_bytes: config.queue_bytes,
                })),
                app,
                config,
                sandbox,
                registry,
                outboxes: Outboxes::new(outbox_bytes),
                metrics,
                capabilities,
                topics,
                started: Instant::now(),
                tasks: TaskTracker::new(),
                stopping: CancellationToken::new(),
                close_connections: CancellationToken::new(),
            }),
        })
    }

    /// The application.
    pub fn app(&self) -> &A {
        &self.shared.app
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The open connections' outboxes: send to one by id, or to all.
    pub fn connections(&self) -> &Outboxes {
        &self.shared.outboxes
    }

    /// Offers `message` to every open connection. It never waits on a reader: a connection
    /// whose outbox is full misses it (counted in `/metrics`). Returns how many took it.
    pub fn broadcast(&self, message: &impl Serialize) -> usize {
        let Some(text) = Text::json(message) else {
            return 0;
        };
        let fanout = self.shared.outboxes.broadcast(&text);
        self.shared.metrics.broadcast_missed(fanout.missed);
        fanout.reached
    }

    /// Sends `message` to connection `id`. Returns `false` if it is not open.
    pub async fn send_to(&self, id: u64, message: &impl Serialize) -> bool {
        match self.shared.outboxes.get(id) {
            Some(outbox) => outbox.send(message).await,
            None => false,
        }
    }

    /// Subscribes `client` to `topic`: what tasks publish to it reaches the client as
    /// `published` messages. Refused (and counted) for a topic that is not one, or past
    /// the per-connection cap.
    pub fn subscribe(&self, client: &Outbox, topic: &str) -> Result<(), WireError> {
        self.shared
            .topics
            .subscribe(client, topic)
            .map_err(|refusal| {
                let (reason, message) = match refusal {
                    SubscribeRefusal::BadTopic(why) => {
                        ("bad_topic", format!("cannot subscribe: {why}"))
                    }
                    SubscribeRefusal::TooManyTopics => (
                        "too_many_topics",
                        format!(
                            "cannot subscribe: a connection may hold at most {} topics; \
                             unsubscribe from one first",
                            super::topics::MAX_TOPICS_PER_CONNECTION
                        ),
                    ),
                };
                self.shared.metrics.subscribe_refused(reason);
                WireError::new(ErrorCode::BadRequest, message)
            })
    }

    /// Unsubscribes connection `id` from `topic`; whether it was subscribed.
    pub fn unsubscribe(&self, id: u64, topic: &str) -> bool {
        self.shared.topics.unsubscribe(id, topic)
    }

    /// Publishes `data` to `topic`'s subscribers as a task would, without a grant: for
    /// applications. Never waits; returns how many subscribers took it.
    pub fn publish(&self, topic: &str, data: &impl Serialize) -> usize {
        let Ok(data) = serde_json::value::to_raw_value(data) else {
            return 0;
        };
        let fanout = self.shared.topics.publish(topic, &data);
        self.shared
            .metrics
            .capabilities
            .publish_missed(fanout.missed);
        fanout.reached
    }

    /// Every task with its state, as `list` reports them.
    pub fn tasks(&self) -> Vec<TaskListing> {
        self.shared.registry.listing()
    }

    /// The names of the tasks that can run, as `hello` reports them.
    pub fn task_names(&self) -> Vec<String> {
        self.shared.registry.ready_names()
    }

    /// Modules and components loaded from the compile cache, and compiled afresh, so far;
    /// `None` without a cache (`--cache-dir`).
    pub fn compile_cache_counts(&self) -> Option<(usize, usize)> {
        self.shared.sandbox.cache_counts()
    }

    /// The counters of the `stats` message.
    pub fn stats(&self) -> Stats {
        let load = self.shared.dispatcher.load();
        let metrics = &self.shared.metrics;
        Stats {
            connections: self.shared.outboxes.len() as u64,
            queued: load.queued,
            running: load.running,
            completed: metrics.finished(),
            failed: metrics.failed(),
            rejected: metrics.rejected(),
            task_workers: self.shared.dispatcher.task_workers() as u64,
            uptime_ms: u64::try_from(self.shared.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Takes a place in the queue and an id for `task`, or says why not (`unknown_task`,
    /// `queue_full`, `shutdown`). Its progress and (by default) its outcome go to `submitter`.
    /// Nothing runs until [`Ctx::start`].
    pub fn admit(&self, task: NewTask, submitter: Option<&Outbox>) -> Result<Admitted, WireError> {
        self.try_admit(task, submitter).map_err(|refused| refused.0)
    }

    /// [`Ctx::admit`], giving the task back with the error (to say what was refused). Boxed:
    /// the error path is the rare one.
    pub(crate) fn try_admit(
        &self,
        task: NewTask,
        submitter: Option<&Outbox>,
    ) -> Result<Admitted, Box<(WireError, NewTask)>> {
        let module = match self.shared.registry.get(&task.task) {
            Ok(module) => module,
            Err(error) => return Err(Box::new((failures::lookup(error), task))),
        };
        let owner = submitter.map_or(APPLICATION_OWNER, |outbox| Owner {
            connection: outbox.id(),
            address: outbox.address(),
        });
        let input_bytes = task.input.len() as u64;
        let admission = match self.shared.dispatcher.admit(owner, input_bytes) {
            Ok(admission) => admission,
            Err(refusal) => return Err(Box::new((failures::refusal(refusal), task))),
        };
        let progress = submitter.map(|outbox| {
            Arc::new(ProgressThrottle::new(
                outbox.clone(),
                admission.task_id,
                task.reference.clone(),
            ))
        });
        let job = Job {
            task_id: admission.task_id,
            limits: module.limits.lowered_by(task.limits),
            input: task.input,
            reference: task.reference,
            submitter: submitter.cloned(),
            module,
            progress,
        };
        Ok(Admitted { admission, job })
    }

    /// Runs an admitted task in the pool: waits for a worker, calls `on_task`, logs and
    /// counts its end, then calls `on_finish` with the outcome.
    pub fn start(&self, admitted: Admitted) {
        let ctx = self.clone();
        let span = task_span(&admitted.job);
        self.shared.tasks.spawn(
            async move {
                let report = ctx.execute(admitted).await;
                let finish = AssertUnwindSafe(ctx.app().on_finish(&ctx, report));
                if let Err(panic) = finish.catch_unwind().await {
                    tracing::error!(
                        panic = failures::panic_message(panic.as_ref()),
                        "the finish callback panicked; the task's outcome may not have been delivered"
                    );
                }
            }
            .instrument(span),
        );
    }

    /// Swoole's `task`: admits and starts `task`, and returns its id. Its outcome goes to
    /// `on_finish`, which by default sends it to `submitter`.
    pub fn submit(&self, task: NewTask, submitter: Option<&Outbox>) -> Result<u64, WireError> {
        let admitted = self.admit(task, submitter)?;
        let task_id = admitted.job.task_id;
        self.start(admitted);
        Ok(task_id)
    }

    /// Swoole's `taskwait`: runs `task` and returns its outcome, waiting at most `timeout`,
    /// time in the queue included (the task's own wall-clock limit is lowered to it too). A
    /// task that could not be admitted fails with the code `rejected` would carry; one still
    /// running at the timeout is stopped and fails with `timeout`. `on_finish` is not called.
    ///
    /// These tasks have no submitter: they wait for a worker in one line shared by all the
    /// tasks an application starts itself, and their progress goes nowhere.
    pub async fn task_wait(&self, mut task: NewTask, timeout: Duration) -> Outcome {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        task.limits.timeout_ms = Some(
            task.limits
                .timeout_ms
                .map_or(timeout_ms, |asked| asked.min(timeout_ms)),
        );
        let admitted = match self.admit(task, None) {
            Ok(admitted) => admitted,
            Err(error) => {
                self.shared.metrics.task_rejected(error.code.as_str());
                return Outcome::Failed {
                    error,
                    fuel_used: None,
                };
            }
        };
        let span = task_span(&admitted.job);
        let run = self.execute(admitted).instrument(span);
        match tokio::time::timeout(timeout, run).await {
            Ok(report) => report.outcome,
            Err(_) => failures::wait_expired(timeout_ms),
        }
    }

    /// Swoole's `taskWaitMulti`: runs every task at once and returns their outcomes in the
    /// same order, all within one `timeout`.
    pub async fn task_wait_multi(
        &self,
        tasks: impl IntoIterator<Item = NewTask>,
        timeout: Duration,
    ) -> Vec<Outcome> {
        let waits = tasks.into_iter().map(|task| self.task_wait(task, timeout));
        futures_util::future::join_all(waits).await
    }

    /// Runs a job's module in a fresh sandbox: the default `task` callback.
    pub async fn run_in_sandbox(&self, job: &Job) -> Outcome {
        let mut spec = job.run_spec();
        spec.capabilities = Some(self.shared.capabilities.for_task(
            job.name(),
            Arc::clone(&job.module.grants),
            Duration::from_millis(job.limits.timeout_ms),
        ));
        self.shared.sandbox.run(&job.module.wasm, spec).await.into()
    }

    /// Cancels task `task_id` of connection `owner`: it ends `cancelled`.
    pub fn cancel(&self, owner: &Outbox, task_id: u64) -> Result<(), WireError> {
        if self.shared.dispatcher.cancel(owner.id(), task_id) {
            Ok(())
        } else {
            Err(failures::not_cancellable(task_id))
        }
    }

    /// Runs an admitted task to its end through the dispatcher, and logs and counts the end.
    async fn execute(&self, admitted: Admitted) -> super::Report {
        let Admitted { admission, job } = admitted;
        let timeout = Duration::from_millis(job.limits.timeout_ms);
        // A panic in the callback is that task's failure, not the server's.
        let run = AssertUnwindSafe(self.app().on_task(self, &job)).catch_unwind();
        let (output, elapsed) = self.shared.dispatcher.run(admission, timeout, run).await;
        let outcome = match output {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(panic)) => failures::panicked("task", panic.as_ref()),
            Err(stopped) => failures::stopped(stopped),
        };
        let fuel_used = outcome.fuel_used();
        self.shared
            .metrics
            .task_ended(outcome.label(), elapsed, fuel_used);
        // At debug: at tens of thousands of tasks a second, a line each costs a fifth of the
        // throughput. /metrics counts them.
        tracing::debug!(
            outcome = outcome.label(),
            elapsed_ms = elapsed.as_millis() as u64,
            fuel_used,
            "task ended"
        );
        super::Report {
            job,
            outcome,
            elapsed,
        }
    }
}

/// The span a task's logs carry.
fn task_span(job: &Job) -> tracing::Span {
    tracing::info_span!("task", task_id = job.task_id, task = %job.name())
}

/// What the network layer and the shutdown need: not for applications.
impl<A: App> Ctx<A> {
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub(crate) fn sandbox(&self) -> &Sandbox {
        &self.shared.sandbox
    }

    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.shared.registry
    }

    /// A connection closed: its subscriptions go.
    pub(crate) fn leave_topics(&self, id: u64) {
        self.shared.topics.leave(id);
    }

    pub(crate) fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.shared.dispatcher
    }

    /// Cancelled when the shutdown begins.
    pub(crate) fn stopping(&self) -> &CancellationToken {
        &self.shared.stopping
    }

    /// Whether the server still takes work (for /healthz).
    pub(crate) fn is_accepting(&self) -> bool {
        !self.shared.stopping.is_cancelled()
    }

    /// Resolves when connections must close (the last step of a shutdown).
    pub(crate) async fn closing_connections(&self) {
        self.shared.close_connections.cancelled().await;
    }

    /// The Prometheus text of `/metrics`, with the queue and running gauges read now.
    pub(crate) fn metrics_text(&self) -> String {
        let load = self.shared.dispatcher.load();
        let metrics = &self.shared.metrics;
        metrics.queued.set(load.queued as i64);
        metrics.running.set(load.running as i64);
        metrics
            .memory_reserved
            .set(i64::try_from(self.shared.sandbox.memory_reserved()).unwrap_or(i64::MAX));
        metrics.encode()
    }

    /// The first step of a shutdown: /healthz turns 503 and background work stops, while
    /// tasks are still taken.
    pub(crate) fn begin_drain(&self) {
        self.shared.stopping.cancel();
    }

    /// No new tasks (`shutdown`); queued and running ones go on.
    pub(crate) fn stop_taking_work(&self) {
        self.shared.stopping.cancel();
        self.shared.dispatcher.stop_admitting();
        self.shared.tasks.close();
    }

    /// Waits up to `within` for every started task and its finish callback; `false` if some
    /// were still going.
    pub(crate) async fn tasks_done(&self, within: Duration) -> bool {
        tokio::time::timeout(within, self.shared.tasks.wait())
            .await
            .is_ok()
    }

    /// Ends the queued and running tasks with `shutdown`.
    pub(crate) fn stop_running_tasks(&self) {
        self.shared.dispatcher.stop_starting();
        self.shared.dispatcher.stop_running();
    }

    /// Tells every connection to close.
    pub(crate) fn close_connections(&self) {
        self.shared.close_connections.cancel();
    }
}
