//! The server's counters, kept once: `/metrics` encodes them in Prometheus text format and
//! `stats` reads the same values.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels by outcome: `finished` or a failure code.
type ByOutcome = Family<[(&'static str, &'static str); 1], Counter>;

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
    /// Ended tasks by outcome.
    tasks: ByOutcome,
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
    /// Time from a task's start (not its queueing) to its end.
    duration: Histogram,
    fuel_used: Counter,
    pub queued: Gauge,
    pub running: Gauge,
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
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("taskhost"),
            tasks: ByOutcome::default(),
            rejected: ByOutcome::default(),
            refused: ByOutcome::default(),
            closed: ByOutcome::default(),
            broadcast_missed: Counter::default(),
            finished_total: Counter::default(),
            failed_total: Counter::default(),
            rejected_total: Counter::default(),
            // 100 µs to about 100 s.
            duration: Histogram::new(exponential_buckets(0.0001, 4.0, 11)),
            fuel_used: Counter::default(),
            queued: Gauge::default(),
            running: Gauge::default(),
            connections: Gauge::default(),
            pool_warming: Gauge::default(),
            pool_warmed_slots: Gauge::default(),
            memory_reserved: Gauge::default(),
            capabilities: CapabilityCounters::default(),
            subscribe_refused: ByOutcome::default(),
        };
        let registry = &mut metrics.registry;
        registry.register(
            "tasks",
            "Tasks that ended, by outcome (finished or the failure code)",
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
            "Wall-clock time of tasks from start to end",
            metrics.duration.clone(),
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
        metrics
    }

    /// Counts a refused `subscribe`.
    pub fn subscribe_refused(&self, reason: &'static str) {
        self.subscribe_refused
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Records a task's end.
    pub fn task_ended(&self, outcome: &'static str, elapsed: Duration, fuel_used: Option<u64>) {
        self.tasks.get_or_create(&[("outcome", outcome)]).inc();
        if outcome == "finished" {
            self.finished_total.inc();
        } else {
            self.failed_total.inc();
        }
        self.duration.observe(elapsed.as_secs_f64());
        if let Some(fuel) = fuel_used {
            self.fuel_used.inc_by(fuel);
        }
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
