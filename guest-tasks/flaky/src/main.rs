//! `flaky`: fails the first attempts, then succeeds, to show retries (manifest `retries`).
//!
//! Its manifest sets `attempt_envelope = true`, so stdin is `{"attempt": N, "input": …}`
//! (N counts from 1). While N is at most `input.fail_attempts` (default 2) it panics, a
//! trap, which its manifest retries; then it returns `{"attempt": N}`.

use taskhost_guest::{Map, Value, input_u64, run};

fn main() {
    run(|envelope| {
        let attempt = input_u64(&envelope, "attempt")?
            .ok_or("stdin must be {\"attempt\": N, \"input\": …}: set attempt_envelope")?;
        let input = envelope.get("input").cloned().unwrap_or(Value::Null);
        let fail_attempts = input_u64(&input, "fail_attempts")?.unwrap_or(2);
        if attempt <= fail_attempts {
            panic!("flaky task: attempt {attempt} of the {fail_attempts} that fail");
        }
        let mut result = Map::new();
        result.insert("attempt".to_owned(), Value::from(attempt));
        Ok(Value::Object(result))
    });
}
