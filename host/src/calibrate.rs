//! `taskhost --host-index`: three fixed measurements that tell one host from another, printed
//! as one line of JSON for `just bench` to put above its table.
//!
//! Machines of the same kind differ by two to three times per task, and figures from two hosts
//! cannot be compared without knowing which was which. The index measures what the benchmark's
//! figures are made of, with nothing else running in the process:
//!
//! - `native_fib_ms`: naive fib(30) in plain Rust, one core: the host's compute speed.
//! - `sandbox_echo_us`: one `echo` task through the sandbox exactly as the server runs it
//!   (a fresh instance from the pool, WASI, the input on stdin, the result from stdout, the
//!   store dropped and the slot reset), one after another: the sandbox's fixed price per task
//!   on this host, without the protocol or the network.
//! - `sandbox_echo_idle_us` and `sandbox_echo_idle_reset_us`: the same `echo` task, each run
//!   after the thread has idled 1 ms, as one task at a time meets the server: from the start
//!   to the result in hand, then the store's drop and the slot's reset, which the server does
//!   after the answer is queued. On VMs whose idle vCPUs halt, a run on a core that has just
//!   idled costs two to six times one back to back (its code, data and page tables are cold),
//!   and the figure moves from run to run more than the others; this says how much here.
//! - `sandbox_fib_ms`: the bundled `fib` task with input 30 through the sandbox, fuel on, one
//!   run at a time: the compiled code's speed against `native_fib_ms`, which bounds what the
//!   benchmark's CPU scenario can show. Fuel's counter is loaded, updated and stored around
//!   every call, and what that costs depends on the CPU more than on taskhost: on the Intel
//!   Xeon of docs/PERFORMANCE.md ("fib on the Intel host: what fuel costs") this module runs at
//!   0.42-0.64x native with fuel (the figure moves with the host from hour to hour) and
//!   0.83-0.96x without.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;

use crate::config::Config;
use crate::sandbox::{RunEnd, RunSpec, Sandbox, WasmModule};

/// fib(30): a few milliseconds of recursion, long enough to time, short enough to repeat.
const FIB_N: u64 = 30;
const FIB_RUNS: usize = 21;
/// The sandboxed fib takes about twice as long: fewer runs, after one that warms the pool.
const SANDBOX_FIB_RUNS: usize = 7;
/// Echo tasks before timing (the pool's slots and the caches warm), then per batch.
const ECHO_WARMUP: usize = 300;
const ECHO_BATCH: usize = 300;
const ECHO_BATCHES: usize = 7;
/// Echo tasks each after an idle gap, and the gap: long enough for the vCPU to halt.
const IDLE_RUNS: usize = 201;
const IDLE_GAP: Duration = Duration::from_millis(1);

/// The host index: medians, so that a burst of other work on the host moves them little.
#[derive(Debug, Clone, Serialize)]
pub struct HostIndex {
    pub native_fib_ms: f64,
    pub sandbox_echo_us: f64,
    pub sandbox_echo_idle_us: f64,
    pub sandbox_echo_idle_reset_us: f64,
    pub sandbox_fib_ms: f64,
}

/// Measures the index with `config`'s limits, running `echo.wasm` and `fib.wasm` from its tasks
/// folder.
pub async fn measure(config: &Config) -> anyhow::Result<HostIndex> {
    let native_fib_ms = median(
        (0..FIB_RUNS)
            .map(|_| {
                let start = Instant::now();
                black_box(fib(black_box(FIB_N)));
                start.elapsed()
            })
            .collect(),
    )
    .as_secs_f64()
        * 1e3;

    let sandbox = Sandbox::new(
        // A small pool: one task runs at a time.
        &config.engine_settings(16),
        config.max_output,
    )?;
    let echo = Bundled::load(&sandbox, config, "echo", r#"{"text":"hello, taskhost"}"#)?;
    for _ in 0..ECHO_WARMUP {
        echo.run(&sandbox).await?;
    }
    let mut batches = Vec::with_capacity(ECHO_BATCHES);
    for _ in 0..ECHO_BATCHES {
        let start = Instant::now();
        for _ in 0..ECHO_BATCH {
            echo.run(&sandbox).await?;
        }
        batches.push(start.elapsed() / ECHO_BATCH as u32);
    }
    let (mut to_answer, mut resets) = (Vec::new(), Vec::new());
    for _ in 0..IDLE_RUNS {
        // The thread itself sleeps (not the task): the run that follows is on this core, as
        // a task on a worker that has parked. Nothing else runs meanwhile.
        std::thread::sleep(IDLE_GAP);
        let (answered, reset) = echo.run_split(&sandbox).await?;
        to_answer.push(answered);
        resets.push(reset);
    }

    let fib = Bundled::load(&sandbox, config, "fib", &FIB_N.to_string())?;
    fib.run(&sandbox).await?;
    let mut fib_runs = Vec::with_capacity(SANDBOX_FIB_RUNS);
    for _ in 0..SANDBOX_FIB_RUNS {
        let start = Instant::now();
        fib.run(&sandbox).await?;
        fib_runs.push(start.elapsed());
    }

    Ok(HostIndex {
        native_fib_ms,
        sandbox_echo_us: median(batches).as_secs_f64() * 1e6,
        sandbox_echo_idle_us: median(to_answer).as_secs_f64() * 1e6,
        sandbox_echo_idle_reset_us: median(resets).as_secs_f64() * 1e6,
        sandbox_fib_ms: median(fib_runs).as_secs_f64() * 1e3,
    })
}

/// A bundled task from the tasks folder, compiled, with the input it is timed on.
struct Bundled {
    module: WasmModule,
    spec: RunSpec,
}

impl Bundled {
    fn load(sandbox: &Sandbox, config: &Config, name: &str, input: &str) -> anyhow::Result<Self> {
        let path = config.tasks_dir.join(format!("{name}.wasm"));
        let module = sandbox
            .compile(&read(&path)?)
            .with_context(|| format!("could not load {}", path.display()))?;
        let spec = RunSpec {
            name: name.into(),
            input: Bytes::copy_from_slice(input.as_bytes()),
            limits: config.limits,
            progress: None,
            capabilities: None,
        };
        Ok(Bundled { module, spec })
    }

    /// One task, start to end, as the server runs it.
    async fn run(&self, sandbox: &Sandbox) -> anyhow::Result<()> {
        let (end, _spent) = sandbox.run(&self.module, self.spec.clone()).await;
        self.finished(end)
    }

    /// One task, timed in two parts: from its start to its result, and the drop of its spent
    /// store (the slot's reset). Apart from `run`, whose batches time no parts.
    async fn run_split(&self, sandbox: &Sandbox) -> anyhow::Result<(Duration, Duration)> {
        let start = Instant::now();
        let (end, spent) = sandbox.run(&self.module, self.spec.clone()).await;
        let answered = start.elapsed();
        let reset = Instant::now();
        drop(spent);
        let reset = reset.elapsed();
        self.finished(end).map(|()| (answered, reset))
    }

    /// The run's end, as an error unless the task finished.
    fn finished(&self, end: RunEnd) -> anyhow::Result<()> {
        end.result.map(drop).map_err(|failure| {
            anyhow::anyhow!(
                "{}.wasm did not finish under the sandbox: {failure:?}",
                self.spec.name
            )
        })
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "could not read {}: the host index runs the bundled echo and fib tasks \
             (`just build-guests`, or pass --tasks DIR)",
            path.display()
        )
    })
}

fn fib(n: u64) -> u64 {
    if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}
