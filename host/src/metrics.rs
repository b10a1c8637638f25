//! The server's counters, kept once: `/metrics` encodes them in Prometheus text format and
//! `stats` reads the same values.
//!
//! Names follow Prometheus's guidelines: the `taskhost_` prefix, the unit as a suffix
//! (`_seconds`, `_bytes`), `_total` on counters; the `process_*` metrics of every Prometheus
//! client come from [`crate::process_metrics`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustc_hash::FxHashMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Labels by outcome: `finished` or a failure code.
type ByOutcome = Family<[(&'static str, &'static str); 1], Counter>;

/// Distinct `task` label values kept; a task first seen past it is counted as
/// [`OTHER_TASKS`]. Task names come from the files of the tasks folder (never from clients:
/// only admitted tasks are counted), so this bounds the series a folder of thousands of
/// modules would make, and the memory they hold.
pub const MAX_TASK_LABELS: usize = 200;

/// The `task` label of tasks past [`MAX_TASK_LABELS`].
pub const OTHER_TASKS: &str = "_other";

/// A task's name as a label value: shared, so that counting a task's end allocates nothing.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct TaskName(Arc<str>);

impl prometheus_client::encoding::EncodeLabelValue for TaskName {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(&self.0)
    }
}

/// The labels of a task's end.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskOutcome {
    task: TaskName,
    /// `finished` or the failure code.
    outcome: &'static str,
}

/// One task's label and handles on its most used series: clones share the families' values.
#[derive(Debug)]
struct TaskSeries {
    label: TaskName,
    /// `taskhost_tasks_total{task, outcome="finished"}`.
    finished: Counter,
    /// `taskhost_task_duration_seconds{task}`.
    duration: Histogram,
}

/// The label of per-task series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabel {
    task: TaskName,
}

/// Build facts, as the constant 1 of `taskhost_build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    /// The git commit the binary was built from (`unknown` outside a git checkout).
    commit: &'static str,
    wasmtime: &'static str,
}

/// What the binary was built from, for `taskhost_build_info` and the dashboard.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit, set by `build.rs` (`unknown` when built outside a git checkout).
pub const GIT_COMMIT: &str = env!("TASKHOST_GIT_COMMIT");
/// The wasmtime version in the binary, read from `Cargo.lock` by `build.rs`.
pub const WASMTIME_VERSION: &str = env!("TASKHOST_WASMTIME_VERSION");

/// Labels by capability and outcome.
type ByCapability = Family<[(&'static str, &'static str); 2], Counter>;

/// The counters of capability calls and publishing, cheap to clone: the capabilities keep
/// a clone and count into the same registry.
#[derive(Debug, Clone, Default)]
pub struct CapabilityCounters {
    /// Calls by capability and outcome (`ok` or the error code).
    calls: ByCapability,
    /// Calls no grant covered, by capability.
    refused: ByOutcome,
    /// Published messages a subscriber missed because its outbox was full.
    publish_missed: Counter,
}

impl CapabilityCounters {
    pub fn call(&self, capability: &'static str, outcome: &'static str) {
        self.calls
            .get_or_create(&[("capability", capability), ("outcome", outcome)])
            .inc();
    }

    pub fn refused(&self, capability: &'static str) {
        self.refused
            .get_or_create(&[("capability", capability)])
            .inc();
    }

    pub fn publish_missed(&self, missed: usize) {
        if missed > 0 {
            self.publish_missed.inc_by(missed as u64);
        }
    }
}

