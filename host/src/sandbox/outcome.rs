//! How a run ended: turns what wasmtime returned (a trap, an exit, a refused growth, a full
//! output pipe, a deadline) into the sandbox's own [`RunEnd`], while the error is still in
//! hand. What a failure is called on the wire, and what a person is told to do about it, is
//! the application's business (`app::failures`).

use serde_json::value::RawValue;
use wasmtime::Trap;
use wasmtime_wasi::I32Exit;

use crate::limits::Limits;

use super::limiter::Refusal;
use super::output::OutputCapture;

/// How much of the end of stderr a failure keeps.
const STDERR_TAIL_BYTES: usize = 1024;

/// How a run in the sandbox ended, and the fuel it burned.
#[derive(Debug)]
pub struct RunEnd {
    /// The result (stdout as JSON), or why there is none.
    pub result: Result<Box<RawValue>, Failure>,
    /// Fuel burned; `None` when the run never got as far as being metered.
    pub fuel_used: Option<u64>,
}

/// Why a run produced no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Still running at its wall-clock limit.
    Timeout { limit_ms: u64 },
    /// Burned all its fuel.
    FuelExhausted { limit: u64 },
    /// A memory or table growth was refused; `asked_bytes` is what the task's memories and
    /// tables would have held together, when known.
    MemoryLimit {
        limit_bytes: u64,
        asked_bytes: Option<u64>,
    },
    /// A memory or table growth within the task's limit was refused because running tasks
    /// together held the server's memory budget: the same task may fit once others end.
    MemoryBudget { budget_bytes: u64, asked_bytes: u64 },
    /// Wrote more than the output cap (stdout and stderr together).
    OutputTooLarge { limit_bytes: usize },
    /// Trapped (or failed a host call); the end of its stderr, if it wrote any.
    Trap { trap: String, stderr: String },
    /// Exited with a non-zero status; the end of its stderr, if it wrote any.
    Exit { status: i32, stderr: String },
    /// Could not be instantiated: bad imports, no memory for it.
    Instantiation { error: String },
    /// The host could not set the run up, or encode what it wrote.
    Host { error: String },
}

impl RunEnd {
    fn failed(failure: Failure, fuel_used: u64) -> RunEnd {
        RunEnd {
            result: Err(failure),
            fuel_used: Some(fuel_used),
        }
    }

    /// A run the host could not even start metering.
    pub(super) fn unmetered(error: String) -> RunEnd {
        RunEnd {
            result: Err(Failure::Host { error }),
            fuel_used: None,
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
    /// A memory or table growth the limiter refused.
    pub refused_memory: Option<Refusal>,
    pub fuel_used: u64,
    pub limits: Limits,
    /// Whether the task's wall clock had run out when it ended. A capability call (HTTP, SQL)
    /// waits at most until then, so the deadline can hand the guest an error, which it may
    /// exit or trap on, a moment before the wall-clock timer ends the run.
    pub out_of_time: bool,
}

/// Decides how the run ended. Order matters: a deadline, an overflowing output or a refused
/// growth explains whatever trap or exit the guest produced afterwards.
pub fn classify(ending: Ending<'_>) -> RunEnd {
    let Ending {
        ran,
        capture,
        refused_memory,
        fuel_used,
        limits,
        out_of_time,
    } = ending;
    let failed = |failure| RunEnd::failed(failure, fuel_used);
    // A run that failed once its time was up failed for that: the deadline explains the
    // error it got from a capability and whatever it did with it. A success keeps its result.
    let ran = ran
        .map(exit_zero_is_success)
        .filter(|ran| !out_of_time || ran.is_ok());
    let Some(ran) = ran else {
        return failed(Failure::Timeout {
            limit_ms: limits.timeout_ms,
        });
    };
    if capture.overflowed() {
        return failed(Failure::OutputTooLarge {
            limit_bytes: capture.budget(),
        });
    }
    match refused_memory {
        Some(Refusal::Task { asked }) => {
            return failed(Failure::MemoryLimit {
                limit_bytes: limits.memory_bytes,
                asked_bytes: (asked > 0).then_some(asked),
            });
        }
        Some(Refusal::Server { asked, budget }) => {
            return failed(Failure::MemoryBudget {
                budget_bytes: budget,
                asked_bytes: asked,
            });
        }
        None => {}
    }
    let stderr = || capture.stderr_tail(STDERR_TAIL_BYTES);
    let error = match ran {
        Ok(()) => return finished(capture, fuel_used),
        Err(RunError::Run(error)) => error,
        Err(RunError::Instantiate(error)) if error.downcast_ref::<Trap>().is_some() => error,
        Err(RunError::Instantiate(error)) => {
            return failed(Failure::Instantiation {
                error: format!("{error:#}"),
            });
        }
    };
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return failed(Failure::Exit {
            status: exit.0,
            stderr: stderr(),
        });
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => failed(Failure::FuelExhausted { limit: limits.fuel }),
        Some(trap) => failed(Failure::Trap {
            trap: trap.to_string(),
            stderr: stderr(),
        }),
        // Anything else that ended `_start` is the module's doing too, such as a host call
        // made with a pointer outside its memory.
        None => failed(Failure::Trap {
            trap: format!("{error:#}"),
            stderr: stderr(),
        }),
    }
}

/// `proc_exit(0)` is how a WASI command may end well: the same success as returning from
/// `_start`, so that the rest of [`classify`] has one success to tell.
fn exit_zero_is_success(ran: Result<(), RunError>) -> Result<(), RunError> {
    match ran {
        Err(RunError::Run(error))
            if error
                .downcast_ref::<I32Exit>()
                .is_some_and(|exit| exit.0 == 0) =>
        {
            Ok(())
        }
        ran => ran,
    }
}

fn finished(capture: &OutputCapture, fuel_used: u64) -> RunEnd {
    RunEnd {
        result: capture
            .with_stdout(decode_result)
            .map_err(|error| Failure::Host { error }),
        fuel_used: Some(fuel_used),
    }
}

/// stdout as a result: JSON when it parses, else a string without one trailing newline;
/// empty stdout is `null`.
pub fn decode_result(stdout: &[u8]) -> Result<Box<RawValue>, String> {
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
        .map_err(|e| format!("could not encode the task's output: {e}"))
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

    /// A guest that exits on the error its deadline gave a capability call ends with
    /// `timeout`, whichever timer fired first; a success at the deadline keeps its result.
    #[test]
    fn a_failure_once_the_time_is_up_is_a_timeout() {
        let capture = OutputCapture::new(1024);
        let limits = Limits {
            timeout_ms: 300,
            fuel: 1_000,
            memory_bytes: 1 << 20,
        };
        let end = |status: Option<i32>, out_of_time: bool| {
            // `None`: `_start` returned; a status: it called `proc_exit`.
            let ran = match status {
                None => Ok(()),
                Some(status) => Err(RunError::Run(wasmtime::Error::new(I32Exit(status)))),
            };
            classify(Ending {
                ran: Some(ran),
                capture: &capture,
                refused_memory: None,
                fuel_used: 10,
                limits,
                out_of_time,
            })
            .result
            .map(|result| result.get().to_owned())
        };
        assert!(matches!(
            end(Some(1), true),
            Err(Failure::Timeout { limit_ms: 300 })
        ));
        assert!(matches!(
            end(Some(1), false),
            Err(Failure::Exit { status: 1, .. })
        ));
        for status in [None, Some(0)] {
            for out_of_time in [false, true] {
                assert_eq!(end(status, out_of_time).unwrap(), "null");
            }
        }
    }
}
