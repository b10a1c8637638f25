//! The one door to the host's capabilities: [`call`] sends a JSON request to a capability
//! by name and returns its JSON response, whatever the module's form.
//!
//! - A preview 1 module (`wasm32-wasip1`) imports the core function `"taskhost" "call"`
//!   (`docs/PROTOCOL.md`, "Capabilities"): name and request in, the response written into
//!   a buffer of the module's memory, with a status.
//! - A preview 2 component (`wasm32-wasip2`) goes through the WIT interface
//!   `taskhost:task/host` (`wit/taskhost.wit`).
//! - Anywhere else (the host's unit tests) there is no host: every call fails with
//!   `unavailable`.
//!
//! The typed wrappers ([`crate::kv`], [`crate::sql`], [`crate::mail`], [`crate::publish`])
//! are built on it.

use std::fmt;

use serde_json::Value;

/// Why a capability call did not succeed, as the host said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// `not_allowed` (no grant covers it), `bad_request`, `too_large`, `limit_reached`,
    /// `failed`, `unavailable`.
    pub code: String,
    /// For a person; a refusal's contains "not allowed" and names what was refused.
    pub message: String,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for CallError {}

impl From<CallError> for String {
    fn from(error: CallError) -> String {
        error.to_string()
    }
}

impl CallError {
    fn from_response(response: &[u8]) -> CallError {
        let value: Value = serde_json::from_slice(response).unwrap_or(Value::Null);
        CallError {
            code: value["code"].as_str().unwrap_or("failed").to_owned(),
            message: value["message"]
                .as_str()
                .unwrap_or("the host's error could not be read")
                .to_owned(),
        }
    }

    pub(crate) fn unexpected(what: &str, response: &Value) -> CallError {
        CallError {
            code: "failed".to_owned(),
            message: format!(
                "the host answered {what} with {response}, which this crate does not understand"
            ),
        }
    }
}

/// Calls capability `name` with `request`; the response, or the host's error.
pub fn call(name: &str, request: &Value) -> Result<Value, CallError> {
    let request = serde_json::to_vec(request).map_err(|error| CallError {
        code: "bad_request".to_owned(),
        message: format!("the request cannot be encoded: {error}"),
    })?;
    let (ok, response) = imp::call(name, &request);
    if ok {
        serde_json::from_slice(&response).map_err(|error| CallError {
            code: "failed".to_owned(),
            message: format!("the host's response is not JSON: {error}"),
        })
    } else {
        Err(CallError::from_response(&response))
    }
}

/// Preview 1: the core import.
#[cfg(all(target_arch = "wasm32", target_os = "wasi", target_env = "p1"))]
mod imp {
    #[link(wasm_import_module = "taskhost")]
    unsafe extern "C" {
        /// `"taskhost" "call"`: see docs/PROTOCOL.md, "Capabilities".
        #[link_name = "call"]
        fn taskhost_call(
            name: *const u8,
            name_len: usize,
            request: *const u8,
            request_len: usize,
            response: *mut u8,
            response_cap: usize,
            response_len: *mut u32,
        ) -> i32;
    }

    const OK: i32 = 0;
    const TOO_SMALL: i32 = 2;

    /// A first buffer that holds most responses.
    const FIRST_BUFFER: usize = 4096;

    /// Makes the call; `(true, result)` or `(false, error JSON)`.
    pub(super) fn call(name: &str, request: &[u8]) -> (bool, Vec<u8>) {
        let mut buffer = vec![0u8; FIRST_BUFFER];
        let mut status = raw(name, request, &mut buffer);
        if status.0 == TOO_SMALL {
            // The host kept the response: fetch it into a buffer of the size it said.
            buffer = vec![0u8; status.1];
            status = raw("response", &[], &mut buffer);
        }
        buffer.truncate(status.1.min(buffer.len()));
        (status.0 == OK, buffer)
    }

    fn raw(name: &str, request: &[u8], buffer: &mut [u8]) -> (i32, usize) {
        let mut length = 0u32;
        // SAFETY: every pointer and length describes a live slice of this module's
        // memory for the whole call; the host writes at most `buffer.len()` bytes into
        // `buffer` and 4 into `length`.
        let status = unsafe {
            taskhost_call(
                name.as_ptr(),
                name.len(),
                request.as_ptr(),
                request.len(),
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut length,
            )
        };
        (status, length as usize)
    }
}

/// Preview 2: the WIT interface `taskhost:task/host`.
#[cfg(all(target_arch = "wasm32", target_os = "wasi", target_env = "p2"))]
mod imp {
    pub(super) fn call(name: &str, request: &[u8]) -> (bool, Vec<u8>) {
        let request = String::from_utf8_lossy(request);
        match crate::progress::bindings::taskhost::task::host::call(name, &request) {
            Ok(response) => (true, response.into_bytes()),
            Err(error) => (
                false,
                serde_json::to_vec(
                    &serde_json::json!({"code": error.code, "message": error.message}),
                )
                .unwrap_or_default(),
            ),
        }
    }
}

/// Elsewhere: no host.
#[cfg(not(all(
    target_arch = "wasm32",
    target_os = "wasi",
    any(target_env = "p1", target_env = "p2")
)))]
mod imp {
    pub(super) fn call(name: &str, _request: &[u8]) -> (bool, Vec<u8>) {
        let error = serde_json::json!({
            "code": "unavailable",
            "message": format!("capability {name:?} needs the taskhost sandbox"),
        });
        (false, serde_json::to_vec(&error).unwrap_or_default())
    }
}
