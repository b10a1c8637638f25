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
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::App;
use super::after_answer;
use super::cluster::{Cluster, ClusterPublisher};
use super::dead::DeadLetterBox;
use super::failures;
use super::job::{Admitted, Job, NewTask, Outcome};
use super::progress::ProgressThrottle;
use super::results::{KeyTaken, Opening, ResultBounds, ResultStore, ResultsSummary, TaskRecord};
use super::retry::RetryPolicy;
use super::topics::{SubscribeRefusal, Topics};
use crate::capabilities::{Capabilities, Publisher};
use crate::config::Config;
use crate::dispatch::{Admission, Caps, Dispatcher, Owner};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, Outboxes, Text};
use crate::protocol::{
    DeadLetter, DeadLetters, ErrorCode, MAX_DEAD_INPUT_BYTES, Stats, TaskListing, WireError,
};
use crate::registry::Registry;
use crate::sandbox::Sandbox;
use crate::task_stats::{Ended, TaskStats};

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
    /// Every task from admission on, and the terminal messages kept after.
    results: Arc<ResultStore>,
    /// Per-task figures and recent failures, for the dashboard.
    task_stats: TaskStats,
    /// The dashboard's feed: the load's history and who watches it.
    watch: super::watch::Watch,
    /// Tasks that failed every attempt their manifest allowed.
    dead_letters: DeadLetterBox,
    /// The host's side of the capabilities tasks are granted.
    capabilities: Arc<Capabilities>,
    /// Who is subscribed to which topic; tasks publish through it.
    topics: Arc<Topics>,
    /// This node's part in a cluster (`--nats`): tasks go through the broker.
    cluster: Option<Arc<Cluster>>,
    /// Where publishes go: this node's topics, and with `--nats` the other nodes' too.
    publisher: Arc<dyn Publisher>,
    started: Instant,
    /// Every started task's run and finish callback, awaited at shutdown.
    tasks: TaskTracker,
    /// The runtime tasks run on: the one the server was built in (connections may be served
    /// by another, see `Server::serve`).
    task_runtime: Option<tokio::runtime::Handle>,
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
            &config.engine_settings(config.task_workers),
            config.max_output,
        )?);
        let mut metrics = Metrics::new();
        let loads = Arc::clone(&sandbox);
        metrics.count_module_loads(move || loads.cache_counts());
        let registry = Arc::new(
            Registry::new(Arc::clone(&sandbox), &config.tasks_dir, config.limits)
                .counting_load_failures(metrics.module_load_failures.clone()),
        );
        let loading = Instant::now();
        let put_off = registry.load_all()?;
        let (from_cache, compiled) = sandbox.cache_counts().unwrap_or((0, 0));
        tracing::info!(
            tasks = registry.ready_names().len(),
            large_tasks_loading_after_start = put_off,
            from_cache,
            compiled,
            elapsed_ms = loading.elapsed().as_millis() as u64,
            "tasks loaded"
        );
        let outbox_bytes = config.outbox_bytes;
        let topics = Arc::new(Topics::default());
        let cluster = config.nats.clone().map(|settings| {
            Arc::new(Cluster::new(
                settings,
                config.result_ttl,
                config.result_bytes,
                metrics.cluster.clone(),
            ))
        });
        let publisher: Arc<dyn Publisher> = match &cluster {
            Some(cluster) => Arc::new(ClusterPublisher {
                topics: Arc::clone(&topics),
                cluster: Arc::clone(cluster),
            }),
            None => Arc::clone(&topics) as Arc<dyn Publisher>,
        };
        let capabilities = Arc::new(Capabilities::new(
            &config.capabilities,
            Arc::clone(&publisher),
            metrics.capabilities.clone(),
        )?);
        let dispatcher = Arc::new(Dispatcher::new(Caps {
            task_workers: config.task_workers,
            queue: config.queue,
            per_connection: config.max_connection_tasks,
            per_address: config.max_address_tasks,
            input_bytes: config.queue_bytes,
        }));
        if cluster.is_some() {
            // The broker's stream sequences number the clients' tasks; an application's own
            // tasks (task_wait) take ids far above them.
            dispatcher.number_from(1 << 52);
        }
        Ok(Ctx {
            shared: Arc::new(Shared {
                dispatcher,
                results: Arc::new(ResultStore::new(ResultBounds {
                    ttl: config.result_ttl,
                    bytes: config.result_bytes,
                    attached_per_connection: config.max_attached,
                })),
                dead_letters: DeadLetterBox::new(config.dead_letters, config.dead_letter_bytes),
                app,
                config,
                sandbox,
                registry,
                outboxes: Outboxes::new(outbox_bytes),
                metrics,
                task_stats: TaskStats::default(),
                watch: Default::default(),
                capabilities,
                topics,
                cluster,
                publisher,
                started: Instant::now(),
                tasks: TaskTracker::new(),
                task_runtime: tokio::runtime::Handle::try_current().ok(),
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
        if let Some(cluster) = &self.shared.cluster {
            cluster.broadcast(&text);
        }
        self.broadcast_here(&text)
    }

    /// Offers a frame to this node's open connections only (a broadcast from another node).
    pub(crate) fn broadcast_here(&self, text: &Text) -> usize {
        let fanout = self.shared.outboxes.broadcast(text);
        self.shared.metrics.broadcast_missed(fanout.missed);
        fanout.reached
    }

    /// Publishes to this node's subscribers only (a publish from another node).
    pub(crate) fn publish_raw(&self, topic: &str, data: &RawValue) {
        let fanout = self.shared.topics.publish(topic, data);
        self.shared
            .metrics
            .capabilities
            .publish_missed(fanout.missed);
    }

    /// This node's part in a cluster, with `--nats`.
    pub(crate) fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.shared.cluster.as_ref()
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
        let fanout = self.shared.publisher.publish(topic, &data);
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
    ///
    /// A task whose `key` names a task still queued, running or kept is refused with
    /// `bad_request` here; the default application attaches its client to that task
    /// instead.
    pub fn admit(&self, task: NewTask, submitter: Option<&Outbox>) -> Result<Admitted, WireError> {
        self.try_admit(task, submitter)
            .map_err(|refused| match *refused {
                Refused::Error(error, _) => error,
                Refused::SameKey { task_id, .. } => failures::key_taken(task_id),
            })
    }

    /// [`Ctx::admit`], giving the task back with the reason (to say what was refused, or to
    /// attach to the task its key names). Boxed: the refusals are the rare path.
    pub(crate) fn try_admit(
        &self,
        task: NewTask,
        submitter: Option<&Outbox>,
    ) -> Result<Admitted, Box<Refused>> {
        if let Some(key) = &task.key
            && let Some(task_id) = self.shared.results.task_for_key(key)
        {
            return Err(Box::new(Refused::SameKey { task_id, task }));
        }
        let module = match self.shared.registry.get(&task.task) {
            Ok(module) => module,
            Err(error) => return Err(Box::new(Refused::Error(failures::lookup(error), task))),
        };
        let owner = submitter.map_or(APPLICATION_OWNER, |outbox| Owner {
            connection: outbox.id(),
            address: outbox.address(),
        });
        let input_bytes = task.input.len() as u64;
        let admission = match self.shared.dispatcher.admit(owner, input_bytes) {
            Ok(admission) => admission,
            Err(refusal) => return Err(Box::new(Refused::Error(failures::refusal(refusal), task))),
        };
        let progress = Arc::new(ProgressThrottle::new(
            submitter.cloned(),
            admission.task_id,
            module.name.clone(),
            task.reference.clone(),
        ));
        let limits = module.limits.lowered_by(task.limits);
        let opening = Opening {
            task_id: admission.task_id,
            task: &module.name,
            reference: task.reference.as_ref(),
            key: task.key.as_deref(),
            limits,
            submitter: submitter.map(Outbox::id),
            audience: Arc::clone(&progress),
        };
        let tracked = match self.shared.results.open(opening) {
            Ok(tracked) => tracked,
            // Two tasks with one key, admitted at once: the first one registered runs.
            Err(KeyTaken { task_id }) => {
                return Err(Box::new(Refused::SameKey { task_id, task }));
            }
        };
        let job = Job {
            task_id: admission.task_id,
            limits,
            input: task.input,
            reference: task.reference,
            submitter: submitter.cloned(),
            module,
            progress: Some(progress),
            attempt: AtomicU32::new(1),
            announced: AtomicU32::new(0),
        };
        Ok(Admitted {
            admission,
            job,
            tracked,
            terminal_limit: None,
        })
    }

    /// A task pulled from the broker (`--nats`), to run here under the id the broker gave
    /// it: the module version it was accepted with, its messages to `relay` (which takes
    /// them to the submitter's node), its attempts counted from `first_attempt` (the
    /// broker's deliveries). Its terminal message is the caller's to send.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn admit_remote(
        &self,
        task_id: u64,
        module: Arc<crate::registry::TaskModule>,
        input: bytes::Bytes,
        limits: crate::limits::Limits,
        reference: Option<crate::protocol::Ref>,
        first_attempt: u32,
        relay: &Outbox,
        terminal_limit: usize,
    ) -> Result<Admitted, WireError> {
        let owner = Owner {
            connection: relay.id(),
            address: relay.address(),
        };
        let admission = self
            .shared
            .dispatcher
            .admit_as(owner, input.len() as u64, Some(task_id))
            .map_err(failures::refusal)?;
        let progress = Arc::new(ProgressThrottle::new(
            Some(relay.clone()),
            task_id,
            module.name.clone(),
            reference.clone(),
        ));
        let tracked = self
            .shared
            .results
            .open(Opening {
                task_id,
                task: &module.name,
                reference: reference.as_ref(),
                key: None,
                limits,
                submitter: Some(relay.id()),
                audience: Arc::clone(&progress),
            })
            .map_err(|taken| failures::key_taken(taken.task_id))?;
        let job = Job {
            task_id,
            limits,
            input,
            reference,
            submitter: None,
            module,
            progress: Some(progress),
            attempt: AtomicU32::new(first_attempt.max(1)),
            announced: AtomicU32::new(0),
        };
        Ok(Admitted {
            admission,
            job,
            tracked,
            terminal_limit: Some(terminal_limit),
        })
    }

    /// Runs an admitted task to its end (attempts, retries, the kept result) without the
    /// finish callback: for the cluster's workers, which send the terminal message.
    pub(super) async fn execute_admitted(&self, admitted: Admitted) -> super::Report {
        Box::pin(self.execute(Box::new(admitted))).await
    }

    /// Task `task_id` as it stands (queued, running, retrying, or ended with its terminal
    /// message kept), if it is known and its result has not expired. Read-only.
    pub fn task_record(&self, task_id: u64) -> Option<TaskRecord> {
        self.shared.results.peek(task_id)
    }

    /// Every task known: those queued or running, then the kept results, oldest first.
    /// Read-only; the messages are shared, not copied.
    pub fn task_records(&self) -> Vec<TaskRecord> {
        self.shared.results.records()
    }

    /// How many tasks and kept results the result store holds, and their bytes.
    pub fn results_summary(&self) -> ResultsSummary {
        self.shared.results.summary()
    }

    /// Runs an admitted task in the pool: waits for a worker, calls `on_task`, logs and
    /// counts its end, then calls `on_finish` with the outcome. Call it once the task is
    /// announced (the default application's `accepted`): a task that finds a worker free
    /// sends its `started` from here, before this returns.
    pub fn start(&self, admitted: Admitted) {
        self.start_announcing(admitted, true);
    }

    /// [`Ctx::start`]; `announce_now`: whether a task that finds a worker free says it
    /// began (`started`) at once, from this thread. It goes out in the same write as the
    /// `accepted` before it, where from the task's thread it was a message of its own and a
    /// wake-up of the connection's thread for it, one per task (docs/PERFORMANCE.md, "`started`
    /// sent with `accepted`"). A task that waits in line says it when its turn comes.
    fn start_announcing(&self, admitted: Admitted, announce_now: bool) {
        let span = task_span(&admitted.job);
        // `admitted` boxed, and each step a temporary of its own statement: the future holds
        // one step at a time (a named future, or an argument kept beside its destructured
        // parts, keeps its room for the future's whole life): 4,032 -> 1,560 bytes a task,
        // and 1,536 (the allocator's class below 1,792) with no `async fn` among its steps.
        // The future is boxed before it is spawned: spawning moves it through three
        // wrappers into tokio's task cell, a copy at each; boxed, they move a pointer
        // (a fifth of the server's memmove time per echo task). docs/PERFORMANCE.md has both.
        let mut admitted = Box::new(admitted);
        // Its turn for a worker is taken here, in the order the connection sent its tasks,
        // not in the spawned future: the task runtime's threads may poll them in any order.
        admitted.admission.take_turn();
        if announce_now && admitted.admission.has_worker() {
            self.begin(&admitted.job, admitted.job.attempt());
        }
        let fut = Box::pin(self.clone().task_future(admitted).instrument(span));
        match &self.shared.task_runtime {
            Some(runtime) => self.shared.tasks.spawn_on(fut, runtime),
            None => self.shared.tasks.spawn(fut),
        };
    }

    /// A started task's whole life: its run, then the `finish` callback, holding its spent
    /// store and worker until the answer is queued (`after_answer`). Every task that is
    /// queued, running or asleep holds this future (`tests::a_task_s_future_stays_small`);
    /// not an `async fn`, for the reason `execute` gives.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn's future holds its arguments twice; see the doc comment"
    )]
    fn task_future(self, admitted: Box<Admitted>) -> impl Future<Output = ()> + Send {
        after_answer::holding(async move {
            let report = self.execute(admitted).await;
            self.finish(report).await;
        })
    }

    /// Hands a task's report to the application's `finish` callback; a panic there is
    /// logged, not the server's end. A combinator rather than an `async fn`: the report moves
    /// into the callback's future once, where an `async fn` would also hold it as its
    /// argument, and the task's id and module are read from it for the log line, not held
    /// beside the whole run.
    fn finish(&self, report: super::Report) -> impl Future<Output = ()> + Send + '_ {
        let (task_id, module) = (report.job.task_id, Arc::clone(&report.job.module));
        AssertUnwindSafe(self.app().on_finish(self, report))
            .catch_unwind()
            .map(move |finished| {
                if let Err(panic) = finished {
                    tracing::error!(
                        task_id,
                        task = %module.name,
                        panic = failures::panic_message(panic.as_ref()),
                        "the finish callback panicked; the task's outcome may not have been delivered"
                    );
                }
            })
    }

    /// Swoole's `task`: admits and starts `task`, and returns its id. Its outcome goes to
    /// `on_finish`, which by default sends it to `submitter`.
    pub fn submit(&self, task: NewTask, submitter: Option<&Outbox>) -> Result<u64, WireError> {
        let admitted = self.admit(task, submitter)?;
        let task_id = admitted.job.task_id;
        // Not announced yet: the caller learns the id only now, and may announce it after.
        self.start_announcing(admitted, false);
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
        // Its caller holds the answer: nothing of this run is held for an answer of its own.
        let run = after_answer::not_holding(self.execute(Box::new(admitted))).instrument(span);
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
            &job.module.name,
            Arc::clone(&job.module.grants),
            Duration::from_millis(job.limits.timeout_ms),
        ));
        // A store an earlier run of this task left is dropped before this one takes a slot.
        after_answer::release();
        // Boxed: the run's future (2 KiB: the store, the fiber's call, the timers) would
        // otherwise be copied into every future that awaits this one as each is built.
        let (end, spent) = Box::pin(self.shared.sandbox.run(&job.module.wasm, spec)).await;
        after_answer::keep_store(spent);
        end.into()
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
    /// Not an `async fn`, nor is `attempts`: an `async fn`'s future holds each argument twice
    /// (as the argument and as the local it is moved to), and every task holds this one.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn's future holds its arguments twice; see the doc comment"
    )]
    fn execute(&self, admitted: Box<Admitted>) -> impl Future<Output = super::Report> + Send + '_ {
        async move {
            let Admitted {
                mut admission,
                job,
                mut tracked,
                terminal_limit,
            } = *admitted;
            let admitted_at = Instant::now();
            let (outcome, elapsed, attempts) = {
                let policy = RetryPolicy::of(&job.module.manifest);
                self.attempts(&mut admission, &job, &policy).await
            };
            // Time not spent running the last attempt: the queue, and with retries the earlier
            // attempts and their backoffs.
            let queue_wait = admitted_at.elapsed().saturating_sub(elapsed);
            let mut report = super::Report {
                job,
                outcome,
                elapsed,
                attempts,
                terminal: None,
            };
            // Judged before the end is counted and kept, so that /metrics, `stats` and the
            // node's kept result say what the submitter is told.
            if let Some(limit) = terminal_limit
                && report.fail_if_longer_than(limit)
                && let Outcome::Failed { error, .. } = &report.outcome
            {
                tracing::warn!(task_id = report.job.task_id, task = %report.job.name(), "{}", error.message);
            }
            let (job, outcome) = (&report.job, &report.outcome);
            let fuel_used = outcome.fuel_used();
            self.shared.metrics.task_ended(
                job.name(),
                outcome.label(),
                elapsed,
                queue_wait,
                fuel_used,
            );
            self.shared.task_stats.record(Ended {
                task_id: job.task_id,
                task: job.name(),
                outcome: outcome.label(),
                message: match outcome {
                    Outcome::Failed { error, .. } => Some(&error.message),
                    Outcome::Finished { .. } => None,
                },
                elapsed,
                fuel_used,
            });
            // At debug: at tens of thousands of tasks a second, a line each costs a fifth of the
            // throughput. /metrics counts them.
            tracing::debug!(
                outcome = outcome.label(),
                elapsed_ms = elapsed.as_millis() as u64,
                fuel_used,
                "task ended"
            );
            let exhausted = RetryPolicy::of(&job.module.manifest).exhausted(attempts, outcome);
            if exhausted {
                self.dead_letter(&report);
            }
            self.keep_result(&mut report, &mut tracked).await;
            report
        }
    }

    /// Runs the task's attempts: the first, and as many more as its retry policy gives it
    /// for the failures it names, each after its backoff (holding the queue place, not a
    /// worker). Returns the last attempt's outcome and time, and the number of attempts.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn's future holds its arguments twice; see the doc comment"
    )]
    fn attempts<'a>(
        &'a self,
        admission: &'a mut Admission,
        job: &'a Job,
        policy: &'a RetryPolicy<'a>,
    ) -> impl Future<Output = (Outcome, Duration, u32)> + Send + 'a {
        async move {
            let timeout = Duration::from_millis(job.limits.timeout_ms);
            // 1, or with `--nats` the broker's deliveries of the task so far.
            let mut attempt = job.attempt().max(1);
            loop {
                job.attempt.store(attempt, Ordering::Relaxed);
                // Polled only once the task holds a worker: `started` goes out then (unless
                // `Ctx::start` said it, having found a worker free), before anything the task
                // reports. A panic in the callback is that task's failure, not the server's.
                let run = async move {
                    self.begin(job, attempt);
                    AssertUnwindSafe(self.app().on_task(self, job))
                        .catch_unwind()
                        .await
                };
                let (output, elapsed, worker) = self
                    .shared
                    .dispatcher
                    .run_keeping_worker(admission, timeout, run)
                    .await;
                after_answer::keep_worker(worker);
                let outcome = match output {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(panic)) => {
                        // The task's span is at debug (see `task_span`): name the task here.
                        let _task =
                            tracing::error_span!("task", task_id = job.task_id, task = %job.name())
                                .entered();
                        failures::panicked("task", panic.as_ref())
                    }
                    Err(stopped) => failures::stopped(stopped),
                };
                if !policy.retries_after(attempt, &outcome) {
                    return (outcome, elapsed, attempt);
                }
                self.shared.metrics.durable.task_retried(outcome.label());
                let delay = policy.backoff(attempt);
                tracing::debug!(
                    attempt,
                    outcome = outcome.label(),
                    delay_ms = delay.as_millis() as u64,
                    "task failed; it runs again after the backoff"
                );
                attempt += 1;
                // The backoff holds no worker, and the next attempt's run needs the slot.
                after_answer::release();
                self.shared.results.retrying(job.task_id, attempt);
                if let Err(stopped) = self.shared.dispatcher.pause(admission, delay).await {
                    return (failures::stopped(stopped), Duration::ZERO, attempt - 1);
                }
            }
        }
    }

    /// Says that attempt `attempt` of `job` begins: its state in the result store, and
    /// `started` to its submitter and the connections attached to it. Once an attempt:
    /// `Ctx::start` may have said it already ([`Job::announced`]).
    fn begin(&self, job: &Job, attempt: u32) {
        if job.announced.swap(attempt, Ordering::Relaxed) == attempt {
            return;
        }
        self.shared.results.running(job.task_id, attempt);
        if let Some(progress) = &job.progress {
            progress.started(attempt);
        }
    }

    /// Keeps a task that failed every attempt in the dead-letter list.
    fn dead_letter(&self, report: &super::Report) {
        let Outcome::Failed { error, .. } = &report.outcome else {
            return;
        };
        let job = &report.job;
        let input = (job.input.len() <= MAX_DEAD_INPUT_BYTES)
            .then(|| std::str::from_utf8(&job.input).ok())
            .flatten()
            .and_then(|text| RawValue::from_string(text.to_owned()).ok());
        tracing::warn!(
            task_id = job.task_id,
            task = %job.name(),
            attempts = report.attempts,
            code = %error.code,
            "task failed every attempt; kept as a dead letter"
        );
        self.shared.metrics.durable.dead_letter();
        self.shared.dead_letters.push(DeadLetter {
            task_id: job.task_id,
            task: job.name().to_owned(),
            reference: job.reference.clone(),
            key: self
                .shared
                .results
                .peek(job.task_id)
                .and_then(|record| record.key),
            attempts: report.attempts,
            error: error.clone(),
            failed_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            input,
            input_bytes: job.input.len() as u64,
        });
    }

    /// The dead letters: tasks that failed every attempt their manifest allowed, oldest
    /// first, with how many there were since the start and how many were dropped to stay
    /// within `--dead-letters` and `--dead-letter-bytes`. Read-only (a copy).
    pub fn dead_letters(&self) -> DeadLetters {
        self.shared.dead_letters.snapshot()
    }

    pub(crate) fn dead_letter_box(&self) -> &DeadLetterBox {
        &self.shared.dead_letters
    }

    /// Keeps the task's terminal message in the result store and sends it to the
    /// connections attached to it; their last progress report first.
    async fn keep_result(&self, report: &mut super::Report, tracked: &mut super::results::Tracked) {
        report.job.flush_progress().await;
        let message = Text::from(report.terminal_reply().to_json());
        report.terminal = Some(message.clone());
        let label = report.outcome.label();
        let watchers = self.shared.results.end(tracked, label, message.clone());
        if watchers.is_empty() {
            return;
        }
        // Apart from the task: a slow attached reader holds up neither the submitter's
        // terminal message nor the shutdown beyond its own deadline.
        self.shared.tasks.spawn(async move {
            for watcher in watchers {
                // A closed connection cannot be told; it can attach again.
                watcher.send_text(message.clone()).await;
            }
        });
    }
}

