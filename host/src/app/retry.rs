//! When a failed task runs again, and after how long: its manifest's `retries`, `retry_on`
//! and `backoff_ms`. The delay doubles with each retry, up to a minute, and is drawn at
//! random from its upper half ("equal jitter"), so that tasks that failed together (a
//! service they all call went away) do not all come back at the same moment.

use std::borrow::Cow;
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

/// One task's retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Times the task may run again after its first attempt.
    pub retries: u32,
    /// The failure codes that retry: borrowed for the default, since every task builds its
    /// policy.
    on: Cow<'static, [ErrorCode]>,
    /// The first retry's delay.
    backoff: Duration,
}

impl RetryPolicy {
    /// The policy a manifest sets (no retries when it sets none).
    pub fn of(manifest: &Manifest) -> RetryPolicy {
        let on = match &manifest.retry_on {
            Some(codes) => Cow::Owned(codes.iter().map(|code| code_of(*code)).collect()),
            None => Cow::Borrowed(DEFAULT_RETRY_ON),
        };
        RetryPolicy {
            retries: manifest.retries,
            on,
            backoff: manifest
                .backoff_ms
                .map_or(DEFAULT_BACKOFF, Duration::from_millis),
        }
    }

    /// Whether attempt `attempt` (from 1), which ended with `outcome`, runs again.
    pub fn retries_after(&self, attempt: u32, outcome: &Outcome) -> bool {
        match outcome {
            Outcome::Failed { error, .. } => {
                attempt <= self.retries && self.on.contains(&error.code)
            }
            Outcome::Finished { .. } => false,
        }
    }

    /// Whether `outcome`, after every retry was used, makes the task a dead letter: it
    /// failed in a way its policy retries, and none was left.
    pub fn exhausted(&self, attempts: u32, outcome: &Outcome) -> bool {
        self.retries > 0
            && attempts > self.retries
            && matches!(outcome, Outcome::Failed { error, .. } if self.on.contains(&error.code))
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

    fn policy(text: &str) -> RetryPolicy {
        RetryPolicy::of(&toml::from_str(text).unwrap())
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let policy = policy("retries = 10\nbackoff_ms = 1000");
        for attempt in 1..=10 {
            let full = Duration::from_secs(1 << (attempt - 1)).min(MAX_BACKOFF);
            let delay = policy.backoff(attempt);
            assert!(delay >= full / 2 && delay <= full, "{attempt}: {delay:?}");
        }
    }

    #[test]
    fn only_the_named_failures_retry_and_only_so_often() {
        let policy = policy("retries = 2\nretry_on = [\"trap\"]");
        let trap = Outcome::failed(ErrorCode::Trap, "x");
        let exit = Outcome::failed(ErrorCode::Exit, "x");
        assert!(policy.retries_after(1, &trap));
        assert!(policy.retries_after(2, &trap));
        assert!(!policy.retries_after(3, &trap));
        assert!(!policy.retries_after(1, &exit));
        assert!(policy.exhausted(3, &trap));
        assert!(!policy.exhausted(1, &exit), "not retried, so not exhausted");
        let none = RetryPolicy::of(&Manifest::default());
        assert!(!none.retries_after(1, &trap));
        assert!(!none.exhausted(1, &trap));
    }
}
