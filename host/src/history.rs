//! The server's load over the last 15 minutes, one sample a second, for the dashboard's
//! chart: a ring of [`SAMPLES_KEPT`] samples, the oldest dropped first.

use std::collections::VecDeque;

use serde::Serialize;

/// 15 minutes of one sample a second.
pub const SAMPLES_KEPT: usize = 900;

/// The load at one moment, and the tasks that ended in the second before it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub running: u64,
    pub queued: u64,
    /// Running tasks over task workers, 0 to 1.
    pub busy: f64,
    pub connections: u64,
    /// Tasks that ended finished, and failed, per second since the previous sample.
    pub finished_per_second: f64,
    pub failed_per_second: f64,
}

#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

impl History {
    pub fn push(&mut self, sample: Sample) {
        if self.samples.len() == SAMPLES_KEPT {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The samples taken after `after_ms` (all of them for 0), oldest first.
    pub fn since(&self, after_ms: u64) -> Vec<Sample> {
        let newer = self
            .samples
            .partition_point(|sample| sample.at_ms <= after_ms);
        self.samples.range(newer..).copied().collect()
    }

    /// When the newest sample was taken; 0 before the first.
    pub fn latest_ms(&self) -> u64 {
        self.samples.back().map_or(0, |sample| sample.at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_ms: u64) -> Sample {
        Sample {
            at_ms,
            running: 0,
            queued: 0,
            busy: 0.0,
            connections: 0,
            finished_per_second: 0.0,
            failed_per_second: 0.0,
        }
    }

    #[test]
    fn it_keeps_the_last_fifteen_minutes() {
        let mut history = History::default();
        for second in 1..=(SAMPLES_KEPT as u64 + 100) {
            history.push(at(second * 1000));
        }
        let all = history.since(0);
        assert_eq!(all.len(), SAMPLES_KEPT);
        assert_eq!(all[0].at_ms, 101_000, "the oldest went first");
        assert_eq!(history.since(history.latest_ms() - 2000).len(), 2);
        assert!(history.since(history.latest_ms()).is_empty());
    }
}
