//! Scenario 3, CPU: naive fib(27) from 8 connections with 2 tasks in flight each, tasks per
//! second, sandbox against the same function compiled natively into the host.
//!
//! Both cores stay busy computing, so the ratio is the price of compiled WebAssembly plus
//! fuel metering (the CPU limit, on in the sandbox as always), not of the protocol. A second,
//! diagnostic figure runs fib(27) one at a time on an otherwise idle server: the same ratio
//! without two computations sharing the machine.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Plan, Rate, Unexpected, measure_rate};
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
    pub sandbox: Rate,
    pub native: Option<Rate>,
    pub peer: Option<Rate>,
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
    let sandbox_rate = measure_rate(sandbox, plan, CONNECTIONS, IN_FLIGHT, "fib", INPUT).await?;
    let sandbox_alone = alone(sandbox, plan).await?;
    let (native_rate, native_alone) = match native {
        Some(native) => (
            Some(measure_rate(native, plan, CONNECTIONS, IN_FLIGHT, "fib", INPUT).await?),
            Some(alone(native, plan).await?),
        ),
        None => (None, None),
    };
    let peer_rate = match peer {
        Some(peer) => Some(measure_rate(peer, plan, CONNECTIONS, IN_FLIGHT, "fib", INPUT).await?),
        None => None,
    };
    Ok(Cpu {
        sandbox: sandbox_rate,
        native: native_rate,
        peer: peer_rate,
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
            .note(format!(
                "fuel (the CPU limit) on: {} units per task; cores used by server / loadgen / other / stolen: sandbox {}, native {}",
                Unit::Count.format(self.sandbox.fuel_per_task),
                super::cores_text(&self.sandbox.cpu),
                native.map_or("n/a".to_owned(), |n| super::cores_text(&n.cpu)),
            )),
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
