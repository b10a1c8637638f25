//! Scenario 1, echo throughput: 50 connections with 10 tasks in flight each, for as many
//! tasks per second as the server completes, and the server CPU each task costs.
//!
//! `echo` does almost nothing, so this is the fixed price of a task: the protocol, the queue,
//! and in the sandbox the instance (allocate a pool slot, instantiate, run `_start`, drop the
//! store and reset the slot). The CPU per task, sandbox minus native, is that price alone.

use serde::Serialize;

use super::{CpuShare, InTurns, Plan, Rate, RateLoad, rates_in_turns};
use crate::report::{Row, Target, Unit};
use crate::server::Server;

pub const NAME: &str = "1 echo throughput";
const CONNECTIONS: usize = 50;
const IN_FLIGHT: usize = 10;
/// A small JSON object, as a typical request would carry.
pub const ECHO_INPUT: &str = r#"{"text":"hello, taskhost"}"#;

#[derive(Debug, Clone, Serialize)]
pub struct EchoThroughput {
    /// Each server's windows, the median picked by server CPU per task; Swoole's when it
    /// runs (the peer column). Flattened: the JSON keeps `sandbox`, `native`, `peer` and
    /// `rounds` at the top of the scenario.
    #[serde(flatten)]
    pub turns: InTurns,
}

pub async fn run(
    sandbox: &Server,
    native: Option<&Server>,
    peer: Option<&Server>,
    plan: &Plan,
) -> anyhow::Result<EchoThroughput> {
    // Windows in turns: one window each swung the taskhost-to-Swoole ratio by a tenth between
    // runs of the same binaries on one VM (docs/PERFORMANCE.md).
    let load = RateLoad {
        connections: CONNECTIONS,
        in_flight: IN_FLIGHT,
        task: "echo",
        input: ECHO_INPUT,
    };
    let turns = rates_in_turns([Some(sandbox), native, peer], plan, load, cpu_per_task).await?;
    Ok(EchoThroughput { turns })
}

/// What this scenario measures, and picks the median window by.
fn cpu_per_task(rate: &Rate) -> f64 {
    rate.server_cpu_us_per_task
}

#[cfg(test)]
fn median_window(windows: Vec<Rate>) -> Option<Rate> {
    super::median_window(windows, cpu_per_task)
}

impl EchoThroughput {
    /// Where the cores went in every window, labelled by server, for the warning about
    /// windows that other processes disturbed: all of them, not only the ones reported.
    pub fn cpu_shares(&self) -> impl Iterator<Item = (&'static str, &CpuShare)> {
        self.turns.rounds.cpu_shares([
            "1 echo throughput, sandbox",
            "1 echo throughput, native",
            "1 echo throughput, swoole",
        ])
    }

    /// Where the cores went in the windows reported, and with more than one window per
    /// server, every window's figure.
    fn cpu_note(&self) -> String {
        let native = self.turns.native.as_ref();
        let peer = self.turns.peer.as_ref();
        let mut text = format!(
            "cores used by server / loadgen / other processes / stolen by the host: sandbox {}, native {}, {} {}",
            super::cores_text(&self.turns.sandbox.cpu),
            native.map_or("n/a".to_owned(), |n| super::cores_text(&n.cpu)),
            super::PEER,
            peer.map_or("n/a".to_owned(), |p| super::cores_text(&p.cpu)),
        );
        text += &self.turns.rounds.text(
            |window| format!("{:.1}", window.server_cpu_us_per_task),
            "µs",
        );
        text
    }