/// Why [`Ctx::try_admit`] did not admit a task.
pub(crate) enum Refused {
    /// Refused, with the wire error that says why.
    Error(WireError, NewTask),
    /// Its key names task `task_id`, still queued, running or kept.
    SameKey { task_id: u64, task: NewTask },
}

/// The span a task's logs carry.
/// The span a task's future runs in, at debug: at info, every task would pay for a span in
/// the subscriber's registry and its fields formatted into a string (1-2 µs of CPU a task,
/// 15% of a native echo's; docs/PERFORMANCE.md). The errors logged inside a task name it
/// themselves.
fn task_span(job: &Job) -> tracing::Span {
    tracing::debug_span!("task", task_id = job.task_id, task = %job.name())
}

/// What the network layer and the shutdown need: not for applications.
impl<A: App> Ctx<A> {
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub(crate) fn results(&self) -> &ResultStore {
        &self.shared.results
    }

    pub(crate) fn task_stats(&self) -> &TaskStats {
        &self.shared.task_stats
    }

    pub(crate) fn watch_state(&self) -> &super::watch::Watch {
        &self.shared.watch
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
    /// Compiles, before returning, the large modules that the server would load after start
    /// (`taskhost run` and `check`, which want the one module they were given).
    pub(crate) fn load_large_tasks_now(&self) {
        self.registry().load_pending_now();
    }

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
            .task_workers
            .set(i64::try_from(self.shared.dispatcher.task_workers()).unwrap_or(i64::MAX));
        metrics
            .memory_reserved
            .set(i64::try_from(self.shared.sandbox.memory_reserved()).unwrap_or(i64::MAX));
        let results = self.shared.results.summary();
        let evicted = self.shared.results.take_evicted();
        metrics.results_evicted(evicted.expired, evicted.over_bytes);
        metrics.durable.results_kept.set(results.kept as i64);
        let (dead_kept, _) = self.shared.dead_letters.counts();
        metrics.durable.dead_letters_kept.set(dead_kept as i64);
        metrics
            .durable
            .results_bytes
            .set(i64::try_from(results.kept_bytes).unwrap_or(i64::MAX));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every task that is queued, running or asleep holds its boxed future: 10,000 sleepers
    /// hold 10,000. jemalloc hands out blocks in size classes (1,280, 1,536, 1,792 bytes
    /// here), so a few bytes over a class cost the whole step to the next. Measured with Rust
    /// 1.95: 1,536 bytes, spawned in its span (1,616 with `execute`, `attempts` and `finish`
    /// as `async fn`s and the task's name held beside the run).
    #[test]
    fn a_task_s_future_stays_small() {
        fn future_size<A, B, F>(_: impl FnOnce(A, B) -> F) -> usize {
            size_of::<tracing::instrument::Instrumented<F>>()
        }
        let task = future_size(Ctx::<super::super::ProtocolApp>::task_future);
        assert!(task <= 1536, "a task's future is {task} bytes");
    }

    /// The kind and `ref` of every frame queued for `drain` now, without waiting.
    fn queued_now(drain: &mut crate::outbox::Drain) -> Vec<String> {
        std::iter::from_fn(|| drain.try_next())
            .map(|queued| match queued.frame {
                crate::outbox::Frame::Text(text) => {
                    let message: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                    format!("{} {}", message["type"].as_str().unwrap(), message["ref"])
                }
                crate::outbox::Frame::Ping => "ping".to_owned(),
            })
            .collect()
    }

    /// The next `count` frames, [`queued_now`] each time the test lets the spawned tasks run.
    async fn frames_while_tasks_run(drain: &mut crate::outbox::Drain, count: usize) -> Vec<String> {
        let mut frames = Vec::new();
        let ran = tokio::time::timeout(Duration::from_secs(20), async {
            while frames.len() < count {
                tokio::task::yield_now().await;
                frames.extend(queued_now(drain));
            }
        });
        assert!(ran.await.is_ok(), "the tasks did not end: {frames:?}");
        frames
    }

    /// A task that finds a worker free says `started` from `Ctx::start`, queued behind its
    /// `accepted` before any thread has run the task (so both leave in one write); one that
    /// waits in line says it when its turn comes, from the task's own thread; so does a task
    /// an application starts with `submit`, which queues nothing for the client before it
    /// returns. On a current-thread runtime the spawned tasks run only when the test waits.
    #[tokio::test(flavor = "current_thread")]
    async fn a_task_with_a_worker_free_says_started_behind_its_accepted() {
        let dir = std::env::temp_dir().join(format!("started-early-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("noop.wat"), r#"(module (func (export "_start")))"#).unwrap();
        let mut config = Config::with_tasks_dir(&dir);
        config.task_workers = 1;
        config.warm_slots = 0;
        config.cache_dir = None;
        config.watch = false;
        let ctx = Ctx::new(config, super::super::ProtocolApp).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let peer: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (outbox, mut drain) = ctx.shared.outboxes.open(peer, peer.ip());
        let submit = |reference: &str| {
            let frame = format!(r#"{{"type":"task","task":"noop","ref":"{reference}"}}"#);
            let Ok(crate::protocol::Request::Task(request)) =
                crate::protocol::parse_frame(&frame, "noop")
            else {
                panic!("not a task: {frame}");
            };
            super::super::protocol_app::submit(&ctx, &outbox, request)
        };

        submit("a").await;
        assert_eq!(
            queued_now(&mut drain),
            [r#"accepted "a""#, r#"started "a""#]
        );
        // The one worker is a's: b waits in line, and its `started` waits for its turn.
        submit("b").await;
        assert_eq!(queued_now(&mut drain), [r#"accepted "b""#]);
        assert_eq!(
            frames_while_tasks_run(&mut drain, 3).await,
            [r#"finished "a""#, r#"started "b""#, r#"finished "b""#]
        );

        // An application's own task (`submit`): its caller learns the id only when `submit`
        // returns and may announce it after, so nothing is queued for the client before then.
        ctx.submit(NewTask::new("noop", &()), Some(&outbox))
            .unwrap();
        assert_eq!(queued_now(&mut drain), Vec::<String>::new());
        assert_eq!(
            frames_while_tasks_run(&mut drain, 2).await,
            ["started null", "finished null"]
        );
    }
}