pub struct Metrics {
    registry: Registry,
    /// Ended tasks by task and outcome.
    tasks: Family<TaskOutcome, Counter>,
    /// Each `task` label value in use (at most [`MAX_TASK_LABELS`], and [`OTHER_TASKS`]),
    /// with handles on its series, so that a task's end looks up one map and not each family
    /// (their maps hash with SipHash under a lock each). Std mutex: held for a lookup, never
    /// across an `.await`. Names come from the tasks folder, not from clients, so a fast hash
    /// cannot be steered.
    task_series: Mutex<FxHashMap<Arc<str>, Arc<TaskSeries>>>,
    /// Task frames that were not accepted, by code.
    rejected: ByOutcome,
    /// Connections and requests refused at the door, by reason.
    refused: ByOutcome,
    /// Connections the server closed on a deadline, by reason.
    closed: ByOutcome,
    /// Broadcast messages a connection missed because its outbox was full.
    broadcast_missed: Counter,
    finished_total: Counter,
    failed_total: Counter,
    rejected_total: Counter,
    /// Time from a task's start (not its queueing) to its end, by task.
    duration: Family<TaskLabel, Histogram, fn() -> Histogram>,
    /// Time from a task's admission to its start (or to its end, when it never started).
    queue_wait: Histogram,
    /// Module and component files that failed to load (at start or on a change); the
    /// registry holds the other end and counts.
    pub module_load_failures: Counter,
    fuel_used: Counter,
    pub queued: Gauge,
    pub running: Gauge,
    /// `--task-workers`, so that a query can divide running tasks by it.
    pub task_workers: Gauge,
    pub connections: Gauge,
    /// 1 while the sandbox pool is being warmed at start, then 0.
    pub pool_warming: Gauge,
    /// Slots of the sandbox pool warmed at start.
    pub pool_warmed_slots: Gauge,
    /// Bytes of memories and tables running tasks hold, out of `--memory-budget`; read from
    /// the sandbox when /metrics is encoded.
    pub memory_reserved: Gauge,
    /// Capability calls, refusals and missed publishes.
    pub capabilities: CapabilityCounters,
    /// Subscriptions clients asked for and were refused, by reason.
    subscribe_refused: ByOutcome,
    /// Results kept past the connection (issue 12): see [`Durable`].
    pub durable: Durable,
    /// `--nats`: see [`ClusterCounters`].
    pub cluster: ClusterCounters,
}

/// The counters of `--nats`: what the broker and the other nodes did to this node's work.
#[derive(Clone, Default)]
pub struct ClusterCounters {
    /// Tasks pulled here whose module version this node lacks (left to other nodes).
    pub module_missing: Counter,
    /// Tasks pulled here that the broker had offered before (a node died, or lacked the
    /// module, or missed its heartbeat).
    pub redelivered: Counter,
    /// Tasks whose result was kept already when this node ended them: they ran twice.
    pub ran_twice: Counter,
    /// 1 while connected to the broker.
    pub broker_connected: Gauge,
    /// Tasks this node follows for its connections now.
    pub followed: Gauge,
}

impl ClusterCounters {
    fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("cluster");
        registry.register(
            "module_missing",
            "Tasks pulled whose module version this node lacks; left to other nodes",
            self.module_missing.clone(),
        );
        registry.register(
            "redelivered",
            "Tasks pulled that the broker had offered before (a node died or lacked the module)",
            self.redelivered.clone(),
        );
        registry.register(
            "ran_twice",
            "Tasks that ended here after another run's result was kept (at-least-once)",
            self.ran_twice.clone(),
        );
        registry.register(
            "broker_connected",
            "1 while this node is connected to the NATS broker",
            self.broker_connected.clone(),
        );
        registry.register(
            "followed",
            "Tasks this node follows for its connections (submitted here or attached)",
            self.followed.clone(),
        );
    }
}

