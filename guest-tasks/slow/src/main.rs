//! `slow`: a simulated slow job, the task of the original example.
//!
//! Sleeps `input.seconds` (or a bare number of seconds), then returns `"success"`.
//! Any other input (`null`, a string such as the example page's `"666"`, an object
//! without `seconds`) sleeps the default five seconds, so a plain-text frame behaves
//! like the original. The sleep is `std::thread::sleep`, which is WASI `poll_oneoff`
//! on a clock: the module blocks in the host and burns no fuel while it waits.
//!
//! It sleeps in `input.reports` equal parts ([`DEFAULT_REPORTS`] unless the input is an
//! object that says otherwise) and reports progress after each one ("slept 2.0 of 5.0
//! s"), the last report being 1.0. Each part sleeps until its share of the whole is due,
//! measured from the start, so the parts do not add up to more than the time asked for.
//! `"reports": 0` sleeps once and reports nothing: the same work as a plain `sleep`,
//! which is what the benchmark's peer (Swoole's task worker) does, and what a client
//! that does not show progress needs.
//!
//! It formats no floats: core's float formatting brings about 3 KiB of tables into the
//! module's data image, which the kernel maps whole into every running instance, so
//! 10,000 sleepers would hold 40 MiB more (docs/PERFORMANCE.md, "Where a sleeper's memory
//! goes"). Seconds are printed digit by digit from whole nanoseconds (without `format!`,
//! which cost more than the rest of a wake-up's guest code), and a bad `seconds` is quoted
//! as JSON.

use std::thread;
use std::time::{Duration, Instant};

use taskhost_guest::{Value, input_number, input_u64, progress, run};

/// The example's job took five seconds.
const DEFAULT_SECONDS: f64 = 5.0;

/// Progress reports per sleep unless the input asks otherwise: one every tenth of it.
const DEFAULT_REPORTS: u64 = 10;

/// The most reports a sleep may ask for. The server passes on at most one progress
/// message per 100 ms of a task anyway; this keeps a client from making the module wake
/// up millions of times for nothing.
const MAX_REPORTS: u64 = 100;

fn main() {
    run(|input| {
        let total = sleep_seconds(&input)?;
        let reports = progress_reports(&input)?;
        sleep_reporting(total, reports);
        Ok(Value::from("success"))
    });
}

/// How long to sleep: `input.seconds`, a bare number, or the default.
fn sleep_seconds(input: &Value) -> Result<Duration, String> {
    let seconds = input_number(input, "seconds")?.unwrap_or(DEFAULT_SECONDS);
    Duration::try_from_secs_f64(seconds).map_err(|_| {
        // The number as the client wrote it: `input.seconds`, or the bare number.
        let given = input.get("seconds").unwrap_or(input);
        format!("`seconds` must be a number of seconds from 0 to about 1.8e19; got {given}")
    })
}

/// How many progress reports: `input.reports` when the input is an object (a bare
/// number is the seconds, not this), else [`DEFAULT_REPORTS`].
fn progress_reports(input: &Value) -> Result<u32, String> {
    let asked = match input {
        Value::Object(_) => input_u64(input, "reports")?,
        _ => None,
    };
    match asked.unwrap_or(DEFAULT_REPORTS) {
        reports @ 0..=MAX_REPORTS => Ok(reports as u32),
        reports => Err(format!(
            "`reports` must be from 0 to {MAX_REPORTS} progress reports; got {reports}"
        )),
    }
}

/// Sleeps `total` in `reports` parts, reporting progress after each; with none, sleeps
/// once.
fn sleep_reporting(total: Duration, reports: u32) {
    if reports == 0 {
        thread::sleep(total);
        return;
    }
    let started = Instant::now();
    for step in 1..=reports {
        let fraction = f64::from(step) / f64::from(reports);
        // Never past `total` (float rounding aside), so it cannot overflow.
        let due = Duration::try_from_secs_f64(total.as_secs_f64() * fraction)
            .map_or(total, |due| due.min(total));
        thread::sleep(due.saturating_sub(started.elapsed()));
        progress(fraction, &progress_message(due, total));
    }
}

/// "slept 2.0 of 5.0 s", written digit by digit rather than with `format!`: a report is the
/// guest's share of every wake-up, and `core::fmt` took most of it (about 3,450 fuel a
/// report with `format!` and u128 arithmetic; docs/PERFORMANCE.md).
fn progress_message(due: Duration, total: Duration) -> String {
    let mut text = String::with_capacity(48);
    text.push_str("slept ");
    push_tenths(&mut text, due);
    text.push_str(" of ");
    push_tenths(&mut text, total);
    text.push_str(" s");
    text
}

