//! `slow`: a simulated slow job, the task of the original example.
//!
//! Sleeps `input.seconds` (or a bare number of seconds), then returns `"success"`.
//! Any other input (`null`, a string such as the example page's `"666"`, an object
//! without `seconds`) sleeps the default five seconds, so a plain-text frame behaves
//! like the original. The sleep is `std::thread::sleep`, which is WASI `poll_oneoff`
//! on a clock: the module blocks in the host and burns no fuel while it waits.

use std::thread;
use std::time::Duration;

use taskhost_guest::{Value, input_number, run};

/// The example's job took five seconds.
const DEFAULT_SECONDS: f64 = 5.0;

fn main() {
    run(|input| {
        let seconds = sleep_seconds(&input)?;
        thread::sleep(seconds);
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
