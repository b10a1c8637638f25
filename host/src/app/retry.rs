//! When a failed task runs again, and after how long: its manifest's `retries`, `retry_on`
//! and `backoff_ms`. The delay doubles with each retry, up to a minute, and is drawn at
//! random from its upper half ("equal jitter"), so that tasks that failed together (a
//! service they all call went away) do not all come back at the same moment.

use std::time::Duration;

use super::job::Outcome;
use crate::protocol::ErrorCode;
use crate::registry::{Manifest, RetryOn};

/// The first retry's delay when the manifest does not say.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(100);

/// The failure codes that retry when the manifest does not list them.
const DEFAULT_RETRY_ON: &[ErrorCode] = &[ErrorCode::Trap, ErrorCode::Timeout, ErrorCode::Exit];

/// The longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One task's retry policy, read from its manifest. Built for every task, so it borrows:
/// the manifest's failure codes are looked at only when an attempt fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy<'a> {
    /// Times the task may run again after its first attempt.
    pub retries: u32,
    /// The manifest's `retry_on`; `None`: [`DEFAULT_RETRY_ON`].
    on: Option<&'a [RetryOn]>,
    /// The first retry's delay.
    backoff: Duration,
}

impl<'a> RetryPolicy<'a> {
    /// The policy a manifest sets (no retries when it sets none).
    pub fn of(manifest: &'a Manifest) -> RetryPolicy<'a> {
        RetryPolicy {
            retries: manifest.retries,
            on: manifest.retry_on.as_deref(),
            backoff: manifest
                .backoff_ms
                .map_or(DEFAULT_BACKOFF, Duration::from_millis),
        }
    }

    /// Whether a failure with `code` is one this policy retries.
    fn retries_on(&self, code: ErrorCode) -> bool {
        match self.on {
            Some(words) => words.iter().any(|&word| code_of(word) == code),
            None => DEFAULT_RETRY_ON.contains(&code),
        }
    }

    /// Whether attempt `attempt` (from 1), which ended with `outcome`, runs again.
    pub fn retries_after(&self, attempt: u32, outcome: &Outcome) -> bool {
        match outcome {
            Outcome::Failed { error, .. } => attempt <= self.retries && self.retries_on(error.code),
            Outcome::Finished { .. } => false,
        }
    }

    /// Whether `outcome`, after every retry was used, makes the task a dead letter: it
    /// failed in a way its policy retries, and none was left.
    pub fn exhausted(&self, attempts: u32, outcome: &Outcome) -> bool {
        self.retries > 0
            && attempts > self.retries
            && matches!(outcome, Outcome::Failed { error, .. } if self.retries_on(error.code))
    }

    /// The delay after attempt `attempt` failed: the first delay doubled `attempt - 1`
    /// times, capped at a minute, then drawn from its upper half.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        let full = self.backoff.saturating_mul(1 << doublings).min(MAX_BACKOFF);
        let half = full / 2;
        half + half.mul_f64(random_fraction())
    }
}

/// The wire code a manifest's `retry_on` word stands for.
fn code_of(code: RetryOn) -> ErrorCode {
    match code {
        RetryOn::Trap => ErrorCode::Trap,
        RetryOn::Timeout => ErrorCode::Timeout,
        RetryOn::Exit => ErrorCode::Exit,
    }
}

/// A number in [0, 1) from the OS's randomness (0 if it has none to give: no jitter).
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.0;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(text: &str) -> Manifest {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let manifest = manifest("retries = 10\nbackoff_ms = 1000");
        let policy = RetryPolicy::of(&manifest);
        for attempt in 1..=10 {
            let full = Duration::from_secs(1 << (attempt - 1)).min(MAX_BACKOFF);
            let delay = policy.backoff(attempt);
            assert!(delay >= full / 2 && delay <= full, "{attempt}: {delay:?}");
        }
    }

    #[test]
    fn only_the_named_failures_retry_and_only_so_often() {
        let manifest = manifest("retries = 2\nretry_on = [\"trap\"]");
        let policy = RetryPolicy::of(&manifest);
        let trap = Outcome::failed(ErrorCode::Trap, "x");
        let exit = Outcome::failed(ErrorCode::Exit, "x");
        assert!(policy.retries_after(1, &trap));
        assert!(policy.retries_after(2, &trap));
        assert!(!policy.retries_after(3, &trap));
        assert!(!policy.retries_after(1, &exit));
        assert!(policy.exhausted(3, &trap));
        assert!(!policy.exhausted(1, &exit), "not retried, so not exhausted");
        let manifest = Manifest::default();
        let none = RetryPolicy::of(&manifest);
        assert!(!none.retries_after(1, &trap));
        assert!(!none.exhausted(1, &trap));
    }

    /// Without `retry_on`, traps, timeouts and exits retry; other failures do not.
    #[test]
    fn the_default_retries_traps_timeouts_and_exits() {
        let manifest = manifest("retries = 1");
        let policy = RetryPolicy::of(&manifest);
        for code in [ErrorCode::Trap, ErrorCode::Timeout, ErrorCode::Exit] {
            assert!(
                policy.retries_after(1, &Outcome::failed(code, "x")),
                "{code}"
            );
        }
        for code in [ErrorCode::OutputTooLarge, ErrorCode::Cancelled] {
            assert!(
                !policy.retries_after(1, &Outcome::failed(code, "x")),
                "{code}"
            );
        }
    }
}