    pub fn rows(&self) -> Vec<Row> {
        let native = self.turns.native.as_ref();
        let peer = self.turns.peer.as_ref();
        vec![
            Row::new(
                NAME,
                "tasks/s (50 conn × 10)",
                Unit::TasksPerSecond,
                self.turns.sandbox.tasks_per_s,
            )
            .baseline("native", native.map(|n| n.tasks_per_s))
            .target(Target::RatioAtLeast { ratio: 0.35 })
            .peer(super::PEER, peer.map(|p| p.tasks_per_s)),
            Row::new(
                NAME,
                "server CPU per task",
                Unit::Micros,
                self.turns.sandbox.server_cpu_us_per_task,
            )
            .baseline("native", native.map(|n| n.server_cpu_us_per_task))
            .target(Target::ExcessAtMostBaseline)
            .peer(super::PEER, peer.map(|p| p.server_cpu_us_per_task))
            .peer_target(Target::RatioAtMost { ratio: 0.5 })
            .note(self.cpu_note()),
            Row::new(
                NAME,
                "finished p50 under load",
                Unit::Micros,
                self.turns.sandbox.latency.p50_us,
            )
            .baseline("native", native.map(|n| n.latency.p50_us))
            .peer(super::PEER, peer.map(|p| p.latency.p50_us)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::{Rounds, Window};
    use crate::stats::Percentiles;

    fn windows(cpu_us: &[f64]) -> Vec<Window> {
        cpu_us
            .iter()
            .map(|&us| Window::from(&window(us, &[])))
            .collect()
    }

    fn window(cpu_us: f64, unexpected: &[(&str, u64)]) -> Rate {
        Rate {
            connections: CONNECTIONS,
            in_flight_per_connection: IN_FLIGHT,
            tasks: 1_000,
            window_s: 1.0,
            tasks_per_s: 1_000.0,
            server_cpu_us_per_task: cpu_us,
            loadgen_cpu_us_per_task: 1.0,
            cpu: CpuShare::default(),
            latency: Percentiles::default(),
            fuel_per_task: 0.0,
            unexpected: unexpected
                .iter()
                .map(|(what, count)| ((*what).to_owned(), *count))
                .collect(),
        }
    }

    #[test]
    fn the_median_window_is_reported_with_every_windows_unexpected_answers() {
        let windows = vec![
            window(18.0, &[("rejected", 2)]),
            window(15.0, &[]),
            window(16.5, &[("rejected", 1), ("failed", 3)]),
        ];
        let median = median_window(windows).unwrap();
        assert_eq!(median.server_cpu_us_per_task, 16.5);
        assert_eq!(median.unexpected.get("rejected"), Some(&3));
        assert_eq!(median.unexpected.get("failed"), Some(&3));

        let two = median_window(vec![window(20.0, &[]), window(10.0, &[])]).unwrap();
        assert_eq!(
            two.server_cpu_us_per_task, 10.0,
            "the lower middle of an even count"
        );
        assert!(median_window(Vec::new()).is_none());
    }

    #[test]
    fn the_note_lists_every_window_only_when_there_were_several() {
        let one = EchoThroughput {
            turns: InTurns {
                sandbox: window(16.0, &[]),
                native: None,
                peer: None,
                rounds: Rounds {
                    sandbox: windows(&[16.0]),
                    ..Rounds::default()
                },
            },
        };
        assert!(!one.cpu_note().contains("windows"), "{}", one.cpu_note());
        let three = EchoThroughput {
            turns: InTurns {
                rounds: Rounds {
                    sandbox: windows(&[16.04, 15.0, 18.0]),
                    native: windows(&[9.0, 9.5, 10.0]),
                    peer: Vec::new(),
                },
                ..one.turns.clone()
            },
        };
        let note = three.cpu_note();
        assert!(
            note.contains("the median of 3 windows each, taken in turns: sandbox 16.0, 15.0, 18.0 µs, native 9.0, 9.5, 10.0 µs"),
            "{note}"
        );
    }

    #[test]
    fn every_window_is_looked_at_for_other_processes_not_only_the_median() {
        let mut sandbox = windows(&[16.0, 15.0, 18.0]);
        // The slowest window, not the one reported, was disturbed.
        sandbox[2].cpu.other_cores = 0.9;
        let echo = EchoThroughput {
            turns: InTurns {
                sandbox: window(16.0, &[]),
                native: None,
                peer: None,
                rounds: Rounds {
                    sandbox,
                    native: windows(&[9.0, 9.5, 10.0]),
                    peer: Vec::new(),
                },
            },
        };
        let shares: Vec<_> = echo.cpu_shares().collect();
        assert_eq!(shares.len(), 6);
        assert!(
            shares.iter().any(
                |(label, cpu)| *label == "1 echo throughput, sandbox" && cpu.other_cores == 0.9
            )
        );
    }
}
