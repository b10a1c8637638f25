//! Native tasks: `echo`, `fib`, `slow` and `spin` as plain Rust functions in the host, through
//! the `task` callback, with the protocol unchanged.
//!
//! This is the baseline the benchmark compares the sandbox with, and a fast path for code you
//! trust: it has no isolation and no fuel, so it is served only when asked (`--native`). Other
//! tasks still run in the sandbox, and every task still needs its module in the tasks folder
//! (for its name, limits and listing).

use std::time::Duration;

use serde_json::Value;
use serde_json::value::RawValue;

use super::{App, Ctx, Job, Outcome};
use crate::protocol::ErrorCode;

/// How often the native `spin` gives its thread back, so that it hogs a core like the
/// sandboxed one does (which yields on fuel) without stalling the server.
const SPIN_SLICE: Duration = Duration::from_micros(100);

/// The [`super::ProtocolApp`] with the bundled tasks run natively.
#[derive(Debug, Clone, Copy, Default)]
pub struct NativeTasks;

impl App for NativeTasks {
    type Session = ();

    async fn on_task(&self, ctx: &Ctx<Self>, job: &Job) -> Outcome {
        match job.name() {
            "echo" => echo(&job.input),
            "fib" => fib_off_the_runtime(job.input.clone()).await,
            "slow" => slow(job).await,
            "spin" => spin().await,
            _ => ctx.run_in_sandbox(job).await,
        }
    }
}

fn finished(json: String) -> Outcome {
    match RawValue::from_string(json) {
        Ok(result) => Outcome::Finished {
            result,
            fuel_used: 0,
        },
        Err(error) => Outcome::failed(ErrorCode::Internal, error.to_string()),
    }
}

fn echo(input: &[u8]) -> Outcome {
    finished(String::from_utf8_lossy(input).into_owned())
}

fn fib(n: u64) -> u64 {
    if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
}

/// The largest `n` the native `fib` takes. Outside the sandbox no fuel stops it and no timeout
/// can interrupt it, so the input is what bounds it: fib(40) takes about a second.
const NATIVE_MAX_FIB: u64 = 40;

/// Runs [`fib_task`] on a blocking thread, so that the runtime's threads keep serving.
async fn fib_off_the_runtime(input: bytes::Bytes) -> Outcome {
    tokio::task::spawn_blocking(move || fib_task(&input))
        .await
        .unwrap_or_else(|error| {
            Outcome::failed(ErrorCode::Internal, format!("fib failed: {error}"))
        })
}

/// `{"n": N}` or a bare N, like the guest's, with N at most [`NATIVE_MAX_FIB`].
fn fib_task(input: &[u8]) -> Outcome {
    let value: Value = serde_json::from_slice(input).unwrap_or(Value::Null);
    let n = value.get("n").unwrap_or(&value).as_u64();
    match n {
        Some(n) if n <= NATIVE_MAX_FIB => {
            finished(std::hint::black_box(fib(std::hint::black_box(n))).to_string())
        }
        _ => Outcome::failed(
            ErrorCode::Exit,
            format!(
                "the native fib takes {{\"n\": N}} with N from 0 to {NATIVE_MAX_FIB} (no fuel \
                 bounds it outside the sandbox; the sandboxed fib goes to 93)"
            ),
        ),
    }
}

/// `{"seconds": S}` or a bare S; anything else is the default 5 seconds. Like the guest, it
/// sleeps in `input.reports` parts (default [`SLOW_REPORTS`], 0 for one sleep and no
/// progress) and reports progress after each, so that the benchmark compares like with like.
async fn slow(job: &Job) -> Outcome {
    let value: Value = serde_json::from_slice(&job.input).unwrap_or(Value::Null);
    let seconds = value
        .get("seconds")
        .unwrap_or(&value)
        .as_f64()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(5.0);
    // More than 100, which the guest refuses with a message, is 100 here: the baseline runs
    // what the benchmark sends and does not repeat the guest's input checks.
    let reports = value
        .get("reports")
        .and_then(Value::as_u64)
        .map_or(SLOW_REPORTS, |reports| reports.min(100) as u32);
    // Longer than the task's wall-clock limit is the same as that limit: the dispatcher ends
    // it there. Clamped first, since a huge number of seconds is no Duration.
    let limit = Duration::from_millis(job.limits.timeout_ms).saturating_add(Duration::from_secs(1));
    let total = Duration::try_from_secs_f64(seconds).map_or(limit, |total| total.min(limit));
    let started = tokio::time::Instant::now();
    if reports == 0 {
        tokio::time::sleep_until(started + total).await;
    }
    for step in 1..=reports {
        let fraction = f64::from(step) / f64::from(reports);
        tokio::time::sleep_until(started + total.mul_f64(fraction)).await;
        let message = format!("slept {:.1} of {seconds:.1} s", seconds * fraction);
        job.report_progress(fraction, &message);
    }
    finished("\"success\"".to_owned())
}

/// Progress reports per native `slow` unless the input says otherwise, as many as the guest's.
const SLOW_REPORTS: u32 = 10;

/// Busy forever; the dispatcher's wall-clock limit or a cancel ends it.
async fn spin() -> Outcome {
    loop {
        let slice = std::time::Instant::now();
        while slice.elapsed() < SPIN_SLICE {
            std::hint::spin_loop();
        }
        tokio::task::yield_now().await;
    }
}
