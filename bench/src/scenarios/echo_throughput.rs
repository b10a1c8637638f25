//! Scenario 1, echo throughput: 50 connections with 10 tasks in flight each, for as many
//! tasks per second as the server completes, and the server CPU each task costs.
//!
//! `echo` does almost nothing, so this is the fixed price of a task: the protocol, the queue,
//! and in the sandbox the instance (allocate a pool slot, instantiate, run `_start`, drop the
//! store and reset the slot). The CPU per task, sandbox minus native, is that price alone.

use serde::Serialize;

use super::{Plan, Rate, measure_rate};
use crate::report::{Row, Target, Unit};
use crate::server::Server;

pub const NAME: &str = "1 echo throughput";
const CONNECTIONS: usize = 50;
const IN_FLIGHT: usize = 10;
/// A small JSON object, as a typical request would carry.
pub const ECHO_INPUT: &str = r#"{"text":"hello, taskhost"}"#;

#[derive(Debug, Clone, Serialize)]
pub struct EchoThroughput {
    pub sandbox: Rate,
    pub native: Option<Rate>,
    /// Swoole, when it runs (the peer column).
    pub peer: Option<Rate>,
}

pub async fn run(
    sandbox: &Server,
    native: Option<&Server>,
    peer: Option<&Server>,
    plan: &Plan,
) -> anyhow::Result<EchoThroughput> {
    let sandbox_rate =
        measure_rate(sandbox, plan, CONNECTIONS, IN_FLIGHT, "echo", ECHO_INPUT).await?;
    let native_rate = match native {
        Some(native) => {
            Some(measure_rate(native, plan, CONNECTIONS, IN_FLIGHT, "echo", ECHO_INPUT).await?)
        }
        None => None,
    };
    let peer_rate = match peer {
        Some(peer) => {
            Some(measure_rate(peer, plan, CONNECTIONS, IN_FLIGHT, "echo", ECHO_INPUT).await?)
        }
        None => None,
    };
    Ok(EchoThroughput {
        sandbox: sandbox_rate,
        native: native_rate,
        peer: peer_rate,
    })
}

impl EchoThroughput {
    pub fn rows(&self) -> Vec<Row> {
        let native = self.native.as_ref();
        let peer = self.peer.as_ref();
        vec![
            Row::new(
                NAME,
                "tasks/s (50 conn × 10)",
                Unit::TasksPerSecond,
                self.sandbox.tasks_per_s,
            )
            .baseline("native", native.map(|n| n.tasks_per_s))
            .target(Target::RatioAtLeast { ratio: 0.35 })
            .peer(super::PEER, peer.map(|p| p.tasks_per_s)),
            Row::new(
                NAME,
                "server CPU per task",
                Unit::Micros,
                self.sandbox.server_cpu_us_per_task,
            )
            .baseline("native", native.map(|n| n.server_cpu_us_per_task))
            .target(Target::ExcessAtMostBaseline)
            .peer(super::PEER, peer.map(|p| p.server_cpu_us_per_task))
            .peer_target(Target::RatioAtMost { ratio: 0.5 })
            .note(format!(
                "cores used by server / loadgen / other processes: sandbox {}, native {}, {} {}",
                super::cores_text(&self.sandbox.cpu),
                native.map_or("n/a".to_owned(), |n| super::cores_text(&n.cpu)),
                super::PEER,
                peer.map_or("n/a".to_owned(), |p| super::cores_text(&p.cpu)),
            )),
            Row::new(
                NAME,
                "finished p50 under load",
                Unit::Micros,
                self.sandbox.latency.p50_us,
            )
            .baseline("native", native.map(|n| n.latency.p50_us))
            .peer(super::PEER, peer.map(|p| p.latency.p50_us)),
        ]
    }
}
