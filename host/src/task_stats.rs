//! Per-task figures for the dashboard, beside the Prometheus counters of [`crate::metrics`]:
//! counts by outcome, fuel, recent durations (for p50 and p99) and the most recent failures
//! with their messages, none of which a counter can give back.
//!
//! Every part is bounded: at most [`MAX_TASK_LABELS`] task names (later ones are counted
//! under [`OTHER_TASKS`], as in `/metrics`), [`DURATIONS_KEPT`] durations a task, and
//! [`FAILURES_KEPT`] failures with messages of at most [`MESSAGE_CHARS`] characters.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::metrics::{MAX_TASK_LABELS, OTHER_TASKS};

/// Durations kept per task for its percentiles: the latest ones, so that p99 follows what
/// the task does now rather than since the start.
pub const DURATIONS_KEPT: usize = 512;

/// Failures kept with their messages, newest first.
pub const FAILURES_KEPT: usize = 50;

/// Characters of a failure's message kept.
pub const MESSAGE_CHARS: usize = 300;

/// One task's figures.
#[derive(Debug, Default)]
struct PerTask {
    count: u64,
    by_outcome: BTreeMap<&'static str, u64>,
    fuel_used: u64,
    /// Microseconds, the newest at the back.
    durations: VecDeque<u64>,
}

/// A row of the dashboard's task table.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRow {
    pub task: String,
    /// Tasks that ended.
    pub count: u64,
    /// Ended tasks by outcome: `finished` or the failure code.
    pub by_outcome: BTreeMap<&'static str, u64>,
    /// Over the last [`DURATIONS_KEPT`] runs.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub fuel_used: u64,
}

/// A failed task, for the dashboard's list of recent failures.
#[derive(Debug, Clone, Serialize)]
pub struct RecentFailure {
    pub task_id: u64,
    pub task: String,
    pub code: &'static str,
    pub message: String,
    /// When it ended, milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub elapsed_ms: u64,
}

/// A task's end, as [`TaskStats::record`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct Ended<'a> {
    pub task_id: u64,
    pub task: &'a str,
    /// `finished` or the failure code.
    pub outcome: &'static str,
    /// The failure's message, if it failed.
    pub message: Option<&'a str>,
    pub elapsed: Duration,
    pub fuel_used: Option<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    tasks: BTreeMap<String, PerTask>,
    failures: VecDeque<RecentFailure>,
}

/// Std mutex: held to update or copy the figures, never across an `.await`.
#[derive(Debug, Default)]
pub struct TaskStats {
    inner: Mutex<Inner>,
}

impl TaskStats {
    /// Records one task's end.
    pub fn record(&self, ended: Ended<'_>) {
        let micros = u64::try_from(ended.elapsed.as_micros()).unwrap_or(u64::MAX);
        let mut inner = self.lock();
        let name = if inner.tasks.contains_key(ended.task) || inner.tasks.len() < MAX_TASK_LABELS {
            ended.task
        } else {
            OTHER_TASKS
        };
        // Allocates a key only for a name not seen before: this runs at every task's end.
        if !inner.tasks.contains_key(name) {
            inner.tasks.insert(name.to_owned(), PerTask::default());
        }
        let Some(task) = inner.tasks.get_mut(name) else {
            return;
        };
        task.count += 1;
        *task.by_outcome.entry(ended.outcome).or_default() += 1;
        task.fuel_used = task.fuel_used.saturating_add(ended.fuel_used.unwrap_or(0));
        if task.durations.len() == DURATIONS_KEPT {
            task.durations.pop_front();
        }
        task.durations.push_back(micros);
        if let Some(message) = ended.message {
            if inner.failures.len() == FAILURES_KEPT {
                inner.failures.pop_back();
            }
            inner.failures.push_front(RecentFailure {
                task_id: ended.task_id,
                task: name.to_owned(),
                code: ended.outcome,
                message: cut(message),
                at_ms: unix_ms(SystemTime::now()),
                elapsed_ms: micros / 1000,
            });
        }
    }

    /// The task table, by name.
    pub fn rows(&self) -> Vec<TaskRow> {
        let inner = self.lock();
        inner
            .tasks
            .iter()
            .map(|(name, task)| {
                let mut sorted: Vec<u64> = task.durations.iter().copied().collect();
                sorted.sort_unstable();
                TaskRow {
                    task: name.clone(),
                    count: task.count,
                    by_outcome: task.by_outcome.clone(),
                    p50_ms: percentile(&sorted, 0.50),
                    p99_ms: percentile(&sorted, 0.99),
                    fuel_used: task.fuel_used,
                }
            })
            .collect()
    }

    /// Ended tasks by task and outcome, for rates.
    pub fn counts(&self) -> BTreeMap<(String, &'static str), u64> {
        let inner = self.lock();
        let mut counts = BTreeMap::new();
        for (name, task) in &inner.tasks {
            for (outcome, count) in &task.by_outcome {
                counts.insert((name.clone(), *outcome), *count);
            }
        }
        counts
    }

    /// The most recent failures, newest first.
    pub fn recent_failures(&self) -> Vec<RecentFailure> {
        self.lock().failures.iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Poisoning would need a panic while held; the figures are still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `q` quantile of `sorted` microseconds, in milliseconds (nearest rank); 0 when empty.
fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

/// `message`, cut to [`MESSAGE_CHARS`] characters.
fn cut(message: &str) -> String {
    match message.char_indices().nth(MESSAGE_CHARS) {
        None => message.to_owned(),
        Some((end, _)) => format!("{}…", &message[..end]),
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended<'a>(task: &'a str, outcome: &'static str, ms: u64) -> Ended<'a> {
        Ended {
            task_id: 1,
            task,
            outcome,
            message: (outcome != "finished").then_some("it went wrong"),
            elapsed: Duration::from_millis(ms),
            fuel_used: Some(10),
        }
    }

    #[test]
    fn percentiles_come_from_the_latest_durations() {
        let stats = TaskStats::default();
        for ms in 1..=100 {
            stats.record(ended("echo", "finished", ms));
        }
        let rows = stats.rows();
        assert_eq!(rows[0].count, 100);
        assert_eq!((rows[0].p50_ms, rows[0].p99_ms), (50.0, 99.0));
        assert_eq!(rows[0].fuel_used, 1000);
        for _ in 0..DURATIONS_KEPT {
            stats.record(ended("echo", "finished", 7));
        }
        assert_eq!(stats.rows()[0].p99_ms, 7.0, "older durations are forgotten");
    }

    #[test]
    fn names_failures_and_messages_are_bounded() {
        let stats = TaskStats::default();
        let names: Vec<String> = (0..MAX_TASK_LABELS + 5).map(|n| format!("t{n}")).collect();
        for name in &names {
            stats.record(ended(name, "trap", 1));
        }
        let rows = stats.rows();
        assert_eq!(rows.len(), MAX_TASK_LABELS + 1);
        let other = rows.iter().find(|row| row.task == OTHER_TASKS).unwrap();
        assert_eq!(other.by_outcome["trap"], 5);
        let failures = stats.recent_failures();
        assert_eq!(failures.len(), FAILURES_KEPT);
        assert_eq!(failures[0].task, OTHER_TASKS, "newest first");
        let long = "x".repeat(10_000);
        stats.record(Ended {
            message: Some(&long),
            ..ended("t0", "trap", 1)
        });
        assert_eq!(
            stats.recent_failures()[0].message.chars().count(),
            MESSAGE_CHARS + 1
        );
    }
}
