//! Scenario 8, jetstream: what a task costs when it goes through NATS JetStream (`--nats`)
//! instead of the embedded queue. The same server binary runs echo both ways, one after the
//! other: the throughput load of scenario 1 (server CPU per task, with the broker's CPU counted
//! as the server's, and p50 under load) and the one-at-a-time probe of scenario 2 (p50, p99).
//!
//! Through JetStream a task is published to the work-queue stream, pulled by the node's
//! consumer, acknowledged after its outcome, and its terminal message is kept in the results
//! bucket: the difference between the two columns is that path's price, which
//! `docs/SCALING.md` turns into how many nodes one broker serves.
//!
//! Needs `nats-server` (Debian's 2.9.10); without it the scenario is skipped, saying why.

use serde::Serialize;

use super::echo_latency::{self, Probe};
use super::echo_throughput::ECHO_INPUT;
use super::{Plan, Rate, RateLoad, measure_rate};
use crate::report::{Row, Unit};
use crate::server::{Broker, Launcher, Mode};

pub const NAME: &str = "8 jetstream";
/// Fewer than scenario 1: the broker shares the two cores.
const CONNECTIONS: usize = 10;
const IN_FLIGHT: usize = 10;

/// One way of queueing: the load's figures and the probe's.
#[derive(Debug, Clone, Serialize)]
pub struct Queueing {
    pub rate: Rate,
    pub probe: Probe,
}

#[derive(Debug, Clone, Serialize)]
pub struct JetStream {
    pub embedded: Queueing,
    pub jetstream: Queueing,
}

pub async fn run(launcher: &Launcher, plan: &Plan) -> anyhow::Result<JetStream> {
    let embedded = {
        let server = launcher
            .start("jetstream-embedded", Mode::Sandbox, &[])
            .await?;
        let measured = measure(&server, plan).await;
        server.stop().await?;
        measured?
    };
    let broker = Broker::start(&launcher.log_dir, "jetstream-broker").await?;
    let jetstream = {
        let server = launcher
            .start(
                "jetstream-node",
                Mode::Sandbox,
                &["--nats".to_owned(), broker.url.clone()],
            )
            .await?
            .with_companion(&broker);
        let measured = measure(&server, plan).await;
        server.stop().await?;
        measured?
    };
    Ok(JetStream {
        embedded,
        jetstream,
    })
}

async fn measure(server: &crate::server::Server, plan: &Plan) -> anyhow::Result<Queueing> {
    Ok(Queueing {
        rate: measure_rate(
            server,
            plan,
            RateLoad {
                connections: CONNECTIONS,
                in_flight: IN_FLIGHT,
                task: "echo",
                input: ECHO_INPUT,
            },
        )
        .await?,
        probe: echo_latency::measure(server, plan.probe).await?,
    })
}

impl JetStream {
    pub fn rows(&self) -> Vec<Row> {
        let (through, embedded) = (&self.jetstream, &self.embedded);
        let row = |metric: &str, unit: Unit, pick: fn(&Queueing) -> f64| {
            Row::new(NAME, metric, unit, pick(through)).baseline("embedded", Some(pick(embedded)))
        };
        vec![
            row("tasks/s (10 conn × 10)", Unit::TasksPerSecond, |q| {
                q.rate.tasks_per_s
            }),
            row("server CPU per task", Unit::Micros, |q| {
                q.rate.server_cpu_us_per_task
            })
            .note(format!(
                "with --nats the broker's CPU counts as the server's; cores used by server / \
                 loadgen / other / stolen: jetstream {}, embedded {}",
                super::cores_text(&through.rate.cpu),
                super::cores_text(&embedded.rate.cpu),
            )),
            row("finished p50 under load", Unit::Micros, |q| {
                q.rate.latency.p50_us
            }),
            row("one at a time, finished p50", Unit::Micros, |q| {
                q.probe.finished.p50_us
            }),
            row("one at a time, finished p99", Unit::Micros, |q| {
                q.probe.finished.p99_us
            }),
        ]
    }
}
