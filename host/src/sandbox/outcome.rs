//! How a task ended: turns what wasmtime returned (a trap, an exit, a refused growth, a full
//! output pipe, a deadline) into the protocol's outcome, while the error is still in hand.

use serde_json::value::RawValue;
use wasmtime::Trap;
use wasmtime_wasi::I32Exit;

use crate::protocol::{ErrorCode, Limits, WireError};

use super::output::OutputCapture;

/// How much of the end of stderr goes into an error message.
const STDERR_TAIL_BYTES: usize = 1024;

/// How a task ended, as the finish callback receives it.
#[derive(Debug)]
pub enum Outcome {
    Finished {
        result: Box<RawValue>,
        fuel_used: u64,
    },
    Failed {
        error: WireError,
        /// Known when the task ran in a sandbox and got as far as being metered.
        fuel_used: Option<u64>,
    },
}

impl Outcome {
    pub fn failed(code: ErrorCode, message: impl Into<String>) -> Outcome {
        Outcome::Failed {
            error: WireError::new(code, message),
            fuel_used: None,
        }
    }

    /// A task stopped at its wall-clock limit of `limit_ms`.
    pub fn timed_out(limit_ms: u64, fuel_used: Option<u64>) -> Outcome {
        Outcome::Failed {
            error: WireError::new(
                ErrorCode::Timeout,
                format!(
                    "the task was still running after its wall-clock limit of {limit_ms} ms; ask \
                     for a higher `limits.timeout_ms` (up to the server's --timeout-ms) or give \
                     it less work"
                ),
            ),
            fuel_used,
        }
    }

    /// The outcome label for logs and metrics: `finished` or the error code.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Finished { .. } => "finished",
            Outcome::Failed { error, .. } => error.code.as_str(),
        }
    }

    pub fn fuel_used(&self) -> Option<u64> {
        match self {
            Outcome::Finished { fuel_used, .. } => Some(*fuel_used),
            Outcome::Failed { fuel_used, .. } => *fuel_used,
        }
    }
}

/// Where a wasmtime error came from.
#[derive(Debug)]
pub enum RunError {
    /// Creating the instance failed: bad imports, a start function that trapped, no memory.
    Instantiate(wasmtime::Error),
    /// `_start` itself failed.
    Run(wasmtime::Error),
}

/// What the sandbox knows once the task is over.
pub struct Ending<'a> {
    /// `None` when the wall-clock deadline cut the task short.
    pub ran: Option<Result<(), RunError>>,
    pub capture: &'a OutputCapture,
    /// A memory or table growth the limiter refused, `(current, desired)` bytes.
    pub refused_memory: Option<(usize, usize)>,
    pub fuel_used: u64,
    pub limits: Limits,
}

/// Decides the outcome. Order matters: a deadline, an overflowing output or a refused growth
/// explains whatever trap or exit the guest produced afterwards.
pub fn classify(ending: Ending<'_>) -> Outcome {
    let Ending {
        ran,
        capture,
        refused_memory,
        fuel_used,
        limits,
    } = ending;
    let failed = |code, message: String| Outcome::Failed {
        error: WireError::new(code, message),
        fuel_used: Some(fuel_used),
    };
    let Some(ran) = ran else {
        return Outcome::timed_out(limits.timeout_ms, Some(fuel_used));
    };
    if capture.overflowed() {
        return failed(
            ErrorCode::OutputTooLarge,
            format!(
                "the task wrote more than the server's output limit of {} bytes (--max-output, \
                 stdout and stderr together) and was stopped; return a smaller result",
                capture.budget()
            ),
        );
    }
    if let Some((_, desired)) = refused_memory {
        let asked = if desired > 0 {
            format!(" (it asked for {desired} bytes)")
        } else {
            String::new()
        };
        return failed(
            ErrorCode::MemoryLimit,
            format!(
                "the task needed more memory than its limit of {} bytes{asked}; ask for a \
                 higher `limits.memory_bytes` (up to the server's --memory) or use less memory",
                limits.memory_bytes
            ),
        );
    }
    let error = match ran {
        Ok(()) => return finished(capture, fuel_used),
        Err(RunError::Run(error)) => error,
        Err(RunError::Instantiate(error)) if error.downcast_ref::<Trap>().is_some() => error,
        Err(RunError::Instantiate(error)) => {
            return failed(
                ErrorCode::ModuleError,
                format!("the module could not be instantiated: {error:#}"),
            );
        }
    };
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        if exit.0 == 0 {
            return finished(capture, fuel_used);
        }
        return failed(ErrorCode::Exit, exit_message(exit.0, capture));
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => failed(
            ErrorCode::FuelExhausted,
            format!(
                "the task used all its fuel ({} units) before finishing; ask for more \
                 `limits.fuel` (up to the server's --fuel) or give it less work",
                limits.fuel
            ),
        ),
        Some(trap) => failed(ErrorCode::Trap, trap_message(&trap.to_string(), capture)),
        // Anything else that ended `_start` is the module's doing too, such as a host call
        // made with a pointer outside its memory.
        None => failed(
            ErrorCode::Trap,
            trap_message(&format!("{error:#}"), capture),
        ),
    }
}

fn exit_message(status: i32, capture: &OutputCapture) -> String {
    let stderr = capture.stderr_tail(STDERR_TAIL_BYTES);
    if stderr.is_empty() {
        format!("the task exited with status {status} and wrote nothing to stderr")
    } else {
        format!("the task exited with status {status}: {stderr}")
    }
}

fn trap_message(trap: &str, capture: &OutputCapture) -> String {
    let stderr = capture.stderr_tail(STDERR_TAIL_BYTES);
    if stderr.is_empty() {
        format!("the task trapped: {trap}")
    } else {
        format!("the task trapped: {trap}; its stderr ends with: {stderr}")
    }
}

fn finished(capture: &OutputCapture, fuel_used: u64) -> Outcome {
    match decode_result(&capture.stdout()) {
        Ok(result) => Outcome::Finished { result, fuel_used },
        Err(error) => Outcome::Failed {
            error,
            fuel_used: Some(fuel_used),
        },
    }
}

/// stdout as a result: JSON when it parses, else a string without one trailing newline;
/// empty stdout is `null`.
pub fn decode_result(stdout: &[u8]) -> Result<Box<RawValue>, WireError> {
    if stdout.is_empty() {
        return Ok(RawValue::NULL.to_owned());
    }
    if let Ok(text) = std::str::from_utf8(stdout)
        && serde_json::from_str::<&RawValue>(text).is_ok()
    {
        let json = text.trim_matches(|c: char| c.is_ascii_whitespace());
        if let Ok(raw) = RawValue::from_string(json.to_owned()) {
            return Ok(raw);
        }
    }
    let text = String::from_utf8_lossy(stdout);
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    serde_json::value::to_raw_value(text)
        .map_err(|e| WireError::internal(format!("could not encode the task's output: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_follow_the_protocol() {
        let decode = |bytes: &[u8]| decode_result(bytes).unwrap().get().to_owned();
        assert_eq!(decode(b""), "null");
        assert_eq!(decode(b"success"), "\"success\"");
        assert_eq!(decode(b"success\n"), "\"success\"");
        assert_eq!(decode(b"two\r\n"), "\"two\"");
        assert_eq!(decode(b"{\"a\": 1}\n"), "{\"a\": 1}");
        assert_eq!(decode(b"42"), "42");
        assert_eq!(decode(b"\xff!"), "\"\u{fffd}!\"");
    }
}