/// Appends a duration in seconds with one decimal ("2.5"), rounded to the nearest tenth, ties
/// to even: what `{:.1}` prints for `as_secs_f64()`, in integer arithmetic (see the module's
/// doc). They differ only at a tie whose decimal has no exact binary form (0.15 s: `{:.1}`
/// rounds the float just below it, "0.1"; this gives "0.2").
fn push_tenths(text: &mut String, duration: Duration) {
    const TENTH: u32 = 100_000_000;
    let (seconds, nanos) = (duration.as_secs(), duration.subsec_nanos());
    let (mut tenth, rest) = (nanos / TENTH, nanos % TENTH);
    // The parity of the whole count of tenths is the last digit's: ten times the seconds is even.
    let mut carry = false;
    if rest > TENTH / 2 || (rest == TENTH / 2 && tenth % 2 == 1) {
        tenth += 1;
        if tenth == 10 {
            tenth = 0;
            carry = true;
        }
    }
    match seconds.checked_add(u64::from(carry)) {
        Some(seconds) => push_digits(text, seconds),
        // Only `Duration::MAX` rounds past u64::MAX seconds.
        None => text.push_str("18446744073709551616"),
    }
    text.push('.');
    text.push(char::from(b'0' + tenth as u8));
}

/// Appends `number` in decimal.
fn push_digits(text: &mut String, mut number: u64) {
    let mut digits = [0_u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (number % 10) as u8;
        number /= 10;
        if number == 0 {
            break;
        }
    }
    for &digit in &digits[start..] {
        text.push(char::from(digit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_come_from_an_object_only_and_are_capped() {
        let reports =
            |text: &str| progress_reports(&taskhost_guest::serde_json::from_str(text).unwrap());
        assert_eq!(reports("2"), Ok(10), "a bare number is the seconds");
        assert_eq!(reports(r#""666""#), Ok(10));
        assert_eq!(reports(r#"{"seconds": 1}"#), Ok(10));
        assert_eq!(reports(r#"{"seconds": 1, "reports": 0}"#), Ok(0));
        assert_eq!(reports(r#"{"reports": 100}"#), Ok(100));
        let too_many = reports(r#"{"reports": 101}"#).unwrap_err();
        assert!(
            too_many.contains("from 0 to 100") && too_many.contains("101"),
            "{too_many}"
        );
        let not_whole = reports(r#"{"reports": 2.5}"#).unwrap_err();
        assert!(not_whole.contains("non-negative integer"), "{not_whole}");
    }

    #[test]
    fn tenths_print_like_one_decimal_of_the_seconds() {
        for (nanos, printed) in [
            (0, "0.0"),
            (100_000_000, "0.1"),
            (1_000_000_000, "1.0"),
            (2_549_999_999, "2.5"),
            (250_000_000, "0.2"),
            (750_000_000, "0.8"),
            (1_250_000_000, "1.2"),
            (4_960_000_000, "5.0"),
            (u64::MAX, "18446744073.7"),
        ] {
            let duration = Duration::from_nanos(nanos);
            assert_eq!(tenths(duration), printed);
            assert_eq!(format!("{:.1}", duration.as_secs_f64()), printed, "{nanos}");
        }
        // The one kind of difference: a tie with no exact binary form.
        let duration = Duration::from_millis(150);
        assert_eq!(tenths(duration), "0.2");
        assert_eq!(format!("{:.1}", duration.as_secs_f64()), "0.1");
        // The largest duration rounds up past u64::MAX seconds.
        assert_eq!(tenths(Duration::MAX), "18446744073709551616.0");
        assert_eq!(
            format!("{:.1}", Duration::MAX.as_secs_f64()),
            "18446744073709551616.0"
        );
        assert_eq!(tenths(Duration::new(9, 950_000_000)), "10.0");
    }

    #[test]
    fn the_progress_message_says_how_long_of_how_long() {
        let message = progress_message(Duration::from_millis(2_000), Duration::from_secs(5));
        assert_eq!(message, "slept 2.0 of 5.0 s");
    }

    fn tenths(duration: Duration) -> String {
        let mut text = String::new();
        push_tenths(&mut text, duration);
        text
    }
}
