//! The live feed behind `/dashboard`: a client sends `{"type":"watch"}` on its WebSocket and
//! is sent a `watch` message once a second until it closes (`docs/PROTOCOL.md`).
//!
//! One sampler runs for the server's whole life, watched or not: each second it records the
//! load into the 15-minute [`History`] and the tasks per second by task and outcome, then
//! builds one message and offers it to every watcher. A watcher whose outbox is full misses
//! that second (it never holds up the sampler or other clients) and gets the samples it
//! missed with the next message it takes. Watchers are connections, so they are bounded and
//! counted like any other.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::App;
use super::context::Ctx;
use crate::history::{History, Sample};
use crate::metrics::{GIT_COMMIT, VERSION, WASMTIME_VERSION};
use crate::outbox::{Outbox, Text};
use crate::process_metrics::ProcessReading;
use crate::protocol::{DeadLetters, TaskListing};
use crate::task_stats::{RecentFailure, TaskRow, unix_ms};

/// How often the sampler samples and watchers are sent a message.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The feed's state, shared by the sampler and the `watch` requests. Std mutexes: held to
/// copy or update, never across an `.await`.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    history: Mutex<History>,
    /// Each watching connection, and the time of the newest sample it has been sent.
    watchers: Mutex<HashMap<u64, u64>>,
    /// Tasks per second by task and outcome over the latest second.
    rates: Mutex<Vec<Rate>>,
}

/// Tasks of one task and outcome that ended per second.
#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    pub task: String,
    pub outcome: &'static str,
    pub per_second: f64,
}

/// The `watch` message.
#[derive(Debug, Serialize)]
struct WatchMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    at_ms: u64,
    build: Build,
    server: ServerNow,
    /// Samples the watcher has not been sent yet, oldest first (the last 15 minutes in the
    /// first message).
    history: &'a [Sample],
    rates: &'a [Rate],
    tasks: &'a [TaskRow],
    failures: &'a [RecentFailure],
    modules: &'a [TaskListing],
    /// The newest dead letters (at most [`DEAD_LETTERS_SHOWN`], newest first, without their
    /// inputs: `{"type":"dead"}` gives those) and the counts.
    dead: &'a DeadLetters,
}

/// Dead letters a `watch` message carries.
pub const DEAD_LETTERS_SHOWN: usize = 20;

#[derive(Debug, Serialize)]
struct Build {
    version: &'static str,
    commit: &'static str,
    wasmtime: &'static str,
}

/// The server's numbers now.
#[derive(Debug, Serialize)]
struct ServerNow {
    uptime_ms: u64,
    connections: u64,
    watchers: u64,
    queued: u64,
    running: u64,
    task_workers: u64,
    busy: f64,
    completed: u64,
    failed: u64,
    rejected: u64,
    module_load_failures: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    resident_memory_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_seconds: Option<f64>,
}

impl<A: App> Ctx<A> {
    /// `watch`: sends `client` a `watch` message now, with the last 15 minutes, and one a
    /// second after that until it closes.
    pub async fn watch(&self, client: &Outbox) {
        let history = self.watch_state().lock_history().since(0);
        let latest = history.last().map_or(0, |sample| sample.at_ms);
        client.send_text(self.watch_message(&history)).await;
        self.watch_state()
            .lock_watchers()
            .insert(client.id(), latest);
    }

