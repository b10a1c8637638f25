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

use anyhow::Context;
use serde::Serialize;

use super::{Plan, Rate, RateLoad, Unexpected, median_window, rates_in_turns};
use crate::client::{Client, Expect, Load};
use crate::report::{Row, Target, Unit};
use crate::server::Server;
use crate::stats::Percentiles;

pub const NAME: &str = "3 CPU fib(27)";
const CONNECTIONS: usize = 8;
const IN_FLIGHT: usize = 2;
const INPUT: &str = r#"{"n":27}"#;
/// Windows per server in full mode, taken in turns.
const FULL_ROUNDS: usize = 3;

#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    /// Each server's median window by tasks per second, with the unexpected answers of all
    /// its windows.
    pub sandbox: Rate,
    pub native: Option<Rate>,
    pub peer: Option<Rate>,
    /// Every window's tasks per second, per server, in the order they ran.
    pub windows: Windows,
    /// Submit to `finished` of fib(27), one task at a time.
    pub sandbox_alone: Alone,
    pub native_alone: Option<Alone>,
}

/// Tasks per second of every window, per server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Windows {
    pub sandbox: Vec<f64>,
    pub native: Vec<f64>,
    pub peer: Vec<f64>,
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
    let rounds = if plan.quick { 1 } else { FULL_ROUNDS };
    let load = RateLoad {
        connections: CONNECTIONS,
        in_flight: IN_FLIGHT,
        task: "fib",
        input: INPUT,
    };
    let [sandbox_windows, native_windows, peer_windows] =
        rates_in_turns([Some(sandbox), native, peer], plan, rounds, load).await?;
    let each = |windows: &[Rate]| -> Vec<f64> { windows.iter().map(|w| w.tasks_per_s).collect() };
    let windows = Windows {
        sandbox: each(&sandbox_windows),
        native: each(&native_windows),
        peer: each(&peer_windows),
    };
    let by_rate = |rate: &Rate| rate.tasks_per_s;
    let sandbox_alone = alone(sandbox, plan).await?;
    let native_alone = match native {
        Some(native) => Some(alone(native, plan).await?),
        None => None,
    };
    Ok(Cpu {
        sandbox: median_window(sandbox_windows, by_rate).context("no window of the sandbox ran")?,
        native: median_window(native_windows, by_rate),
        peer: median_window(peer_windows, by_rate),
        windows,
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
    /// Fuel, where the cores went in the windows reported, and with more than one window per
    /// server, every window's figure.
    fn rate_note(&self) -> String {
        let native = self.native.as_ref();
        let mut text = format!(
            "fuel (the CPU limit) on: {} units per task; cores used by server / loadgen / other / \
             stolen: sandbox {}, native {}",
            Unit::Count.format(self.sandbox.fuel_per_task),
            super::cores_text(&self.sandbox.cpu),
            native.map_or("n/a".to_owned(), |n| super::cores_text(&n.cpu)),
        );
        let each =
            |rates: &[f64]| -> Vec<String> { rates.iter().map(|r| format!("{r:.0}")).collect() };
        let windows = &self.windows;
        text += &super::turns_text(
            [
                each(&windows.sandbox),
                each(&windows.native),
                each(&windows.peer),
            ],
            "tasks/s",
        );
        text
    }

    pub fn rows(&self) -> Vec<Row> {
        let native = self.native.as_ref();
        let peer = self.peer.as_ref();
        vec![
            Row::new(
                NAME,
                "tasks/s (8 conn × 2)",
                Unit::TasksPerSecond,
                self.sandbox.tasks_per_s,
            )
            .baseline("native", native.map(|n| n.tasks_per_s))
            .target(Target::RatioAtLeast { ratio: 0.50 })
            .peer(super::PEER, peer.map(|p| p.tasks_per_s))
            .note(self.rate_note()),
            Row::new(
                NAME,
                "server CPU per task",
                Unit::Micros,
                self.sandbox.server_cpu_us_per_task,
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