/// The counters of kept results, `attach`, idempotency keys, retries and dead letters.
#[derive(Default)]
pub struct Durable {
    /// `attach` requests and repeated keys, by outcome.
    attaches: ByOutcome,
    /// Terminal messages kept now, and their bytes; read from the store at /metrics.
    pub results_kept: Gauge,
    pub results_bytes: Gauge,
    /// Kept results dropped, by reason (`expired`, `bytes`).
    evicted: ByOutcome,
    /// Attempts that failed and ran again, by their failure code.
    retries: ByOutcome,
    /// Tasks that failed every attempt: ever, and kept now (read at /metrics).
    dead_letters: Counter,
    pub dead_letters_kept: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::default(),
            tasks: Family::default(),
            task_series: Mutex::new(FxHashMap::default()),
            rejected: ByOutcome::default(),
            refused: ByOutcome::default(),
            closed: ByOutcome::default(),
            broadcast_missed: Counter::default(),
            finished_total: Counter::default(),
            failed_total: Counter::default(),
            rejected_total: Counter::default(),
            duration: Family::new_with_constructor(duration_histogram),
            // 100 µs to about 100 s.
            queue_wait: Histogram::new(exponential_buckets(0.0001, 4.0, 11)),
            module_load_failures: Counter::default(),
            fuel_used: Counter::default(),
            queued: Gauge::default(),
            running: Gauge::default(),
            task_workers: Gauge::default(),
            connections: Gauge::default(),
            pool_warming: Gauge::default(),
            pool_warmed_slots: Gauge::default(),
            memory_reserved: Gauge::default(),
            durable: Durable::default(),
            cluster: ClusterCounters::default(),
            capabilities: CapabilityCounters::default(),
            subscribe_refused: ByOutcome::default(),
        };
        metrics
            .registry
            .register_collector(Box::new(crate::process_metrics::ProcessMetrics));
        let registry = metrics.registry.sub_registry_with_prefix("taskhost");
        registry.register(
            "tasks",
            "Tasks that ended, by task and outcome (finished or the failure code); tasks past \
             the 200th name are labelled task=\"_other\"",
            metrics.tasks.clone(),
        );
        registry.register(
            "rejected",
            "Task frames that were rejected, by code",
            metrics.rejected.clone(),
        );
        registry.register(
            "refused",
            "Connections and requests refused before serving, by reason (max_connections, \
             max_connections_per_ip, host, origin, token, bad_upgrade)",
            metrics.refused.clone(),
        );
        registry.register(
            "closed",
            "Connections the server closed on a deadline, by reason (slow_client, \
             ping_timeout, frame_timeout)",
            metrics.closed.clone(),
        );
        registry.register(
            "broadcast_missed",
            "Broadcast messages a connection missed because its outbox was full",
            metrics.broadcast_missed.clone(),
        );
        registry.register(
            "task_duration_seconds",
            "Wall-clock time of tasks from start to end, by task",
            metrics.duration.clone(),
        );
        registry.register(
            "task_queue_wait_seconds",
            "Time tasks waited in the queue for a task worker, from admission to start",
            metrics.queue_wait.clone(),
        );
        registry.register(
            "module_load_failures",
            "Task module files that failed to load, at start or when the folder changed",
            metrics.module_load_failures.clone(),
        );
        registry.register(
            "build",
            "The version, git commit and wasmtime version of this binary",
            Info::new(BuildLabels {
                version: VERSION,
                commit: GIT_COMMIT,
                wasmtime: WASMTIME_VERSION,
            }),
        );
        registry.register(
            "fuel_used",
            "Fuel consumed by sandboxed tasks",
            metrics.fuel_used.clone(),
        );
        registry.register(
            "queue_depth",
            "Accepted tasks waiting for a task worker",
            metrics.queued.clone(),
        );
        registry.register(
            "running_tasks",
            "Tasks running now",
            metrics.running.clone(),
        );
        registry.register(
            "task_workers",
            "Tasks that may run at once (--task-workers)",
            metrics.task_workers.clone(),
        );
        registry.register(
            "connections",
            "Open WebSocket connections",
            metrics.connections.clone(),
        );
        registry.register(
            "pool_warming",
            "1 while the sandbox pool is being warmed at start (--warm-slots), then 0",
            metrics.pool_warming.clone(),
        );
        registry.register(
            "pool_warmed_slots",
            "Slots of the sandbox pool warmed at start",
            metrics.pool_warmed_slots.clone(),
        );
        registry.register(
            "memory_reserved_bytes",
            "Bytes of linear memories and tables that running tasks hold, out of \
             --memory-budget",
            metrics.memory_reserved.clone(),
        );
        registry.register(
            "capability_calls",
            "Capability calls of tasks, by capability (kv, sql, mail, publish, http) and \
             outcome (ok or the error code)",
            metrics.capabilities.calls.clone(),
        );
        registry.register(
            "capability_refused",
            "Capability calls that no grant of the task's manifest covered, by capability",
            metrics.capabilities.refused.clone(),
        );
        registry.register(
            "publish_missed",
            "Published messages a subscriber missed because its outbox was full",
            metrics.capabilities.publish_missed.clone(),
        );
        registry.register(
            "subscribe_refused",
            "subscribe messages refused, by reason (bad_topic, too_many_topics)",
            metrics.subscribe_refused.clone(),
        );
        metrics.durable.register(registry);
        metrics.cluster.register(registry);
        metrics
    }

    /// Reports `taskhost_module_loads_total{from="cache"|"compiler"}` from `read`, at each
    /// scrape: the modules and components loaded since start (the built-in pool-warming
    /// module among them), by where their compiled code came from. `read` gives `None`
    /// without a compile cache (`--no-cache`), and the series are then left out. An operator
    /// sees whether a restart found its code (a container whose cache volume is missing
    /// compiles everything again, and starts seconds later).
    pub fn count_module_loads(
        &mut self,
        read: impl Fn() -> Option<(usize, usize)> + Send + Sync + 'static,
    ) {
        self.registry
            .sub_registry_with_prefix("taskhost")
            .register_collector(Box::new(ModuleLoads(Box::new(read))));
    }

    /// Counts an `attach` (or a repeated `key`) by outcome: the task's state, `same_key`,
    /// `not_found` or `refused`.
    pub fn attach(&self, outcome: &'static str) {
        self.durable
            .attaches
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    /// Counts kept results dropped before anyone read them again.
    pub fn results_evicted(&self, expired: u64, over_bytes: u64) {
        let evicted = &self.durable.evicted;
        if expired > 0 {
            evicted
                .get_or_create(&[("reason", "expired")])
                .inc_by(expired);
        }
        if over_bytes > 0 {
            evicted
                .get_or_create(&[("reason", "bytes")])
                .inc_by(over_bytes);
        }
    }

    /// Counts a refused `subscribe`.
    pub fn subscribe_refused(&self, reason: &'static str) {
        self.subscribe_refused
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Records a task's end: `elapsed` running, after `queue_wait` in the queue.
    pub fn task_ended(
        &self,
        task: &str,
        outcome: &'static str,
        elapsed: Duration,
        queue_wait: Duration,
        fuel_used: Option<u64>,
    ) {
        let series = self.task_series(task);
        if outcome == "finished" {
            series.finished.inc();
            self.finished_total.inc();
        } else {
            self.tasks
                .get_or_create(&TaskOutcome {
                    task: series.label.clone(),
                    outcome,
                })
                .inc();
            self.failed_total.inc();
        }
        series.duration.observe(elapsed.as_secs_f64());
        self.queue_wait.observe(queue_wait.as_secs_f64());
        if let Some(fuel) = fuel_used {
            self.fuel_used.inc_by(fuel);
        }
    }

    /// The series of task `name`: under its own label, or [`OTHER_TASKS`] once
    /// [`MAX_TASK_LABELS`] other names are in use.
    fn task_series(&self, name: &str) -> Arc<TaskSeries> {
        let mut series = self.task_series.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = series.get(name) {
            return Arc::clone(found);
        }
        let label: Arc<str> = if series.len() < MAX_TASK_LABELS {
            Arc::from(name)
        } else if let Some(other) = series.get(OTHER_TASKS) {
            // Every task past the cap ends here: no allocation for them.
            return Arc::clone(other);
        } else {
            Arc::from(OTHER_TASKS)
        };
        Arc::clone(series.entry(label).or_insert_with_key(|label| {
            let label = TaskName(Arc::clone(label));
            Arc::new(TaskSeries {
                finished: self
                    .tasks
                    .get_or_create(&TaskOutcome {
                        task: label.clone(),
                        outcome: "finished",
                    })
                    .clone(),
                duration: self
                    .duration
                    .get_or_create(&TaskLabel {
                        task: label.clone(),
                    })
                    .clone(),
                label,
            })
        }))
    }

    pub fn task_rejected(&self, code: &'static str) {
        self.rejected.get_or_create(&[("code", code)]).inc();
        self.rejected_total.inc();
    }

    /// Counts a connection or request refused before it was served.
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&[("reason", reason)]).inc();
    }

    /// Counts a connection closed on a deadline.
    pub fn closed(&self, reason: &'static str) {
        self.closed.get_or_create(&[("reason", reason)]).inc();
    }

    /// Counts broadcast messages that `missed` connections did not get.
    pub fn broadcast_missed(&self, missed: usize) {
        if missed > 0 {
            self.broadcast_missed.inc_by(missed as u64);
        }
    }

    pub fn finished(&self) -> u64 {
        self.finished_total.get()
    }

    pub fn failed(&self) -> u64 {
        self.failed_total.get()
    }

    pub fn rejected(&self) -> u64 {
        self.rejected_total.get()
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

impl Durable {
    /// Counts a failed attempt that runs again.
    pub fn task_retried(&self, code: &'static str) {
        self.retries.get_or_create(&[("code", code)]).inc();
    }

    /// Counts a task that failed every attempt.
    pub fn dead_letter(&self) {
        self.dead_letters.inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "retries",
            "Failed attempts that ran again (manifest retries), by failure code",
            self.retries.clone(),
        );
        registry.register(
            "dead_letters",
            "Tasks that failed every attempt their manifest allowed",
            self.dead_letters.clone(),
        );
        registry.register(
            "dead_letters_kept",
            "Dead letters kept now (--dead-letters, --dead-letter-bytes)",
            self.dead_letters_kept.clone(),
        );
        registry.register(
            "attach",
            "attach requests and tasks whose key named a task already, by outcome (queued, \
             running, retrying, ended, same_key, not_found, refused)",
            self.attaches.clone(),
        );
        registry.register(
            "results_kept",
            "Terminal messages kept for attach (--result-ttl)",
            self.results_kept.clone(),
        );
        registry.register(
            "results_kept_bytes",
            "Bytes of kept terminal messages, out of --result-bytes",
            self.results_bytes.clone(),
        );
        registry.register(
            "results_evicted",
            "Kept results dropped, by reason (expired: --result-ttl; bytes: --result-bytes)",
            self.evicted.clone(),
        );
    }
}

