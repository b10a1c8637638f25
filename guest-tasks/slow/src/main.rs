//! `slow`: a simulated slow job, the task of the original example.
//!
//! Sleeps `input.seconds` (or a bare number of seconds), then returns `"success"`.
//! Any other input (`null`, a string such as the example page's `"666"`, an object
//! without `seconds`) sleeps the default five seconds, so a plain-text frame behaves
//! like the original. The sleep is `std::thread::sleep`, which is WASI `poll_oneoff`
//! on a clock: the module blocks in the host and burns no fuel while it waits.
//!
//! It sleeps in [`STEPS`] equal parts and reports progress after each one ("slept 2.0
//! of 5.0 s"), the last report being 1.0. Each part sleeps until its share of the
//! whole is due, measured from the start, so the steps do not add up to more than the
//! time asked for.

use std::thread;
use std::time::{Duration, Instant};

use taskhost_guest::{Value, input_number, progress, run};

/// The example's job took five seconds.
const DEFAULT_SECONDS: f64 = 5.0;

/// Progress reports per sleep: one every tenth of it.
const STEPS: u32 = 10;

fn main() {
    run(|input| {
        let total = sleep_seconds(&input)?;
        sleep_reporting(total);
        Ok(Value::from("success"))
    });
}

/// How long to sleep: `input.seconds`, a bare number, or the default.
fn sleep_seconds(input: &Value) -> Result<Duration, String> {
    let seconds = input_number(input, "seconds")?.unwrap_or(DEFAULT_SECONDS);
    Duration::try_from_secs_f64(seconds).map_err(|_| {
        format!("`seconds` must be a number of seconds from 0 to about 1.8e19; got {seconds}")
    })
}

/// Sleeps `total` in [`STEPS`] parts, reporting progress after each.
fn sleep_reporting(total: Duration) {
    let started = Instant::now();
    for step in 1..=STEPS {
        let fraction = f64::from(step) / f64::from(STEPS);
        // Never past `total` (float rounding aside), so it cannot overflow.
        let due = Duration::try_from_secs_f64(total.as_secs_f64() * fraction)
            .map_or(total, |due| due.min(total));
        thread::sleep(due.saturating_sub(started.elapsed()));
        progress(
            fraction,
            &format!(
                "slept {:.1} of {:.1} s",
                due.as_secs_f64(),
                total.as_secs_f64()
            ),
        );
    }
}
