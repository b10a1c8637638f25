//! Scenario 3, CPU: naive fib(27) from 8 connections with 2 tasks in flight each, tasks per
//! second, sandbox against the same function compiled natively into the host.
//!
//! Both cores stay busy computing, so the ratio is the price of compiled WebAssembly plus
//! fuel metering (the CPU limit, on in the sandbox as always), not of the protocol. In full
//! mode each server runs three windows, taken in turns with the others, and reports its median
//! ([`super::rates_in_turns`]): one window each, sandbox then native, put the two in different
//! stretches of a drifting host, and the ratio moved by a third between runs of one binary
//! (0.50x, 0.52x, 0.60x and 0.42x within half an hour, 2026-12-02). A second, diagnostic
//! figure runs fib(27) one at a time on an otherwise idle server: the same ratio without two
//! computations sharing the machine.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{CpuShare, InTurns, Plan, RateLoad, Unexpected, rates_in_turns};
use crate::client::{Client, Expect, Load};
use crate::report::{Row, Target, Unit};
use crate::server::Server;
use crate::stats::Percentiles;

pub const NAME: &str = "3 CPU fib(27)";
const CONNECTIONS: usize = 8;
const IN_FLIGHT: usize = 2;
const INPUT: &str = r#"{"n":27}"#;

#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    /// Each server's windows, the median picked by tasks per second. Flattened: the JSON
    /// keeps `sandbox`, `native`, `peer` and `rounds` at the top of the scenario.
    #[serde(flatten)]
    pub turns: InTurns,
    /// Submit to `finished` of fib(27), one task at a time.
    pub sandbox_alone: Alone,
    pub native_alone: Option<Alone>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Alone {
    pub finished: Percentiles,
    pub unexpected: Unexpected,
}

pub async fn run(
    sandbox: &Server,
    native: Option<&Server>,
    peer: Option<&Server>,
    plan: &Plan,
) -> anyhow::Result<Cpu> {
    let load = RateLoad {
        connections: CONNECTIONS,
        in_flight: IN_FLIGHT,
        task: "fib",
        input: INPUT,
    };
    let turns = rates_in_turns([Some(sandbox), native, peer], plan, load, |rate| {
        rate.tasks_per_s
    })
    .await?;
    let sandbox_alone = alone(sandbox, plan).await?;
    let native_alone = match native {
        Some(native) => Some(alone(native, plan).await?),
        None => None,
    };
    Ok(Cpu {
        turns,
        sandbox_alone,
        native_alone,
    })
}

/// fib(27) one at a time, a fixed number of times.
async fn alone(server: &Server, plan: &Plan) -> anyhow::Result<Alone> {
    let count = if plan.quick { 100 } else { 400 };
    let client = Client::connect(server.addr, &["fib"]).await?;
    let begin = Instant::now();
    let load = Load {
        task: "fib".to_owned(),
        input: INPUT.to_owned(),
        limits: None,
        in_flight: 1,
        max_tasks: count,
        stop: begin + Duration::from_secs(60),
        cancel_at_stop: false,
        expect: Expect::Finished,
        deadline: begin + Duration::from_secs(60),
    };
    let tally = client.run(&load).await?;
    // The first few warm the caches and the CPU's clock.
    let counted = tally.samples.iter().skip(10).map(|sample| sample.to_end());
    Ok(Alone {
        finished: Percentiles::of(counted),
        unexpected: tally.unexpected,
    })
}

impl Cpu {
    /// Where the cores went in every window, labelled by server, for the warnings.
    pub fn cpu_shares(&self) -> impl Iterator<Item = (&'static str, &CpuShare)> {
        self.turns
            .rounds
            .cpu_shares(["3 cpu, sandbox", "3 cpu, native", "3 cpu, swoole"])
    }

    /// Fuel, where the cores went in the windows reported, and with more than one window per
    /// server, every window's figure.
    fn rate_note(&self) -> String {
        let native = self.turns.native.as_ref();
        let mut text = format!(
            "fuel (the CPU limit) on: {} units per task; cores used by server / loadgen / other / \
             stolen: sandbox {}, native {}",
            Unit::Count.format(self.turns.sandbox.fuel_per_task),
            super::cores_text(&self.turns.sandbox.cpu),
            native.map_or("n/a".to_owned(), |n| super::cores_text(&n.cpu)),
        );
        text += &self
            .turns
            .rounds
            .text(|window| format!("{:.0}", window.tasks_per_s), "tasks/s");
        text
    }

    pub fn rows(&self) -> Vec<Row> {
        let native = self.turns.native.as_ref();
        let peer = self.turns.peer.as_ref();
        vec![
            Row::new(
                NAME,
                "tasks/s (8 conn × 2)",
                Unit::TasksPerSecond,
                self.turns.sandbox.tasks_per_s,
            )
            .baseline("native", native.map(|n| n.tasks_per_s))
            .target(Target::RatioAtLeast { ratio: 0.50 })
            .peer(super::PEER, peer.map(|p| p.tasks_per_s))
            .note(self.rate_note()),
            Row::new(
                NAME,
                "server CPU per task",
                Unit::Micros,
                self.turns.sandbox.server_cpu_us_per_task,
            )
            .baseline("native", native.map(|n| n.server_cpu_us_per_task))
            .peer(super::PEER, peer.map(|p| p.server_cpu_us_per_task)),
            Row::new(
                NAME,
                "one at a time: finished p50",
                Unit::Micros,
                self.sandbox_alone.finished.p50_us,
            )
            .baseline(
                "native",
                self.native_alone.as_ref().map(|n| n.finished.p50_us),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::{CpuShare, Rate, Rounds};

    fn window(tasks_per_s: f64, stolen_cores: f64) -> Rate {
        Rate {
            connections: CONNECTIONS,
            in_flight_per_connection: IN_FLIGHT,
            tasks: 1_000,
            window_s: 1.0,
            tasks_per_s,
            server_cpu_us_per_task: 1_000.0,
            loadgen_cpu_us_per_task: 1.0,
            cpu: CpuShare {
                stolen_cores,
                ..CpuShare::default()
            },
            latency: Percentiles::default(),
            fuel_per_task: 0.0,
            unexpected: Unexpected::new(),
        }
    }

    #[test]
    fn every_window_is_listed_and_looked_at_not_only_the_median() {
        let windows = [
            vec![window(1007.0, 0.0), window(991.0, 0.0), window(1002.0, 0.6)],
            vec![
                window(2088.0, 0.0),
                window(2149.0, 0.0),
                window(2315.0, 0.0),
            ],
            Vec::new(),
        ];
        let cpu = Cpu {
            turns: InTurns {
                sandbox: window(1002.0, 0.0),
                native: Some(window(2149.0, 0.0)),
                peer: None,
                rounds: Rounds::of(&windows),
            },
            sandbox_alone: Alone {
                finished: Percentiles::default(),
                unexpected: Unexpected::new(),
            },
            native_alone: None,
        };
        let note = cpu.rate_note();
        assert!(
            note.contains(
                "the median of 3 windows each, taken in turns: sandbox 1007, 991, 1002 tasks/s, \
                 native 2088, 2149, 2315 tasks/s"
            ),
            "{note}"
        );
        let shares: Vec<_> = cpu.cpu_shares().collect();
        assert_eq!(shares.len(), 6);
        // The stolen window is not the median one, and is still there to be warned of.
        assert!(
            shares
                .iter()
                .any(|(label, cpu)| *label == "3 cpu, sandbox" && cpu.stolen_cores == 0.6)
        );
    }
}
