//! Scenario 2, echo latency: one connection with one task in flight, so every figure is one
//! task's round trip on an otherwise idle server: submit to `accepted` (the protocol and the
//! queue) and submit to `finished` (plus the run), at p50, p99 and p99.9.
//!
//! Its p99 is also scenario 5's baseline: the same probe without CPU hogs.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::echo_throughput::ECHO_INPUT;
use super::{CpuMeter, CpuShare, Unexpected};
use crate::client::{Client, Expect, Load, Sample};
use crate::report::{Row, Target, Unit};
use crate::server::Server;
use crate::stats::{Percentiles, micros};

pub const NAME: &str = "2 echo latency";

/// Round trips before the probe counts, so the first instance and connection costs are out.
const WARMUP: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub accepted: Percentiles,
    pub finished: Percentiles,
    pub unexpected: Unexpected,
    /// Where the cores went during the probe.
    pub cpu: CpuShare,
    /// The slowest round trips, to tell periodic stalls from random ones: when each was sent
    /// (milliseconds into the probe) and how long it took (µs).
    pub slowest: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EchoLatency {
    pub sandbox: Probe,
    pub native: Option<Probe>,
    pub peer: Option<Probe>,
}

pub async fn run(
    sandbox: &Server,
    native: Option<&Server>,
    peer: Option<&Server>,
    probe: Duration,
) -> anyhow::Result<EchoLatency> {
    let sandbox_probe = measure(sandbox, probe).await?;
    let native_probe = match native {
        Some(native) => Some(measure(native, probe).await?),
        None => None,
    };
    let peer_probe = match peer {
        Some(peer) => Some(measure(peer, probe).await?),
        None => None,
    };
    Ok(EchoLatency {
        sandbox: sandbox_probe,
        native: native_probe,
        peer: peer_probe,
    })
}

/// One connection, one echo at a time, for `WARMUP` then `length`.
pub async fn measure(server: &Server, length: Duration) -> anyhow::Result<Probe> {
    let client = Client::connect(server.addr, &["echo"]).await?;
    let from = Instant::now() + WARMUP;
    let load = Load {
        task: "echo".to_owned(),
        input: ECHO_INPUT.to_owned(),
        limits: None,
        in_flight: 1,
        max_tasks: u64::MAX,
        stop: from + length,
        cancel_at_stop: false,
        expect: Expect::Finished,
        deadline: from + length + Duration::from_secs(30),
    };
    let before = CpuMeter::read(server)?;
    let tally = client.run(&load).await?;
    let cpu = CpuMeter::read(server)?.since(&before);
    let counted: Vec<_> = tally
        .samples
        .iter()
        .filter(|sample| sample.sent >= from)
        .collect();
    Ok(Probe {
        accepted: Percentiles::of(counted.iter().map(|sample| sample.to_accepted())),
        finished: Percentiles::of(counted.iter().map(|sample| sample.to_end())),
        unexpected: tally.unexpected,
        cpu,
        slowest: slowest(&counted, from),
    })
}

/// The 20 slowest samples, in the order they were sent.
fn slowest(samples: &[&Sample], from: Instant) -> Vec<(f64, f64)> {
    let mut by_time: Vec<&Sample> = samples.to_vec();
    by_time.sort_by_key(|sample| std::cmp::Reverse(sample.to_end()));
    by_time.truncate(20);
    by_time.sort_by_key(|sample| sample.sent);
    by_time
        .iter()
        .map(|sample| {
            let at = sample.sent.saturating_duration_since(from).as_secs_f64() * 1e3;
            (at.round(), micros(sample.to_end()).round())
        })
        .collect()
}

impl EchoLatency {
    pub fn rows(&self) -> Vec<Row> {
        let native = self.native.as_ref();
        let peer = self.peer.as_ref();
        let row = |metric: &str, pick: fn(&Probe) -> f64| {
            Row::new(NAME, metric, Unit::Micros, pick(&self.sandbox))
                .baseline("native", native.map(pick))
                .peer(super::PEER, peer.map(pick))
        };
        vec![
            row("accepted p50", |p| p.accepted.p50_us),
            row("accepted p99", |p| p.accepted.p99_us),
            row("accepted p99.9", |p| p.accepted.p999_us),
            row("finished p50", |p| p.finished.p50_us)
                .target(Target::RatioAtMost { ratio: 1.5 })
                .note(format!(
                    "{} round trips counted",
                    self.sandbox.finished.count
                )),
            row("finished p99", |p| p.finished.p99_us),
            row("finished p99.9", |p| p.finished.p999_us),
        ]
    }
}
