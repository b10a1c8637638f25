//! Scenario 5, fairness: scenario 2's echo probe on one connection while `spin` tasks (CPU
//! hogs, resubmitted as they end, cancelled at the end) keep every core busy from another.
//!
//! A hog must not hold a core until its limit: the sandbox yields to tokio every
//! `FUEL_YIELD_INTERVAL` units of fuel, the native `spin` every 100 µs. The echo p99 shows how
//! long a short task waits behind them. Baseline: the same probe without hogs (scenario 2).

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::echo_latency::{self, Probe};
use super::{CpuMeter, CpuShare, Plan, Unexpected};
use crate::client::{Client, Expect, Load};
use crate::report::{Row, Target, Unit};
use crate::server::Server;

pub const NAME: &str = "5 fairness";

/// How long the hogs run before the probe starts, so that they all hold cores.
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Serialize)]
pub struct UnderHogs {
    pub probe: Probe,
    /// Hogs in flight throughout, and how many ran to their time limit meanwhile.
    pub hogs: usize,
    pub hog_timeout_ms: u64,
    pub hogs_ended: usize,
    /// Where the cores went during the probe: the hogs really kept them busy.
    pub cpu: CpuShare,
    pub hog_unexpected: Unexpected,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fairness {
    pub sandbox: UnderHogs,
    pub native: Option<UnderHogs>,
    /// The probe without hogs (scenario 2's p99), sandbox and native.
    pub sandbox_no_hogs_p99_us: Option<f64>,
    pub native_no_hogs_p99_us: Option<f64>,
}

pub async fn run(
    sandbox: &Server,
    native: Option<&Server>,
    plan: &Plan,
    no_hogs: Option<&echo_latency::EchoLatency>,
) -> anyhow::Result<Fairness> {
    let sandbox_run = measure(sandbox, plan).await?;
    let native_run = match native {
        Some(native) => Some(measure(native, plan).await?),
        None => None,
    };
    Ok(Fairness {
        sandbox: sandbox_run,
        native: native_run,
        sandbox_no_hogs_p99_us: no_hogs.map(|l| l.sandbox.finished.p99_us),
        native_no_hogs_p99_us: no_hogs
            .and_then(|l| l.native.as_ref())
            .map(|p| p.finished.p99_us),
    })
}

async fn measure(server: &Server, plan: &Plan) -> anyhow::Result<UnderHogs> {
    let hog_client = Client::connect(server.addr, &["spin"]).await?;
    let begin = Instant::now();
    let stop = begin + SETTLE + plan.probe + Duration::from_millis(300);
    let hogs = Load {
        task: "spin".to_owned(),
        input: "null".to_owned(),
        limits: Some(format!(r#"{{"timeout_ms":{}}}"#, plan.hog_timeout_ms)),
        in_flight: plan.hogs,
        max_tasks: u64::MAX,
        stop,
        cancel_at_stop: true,
        // A hog ends by its wall-clock limit, or by fuel if that runs out first.
        expect: Expect::Failed(&["timeout", "fuel_exhausted"]),
        deadline: stop + Duration::from_millis(plan.hog_timeout_ms) + Duration::from_secs(10),
    };
    let hog_run = tokio::spawn(async move { hog_client.run(&hogs).await });
    tokio::time::sleep_until((begin + SETTLE).into()).await;
    let before = CpuMeter::read(server)?;
    let probe = echo_latency::measure(server, plan.probe).await?;
    let cpu = CpuMeter::read(server)?.since(&before);
    let hog_tally = hog_run.await.context("the hogs panicked")??;
    Ok(UnderHogs {
        probe,
        hogs: plan.hogs,
        hog_timeout_ms: plan.hog_timeout_ms,
        hogs_ended: hog_tally.samples.len(),
        cpu,
        hog_unexpected: hog_tally.unexpected,
    })
}

impl Fairness {
    pub fn rows(&self) -> Vec<Row> {
        let mut rows = vec![
            Row::new(
                NAME,
                format!("echo p99, {} spin hogs", self.sandbox.hogs),
                Unit::Micros,
                self.sandbox.probe.finished.p99_us,
            )
            .baseline("no hogs", self.sandbox_no_hogs_p99_us)
            .target(Target::AtMost { value: 10_000.0 })
            .note(format!(
                "cores used by server / loadgen / other / stolen: {}; {} hogs ran to their {} ms limit",
                super::cores_text(&self.sandbox.cpu),
                self.sandbox.hogs_ended,
                self.sandbox.hog_timeout_ms
            )),
            Row::new(
                NAME,
                format!("echo p99.9, {} spin hogs", self.sandbox.hogs),
                Unit::Micros,
                self.sandbox.probe.finished.p999_us,
            ),
        ];
        if let Some(native) = &self.native {
            rows.push(
                Row::new(
                    NAME,
                    format!("native: echo p99, {} native hogs", native.hogs),
                    Unit::Micros,
                    native.probe.finished.p99_us,
                )
                .baseline("no hogs", self.native_no_hogs_p99_us)
                .note(format!(
                    "cores used by server / loadgen / other / stolen: {}",
                    super::cores_text(&native.cpu)
                )),
            );
        }
        rows
    }
}
