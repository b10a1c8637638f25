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
    /// Results kept past the connection (issue 12): see [`Durable`].
    pub durable: Durable,
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
            durable: Durable::default(),
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
        metrics.durable.register(&mut metrics.registry);
        metrics
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
