//! What else took the machine's CPU while the soak ran: the hypervisor (`steal`) and processes
//! other than the server and this load generator.
//!
//! Echo's p99 follows the CPU the server gets. On a shared virtual machine that falls when the
//! host is squeezed by its neighbours, or when something else on the machine starts working,
//! and a two-minute soak whose last third ran on less CPU reads the slower answers as the
//! server degrading. Measured here (2026-12-02, 2 vCPU Intel Xeon): within one minute the
//! hypervisor's steal went from 0.09 to 0.72 cores and the unchanged server's echo p99 from 4.8
//! to 19 ms, four times as slow on a third fewer cores (latency under load grows faster than
//! the CPU falls, so no proportional allowance would cover it). Each sample therefore records
//! the cores taken away during its interval and prints them; when the last third had clearly
//! fewer cores than the first ([`squeezed`]), a latency's trend is not judged, and the soak
//! says so and why, rather than blame the server or pass it.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::procfs::{self, MachineTimes};

/// The counters at one moment.
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    machine: MachineTimes,
    server: Duration,
    own: Duration,
}

/// Cores taken from the soak over one interval, on average.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Taken {
    /// By the hypervisor.
    pub stolen_cores: f64,
    /// By processes other than the server and this load generator.
    pub other_cores: f64,
}

/// Follows the machine from one sample to the next.
pub struct Contention {
    cores: f64,
    last: Option<Reading>,
}

impl Contention {
    /// Starts following; `server_cpu` is the server's CPU time so far.
    pub fn start(cores: usize, server_cpu: Duration) -> Contention {
        Contention {
            cores: cores as f64,
            last: read(server_cpu),
        }
    }

    /// What was taken since the last call; zero when `/proc` could not be read.
    pub fn since_last(&mut self, server_cpu: Duration) -> Taken {
        let now = read(server_cpu);
        let taken = match (self.last, now) {
            (Some(before), Some(now)) => between(&before, &now),
            _ => Taken::default(),
        };
        self.last = now;
        taken
    }

    /// The cores left for the server and the load over an interval that lost `taken`.
    pub fn left(&self, taken: Taken) -> f64 {
        self.cores - taken.stolen_cores - taken.other_cores
    }
}

fn read(server_cpu: Duration) -> Option<Reading> {
    Some(Reading {
        at: Instant::now(),
        machine: procfs::machine_times().ok()?,
        server: server_cpu,
        own: procfs::cpu_time("self").ok()?,
    })
}

fn between(before: &Reading, now: &Reading) -> Taken {
    let seconds = now.at.duration_since(before.at).as_secs_f64();
    if seconds <= 0.0 {
        return Taken::default();
    }
    let delta = |now: Duration, before: Duration| now.saturating_sub(before).as_secs_f64();
    let busy = delta(now.machine.busy, before.machine.busy);
    let ours = delta(now.server, before.server) + delta(now.own, before.own);
    Taken {
        stolen_cores: delta(now.machine.stolen, before.machine.stolen) / seconds,
        // Clock ticks are coarse: a few hundredths either way are rounding, not a process.
        other_cores: ((busy - ours) / seconds).max(0.0),
    }
}

/// The share of the first third's cores the last third may lose before a latency's trend
/// cannot be told from the machine's: a tenth is within what the soak's own load moves
/// (steal rises with the work a virtual machine asks for).
pub const MAY_LOSE: f64 = 0.10;

/// Whether the last third of the run had clearly fewer cores left than the first (medians of
/// their samples' [`Contention::left`]).
pub fn squeezed(first_third_cores: f64, last_third_cores: f64) -> bool {
    last_third_cores < first_third_cores * (1.0 - MAY_LOSE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_last_third_with_a_tenth_fewer_cores_is_squeezed() {
        // The soak above: 1.91 cores left, then 1.28.
        assert!(squeezed(1.91, 1.28));
        assert!(squeezed(2.0, 1.79));
        assert!(!squeezed(2.0, 1.81));
        assert!(!squeezed(1.5, 1.9), "more cores late in the run");
        assert!(!squeezed(f64::NAN, 1.0) && !squeezed(1.0, f64::NAN));
    }

    #[test]
    fn the_machine_is_followed_from_one_sample_to_the_next() {
        let mut contention = Contention::start(2, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(50));
        let taken = contention.since_last(Duration::ZERO);
        assert!(
            taken.stolen_cores >= 0.0 && taken.other_cores >= 0.0,
            "{taken:?}"
        );
        assert!(contention.left(taken) <= 2.0);
    }
}