    /// The sampler: every [`WATCH_INTERVAL`] until connections close, a sample, the rates,
    /// and a message to each watcher.
    pub(crate) async fn run_watch_feed(self) {
        let mut ticks = tokio::time::interval(WATCH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut previous = (Instant::now(), self.task_stats().counts());
        loop {
            tokio::select! {
                () = self.closing_connections() => return,
                _ = ticks.tick() => {}
            }
            let counts = self.task_stats().counts();
            let seconds = previous.0.elapsed().as_secs_f64().max(0.001);
            let rates: Vec<Rate> = counts
                .iter()
                .filter_map(|((task, outcome), count)| {
                    let before = previous.1.get(&(task.clone(), outcome)).copied();
                    let ended = count - before.unwrap_or(0);
                    (ended > 0).then(|| Rate {
                        task: task.clone(),
                        outcome,
                        per_second: ended as f64 / seconds,
                    })
                })
                .collect();
            let (finished, failed) = rates.iter().fold((0.0, 0.0), |(ok, bad), rate| {
                if rate.outcome == "finished" {
                    (ok + rate.per_second, bad)
                } else {
                    (ok, bad + rate.per_second)
                }
            });
            previous = (Instant::now(), counts);
            let stats = self.stats();
            self.watch_state().lock_history().push(Sample {
                at_ms: unix_ms(SystemTime::now()),
                running: stats.running,
                queued: stats.queued,
                busy: busy(stats.running, stats.task_workers),
                connections: stats.connections,
                finished_per_second: finished,
                failed_per_second: failed,
            });
            *self.watch_state().lock_rates() = rates;
            self.send_to_watchers();
        }
    }

    /// Offers each watcher the samples it has not had, and the rest as of now.
    fn send_to_watchers(&self) {
        let watchers: Vec<(u64, u64)> = self
            .watch_state()
            .lock_watchers()
            .iter()
            .map(|(id, sent)| (*id, *sent))
            .collect();
        if watchers.is_empty() {
            return;
        }
        // Most watchers are up to date: one message serves them all.
        let latest = self.watch_state().lock_history().latest_ms();
        let mut messages: BTreeMap<u64, Text> = BTreeMap::new();
        for (id, sent) in watchers {
            let Some(outbox) = self.connections().get(id) else {
                self.watch_state().lock_watchers().remove(&id);
                continue;
            };
            let text = messages
                .entry(sent)
                .or_insert_with(|| {
                    let history = self.watch_state().lock_history().since(sent);
                    self.watch_message(&history)
                })
                .clone();
            if outbox.offer(text)
                && let Some(entry) = self.watch_state().lock_watchers().get_mut(&id)
            {
                *entry = latest;
            }
        }
    }

    /// A `watch` message with these history samples.
    fn watch_message(&self, history: &[Sample]) -> Text {
        let stats = self.stats();
        let process = ProcessReading::now();
        let message = WatchMessage {
            kind: "watch",
            at_ms: unix_ms(SystemTime::now()),
            build: Build {
                version: VERSION,
                commit: GIT_COMMIT,
                wasmtime: WASMTIME_VERSION,
            },
            server: ServerNow {
                uptime_ms: stats.uptime_ms,
                connections: stats.connections,
                watchers: self.watch_state().lock_watchers().len() as u64,
                queued: stats.queued,
                running: stats.running,
                task_workers: stats.task_workers,
                busy: busy(stats.running, stats.task_workers),
                completed: stats.completed,
                failed: stats.failed,
                rejected: stats.rejected,
                module_load_failures: self.metrics().module_load_failures.get(),
                resident_memory_bytes: process.map(|p| p.resident_bytes),
                cpu_seconds: process.map(|p| p.cpu_seconds),
            },
            history,
            rates: &self.watch_state().lock_rates().clone(),
            tasks: &self.task_stats().rows(),
            failures: &self.task_stats().recent_failures(),
            modules: &self.tasks(),
            dead: &self.dead_letter_box().recent(DEAD_LETTERS_SHOWN),
        };
        // Plain numbers and strings: encoding cannot fail.
        Text::json(&message).unwrap_or_else(|| Text::from(String::from("{}")))
    }
}

/// Running tasks over workers, 0 to 1.
fn busy(running: u64, task_workers: u64) -> f64 {
    (running as f64 / task_workers.max(1) as f64).min(1.0)
}

impl Watch {
    fn lock_history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_watchers(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_rates(&self) -> std::sync::MutexGuard<'_, Vec<Rate>> {
        self.rates.lock().unwrap_or_else(|e| e.into_inner())
    }
}