/// A task duration histogram: 100 µs to about 100 s.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

/// The collector of [`Metrics::count_module_loads`]: modules loaded from the compile cache
/// and compiled afresh, as the sandbox counts them.
struct ModuleLoads(Box<dyn Fn() -> Option<(usize, usize)> + Send + Sync>);

impl std::fmt::Debug for ModuleLoads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModuleLoads")
    }
}

impl Collector for ModuleLoads {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some((from_cache, compiled)) = (self.0)() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "module_loads",
            "Modules and components loaded since start (the built-in pool-warming modules \
             among them), by where their compiled code came from: the compile cache \
             (--cache-dir) or the compiler",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (from, count) in [("cache", from_cache), ("compiler", compiled)] {
            ConstCounter::new(count as u64).encode(family.encode_family(&[("from", from)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task's end counts in its own series through the cached handles, failures by code,
    /// and names past the cap in `_other`'s.
    #[test]
    fn task_ends_are_counted_per_task_and_outcome() {
        let metrics = Metrics::new();
        let second = Duration::from_secs(1);
        metrics.task_ended("echo", "finished", second, Duration::ZERO, Some(5));
        metrics.task_ended("echo", "finished", second, Duration::ZERO, Some(5));
        metrics.task_ended("echo", "exit", second, Duration::ZERO, None);
        for n in 0..=MAX_TASK_LABELS {
            metrics.task_ended(&format!("t{n}"), "finished", second, Duration::ZERO, None);
        }
        let text = metrics.encode();
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(
            has(r#"taskhost_tasks_total{task="echo",outcome="finished"} 2"#),
            "{text}"
        );
        assert!(
            has(r#"taskhost_tasks_total{task="echo",outcome="exit"} 1"#),
            "{text}"
        );
        assert!(
            has(r#"taskhost_task_duration_seconds_count{task="echo"} 3"#),
            "{text}"
        );
        // "echo" took the first of the 200 labels: the last two names count as `_other`,
        // the first of them making its series and the second finding it.
        for late in [MAX_TASK_LABELS - 1, MAX_TASK_LABELS] {
            assert!(!text.contains(&format!("task=\"t{late}\"")), "{text}");
        }
        assert!(
            has(r#"taskhost_tasks_total{task="_other",outcome="finished"} 2"#),
            "{text}"
        );
    }
}
