//! The taskhost task ABI, so that a task is a plain function from input JSON to
//! result JSON.
//!
//! A task is a WASI preview 1 command module (`wasm32-wasip1`) or a WASI preview 2
//! command component (`wasm32-wasip2`); this crate builds for both. The host hands it
//! the request's `input` as JSON on stdin, reads the result from stdout (JSON when it
//! parses, otherwise text), and takes exit status 0 as `finished` and any other status
//! as `failed` (code `exit`, with the end of stderr as the message). See
//! `docs/PROTOCOL.md`, "Task modules", and `guest-tasks/README.md`.
//!
//! A task's whole `main`:
//!
//! ```no_run
//! taskhost_guest::run(|input| {
//!     let n = taskhost_guest::input_number(&input, "n")?.unwrap_or(1.0);
//!     Ok(taskhost_guest::json!({ "double": n * 2.0 }))
//! });
//! ```
//!
//! A long task may also tell the client how far it is with [`progress`] (a host
//! import on preview 1, the WIT interface `taskhost:task/progress` on preview 2).
//!
//! Tasks whose manifest grants capabilities reach them in one call each:
//! [`kv::incr`]`("k")`, [`kv::get`], [`sql::query`], [`mail::send`], [`publish`],
//! [`http::get`]; and [`call`] for any capability by name with a JSON request.
//!
//! `run` is typed over serde: the input is any `Deserialize` type (a `Value` for raw
//! JSON) and the result any `Serialize` type; input that does not fit the type fails the
//! task with [`EXIT_BAD_INPUT`] and serde's message.

mod call;
mod capabilities;
pub mod http;
mod progress;
mod stdio;
#[cfg(all(target_arch = "wasm32", target_os = "wasi", target_env = "p2"))]
mod wasi_http;

use std::io::{self, Write};
use std::process;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use call::{CallError, call};
pub use capabilities::{kv, mail, publish, sql};
pub use progress::progress;

pub use serde_json::{self, Map, Value, json};

/// Exit status for a task whose function returned `Err`: the task failed on its own
/// terms. The message is on stderr, which the host puts in the `failed` message.
pub const EXIT_TASK_ERROR: i32 = 1;

/// Exit status for input the task could not even read: stdin was not JSON, or could
/// not be read. Distinct from [`EXIT_TASK_ERROR`] so that a host bug (bad input) is
/// told apart from a task that refused good input.
pub const EXIT_BAD_INPUT: i32 = 2;

/// Runs `task` under the ABI: reads stdin as JSON into `In`, calls `task`, writes its
/// result (`Out`) to stdout as JSON.
///
/// Returns normally (so `main` ends with status 0) when the task succeeded. Exits the
/// process otherwise, with a one-line reason on stderr:
/// - [`EXIT_BAD_INPUT`] when stdin could not be read, is not JSON, or does not fit `In`;
/// - [`EXIT_TASK_ERROR`] when `task` returned `Err`, or the result could not be written.
///
/// Empty (or all-whitespace) stdin is `null`, since the protocol's `input` defaults to
/// `null` and a host may send nothing for it.
pub fn run<In: DeserializeOwned, Out: Serialize>(task: impl FnOnce(In) -> Result<Out, String>) {
    let input = match read_input().and_then(|input| {
        serde_json::from_value(input)
            .map_err(|err| format!("the input does not have the shape this task takes: {err}"))
    }) {
        Ok(input) => input,
        Err(message) => fail(EXIT_BAD_INPUT, &message),
    };
    let result = match task(input).and_then(|result| {
        serde_json::to_value(result).map_err(|err| format!("the result is not JSON: {err}"))
    }) {
        Ok(result) => result,
        Err(message) => fail(EXIT_TASK_ERROR, &message),
    };
    if let Err(err) = write_output(&result) {
        fail(
            EXIT_TASK_ERROR,
            &format!("could not write the result to stdout: {err}"),
        );
    }
}

/// Reads all of stdin and parses it as JSON; empty or all-whitespace stdin is `null`.
///
/// The error says what was wrong, with the parser's line and column, ready for stderr.
pub fn read_input() -> Result<Value, String> {
    let mut bytes = Vec::new();
    stdio::read_stdin(&mut bytes)
        .map_err(|err| format!("could not read the input from stdin: {err}"))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|err| format!("the input on stdin is not JSON: {err}"))
}

/// Writes `result` to stdout as compact JSON and flushes it.
///
/// No trailing newline: the host reads stdout whole, and JSON needs none.
pub fn write_output(result: &Value) -> io::Result<()> {
    let json = serde_json::to_vec(result)?;
    stdio::write_stdout(&json)
}

/// Writes `message` to stderr on one line and exits with `status`.
///
/// The host quotes the end of stderr in the `failed` message, so the reason is the
/// last thing written.
pub fn fail(status: i32, message: &str) -> ! {
    // Nothing more can be reported if stderr itself is gone: the exit status still is.
    let _ = writeln!(io::stderr().lock(), "{message}");
    process::exit(status)
}

/// A numeric parameter given either as a bare number or as field `key` of an object.
///
/// - a number: that number (`2`, `2.5`);
/// - an object: its field `key`, where a missing or `null` field is `None` and a field
///   that is not a number is an error naming the field;
/// - anything else (`null`, a string, a bool, an array): `None`, so the task uses its
///   default. Strings are deliberately not an error: plain-text frames (like the
///   original example page's `666`) reach the default task as a JSON string.
pub fn input_number(input: &Value, key: &str) -> Result<Option<f64>, String> {
    match parameter(input, key)? {
        None => Ok(None),
        Some(value) => value
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("`{key}` must be a number, got {value}")),
    }
}

/// Like [`input_number`], for a parameter that must be a non-negative integer
/// (`10`, not `10.5`, `-1` or `1e3`).
pub fn input_u64(input: &Value, key: &str) -> Result<Option<u64>, String> {
    match parameter(input, key)? {
        None => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("`{key}` must be a non-negative integer, got {value}")),
    }
}

/// The value of a numeric parameter: the input itself when it is a number, or its
/// field `key` when it is an object; `None` where the task should use its default.
fn parameter<'a>(input: &'a Value, key: &str) -> Result<Option<&'a Value>, String> {
    match input {
        Value::Number(_) => Ok(Some(input)),
        Value::Object(fields) => match fields.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value @ Value::Number(_)) => Ok(Some(value)),
            Some(value) => Err(format!("`{key}` must be a number, got {value}")),
        },
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_come_bare_or_as_a_field() {
        assert_eq!(input_number(&json!(2.5), "s"), Ok(Some(2.5)));
        assert_eq!(input_number(&json!({"s": 2}), "s"), Ok(Some(2.0)));
        assert_eq!(input_number(&json!({"s": null}), "s"), Ok(None));
        assert_eq!(input_number(&json!({}), "s"), Ok(None));
        assert_eq!(input_number(&json!("666"), "s"), Ok(None));
        assert_eq!(input_number(&Value::Null, "s"), Ok(None));
        assert!(input_number(&json!({"s": "2"}), "s").is_err());
    }

    #[test]
    fn integers_must_be_whole_and_non_negative() {
        assert_eq!(input_u64(&json!(10), "n"), Ok(Some(10)));
        assert_eq!(input_u64(&json!({"n": 93}), "n"), Ok(Some(93)));
        assert!(input_u64(&json!(10.5), "n").is_err());
        assert!(input_u64(&json!({"n": -1}), "n").is_err());
    }
}
