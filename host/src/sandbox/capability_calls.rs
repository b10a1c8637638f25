//! The preview 1 door to the capabilities: one import for every capability and every
//! language, JSON in and JSON out through the module's memory.
//!
//! ```text
//! (import "taskhost" "call"
//!   (func (param $name_ptr i32) (param $name_len i32)
//!         (param $request_ptr i32) (param $request_len i32)
//!         (param $response_ptr i32) (param $response_cap i32)
//!         (param $response_len_ptr i32)
//!         (result i32)))
//! ```
//!
//! `name` is the capability (`kv`, `sql`, `mail`, `publish`, `http`), `request` its JSON
//! request (UTF-8). The host writes the response JSON at `response_ptr` (at most
//! `response_cap` bytes) and its length as a little-endian u32 at `response_len_ptr`, and
//! returns:
//!
//! - [`CALL_OK`] (0): the response is the call's result;
//! - [`CALL_ERROR`] (1): the response is `{"code": …, "message": …}` (`not_allowed`,
//!   `bad_request`, `too_large`, `limit_reached`, `failed`, `unavailable`);
//! - [`CALL_RESPONSE_TOO_SMALL`] (2): the response did not fit. Nothing was written to the
//!   buffer; the length it needs is at `response_len_ptr`. The host keeps the response
//!   (the call is not made again: an `incr` counts once): a call with the name `response`
//!   and a buffer large enough returns it, with the status it would have had. The next
//!   call of any other name drops it.
//!
//! A name over 64 bytes or a request over 1 MiB is answered with an error, never read. A
//! pointer or length outside the module's memory traps the task, as a WASI call would.

use serde::Serialize;
use wasmtime::{Caller, Extern, Linker, format_err};

use super::state::ModuleState;
use crate::capabilities::{
    CallError, ErrorCode, MAX_CALL_NAME_BYTES, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES,
};

/// The import's module and name.
pub const CALL_MODULE: &str = "taskhost";
pub const CALL_FUNCTION: &str = "call";

/// The name that fetches a response kept by [`CALL_RESPONSE_TOO_SMALL`].
pub const PENDING_RESPONSE: &str = "response";

pub const CALL_OK: i32 = 0;
pub const CALL_ERROR: i32 = 1;
pub const CALL_RESPONSE_TOO_SMALL: i32 = 2;

/// Adds `taskhost.call` to the preview 1 linker.
pub fn link(linker: &mut Linker<ModuleState>) -> anyhow::Result<()> {
    linker
        .func_wrap_async(
            CALL_MODULE,
            CALL_FUNCTION,
            |mut caller: Caller<'_, ModuleState>,
             (
                name_ptr,
                name_len,
                request_ptr,
                request_len,
                response_ptr,
                response_cap,
                response_len_ptr,
            ): (i32, i32, i32, i32, i32, i32, i32)| {
                Box::new(async move {
                    super::stdio::pause_if_due(&mut caller).await;
                    let (status, response) = answer(
                        &mut caller,
                        (name_ptr, name_len),
                        (request_ptr, request_len),
                    )
                    .await?;
                    // A call that worked for a while (a slow query) is the task's time:
                    // let the others have theirs before it goes on.
                    super::stdio::pause_if_due(&mut caller).await;
                    deliver(
                        &mut caller,
                        status,
                        response,
                        (response_ptr, response_cap),
                        response_len_ptr,
                    )
                })
            },
        )
        .map_err(anyhow::Error::from)?;
    Ok(())
}

/// Reads the call, makes it, and returns its status and response bytes.
async fn answer(
    caller: &mut Caller<'_, ModuleState>,
    name: (i32, i32),
    request: (i32, i32),
) -> wasmtime::Result<(i32, Vec<u8>)> {
    let name_len = name.1 as u32 as usize;
    if name_len > MAX_CALL_NAME_BYTES {
        return Ok(error(CallError::bad_request(format!(
            "the capability name is {name_len} bytes; names are at most {MAX_CALL_NAME_BYTES}"
        ))));
    }
    let name = String::from_utf8_lossy(&read(caller, name)?).into_owned();
    if name == PENDING_RESPONSE {
        return Ok(caller
            .data_mut()
            .pending_response
            .take()
            .unwrap_or_else(|| {
                error(CallError::bad_request(
                    "there is no response kept: `response` returns the response of the last call \
                 that did not fit its buffer",
                ))
            }));
    }
    caller.data_mut().pending_response = None;
    let request_len = request.1 as u32 as usize;
    if request_len > MAX_REQUEST_BYTES {
        return Ok(error(CallError::new(
            ErrorCode::TooLarge,
            format!(
                "the request is {request_len} bytes, over the {MAX_REQUEST_BYTES} one call may carry"
            ),
        )));
    }
    let request = read(caller, request)?;
    let Some(access) = caller.data().controls.capabilities.clone() else {
        return Ok(error(CallError::new(
            ErrorCode::NotAllowed,
            format!("capability {name:?} is not allowed: this run has no capabilities at all"),
        )));
    };
    Ok(match access.call(&name, &request).await {
        Ok(result) => encode(CALL_OK, &result),
        Err(refused) => error(refused),
    })
}

fn error(error: CallError) -> (i32, Vec<u8>) {
    encode(CALL_ERROR, &error)
}

/// The response's JSON, or a `too_large` error in its place when it is over the cap.
fn encode(status: i32, response: &impl Serialize) -> (i32, Vec<u8>) {
    match serde_json::to_vec(response) {
        Ok(bytes) if bytes.len() <= MAX_RESPONSE_BYTES => (status, bytes),
        Ok(bytes) => error(CallError::new(
            ErrorCode::TooLarge,
            format!(
                "the response is {} bytes, over the {MAX_RESPONSE_BYTES} one call may return",
                bytes.len()
            ),
        )),
        Err(failure) => error(CallError::failed(format!(
            "the response cannot be encoded: {failure}"
        ))),
    }
}

/// Writes the response if it fits, else keeps it; returns the status for the guest.
fn deliver(
    caller: &mut Caller<'_, ModuleState>,
    status: i32,
    response: Vec<u8>,
    (pointer, capacity): (i32, i32),
    length_pointer: i32,
) -> wasmtime::Result<i32> {
    let memory = memory(caller)?;
    let (data, state) = memory.data_and_store_mut(&mut *caller);
    let length = u32::try_from(response.len()).unwrap_or(u32::MAX);
    let length_at = span(data.len(), length_pointer, 4, "the response length")?;
    data[length_at].copy_from_slice(&length.to_le_bytes());
    let buffer = span(data.len(), pointer, capacity, "the response buffer")?;
    if response.len() > buffer.len() {
        state.pending_response = Some((status, response));
        return Ok(CALL_RESPONSE_TOO_SMALL);
    }
    data[buffer.start..buffer.start + response.len()].copy_from_slice(&response);
    Ok(status)
}

/// Copies `length` bytes at `pointer` out of the module's memory.
fn read(
    caller: &mut Caller<'_, ModuleState>,
    (pointer, length): (i32, i32),
) -> wasmtime::Result<Vec<u8>> {
    let memory = memory(caller)?;
    let data = memory.data(&*caller);
    let range = span(data.len(), pointer, length, "the call's name or request")?;
    Ok(data[range].to_vec())
}

fn memory(caller: &mut Caller<'_, ModuleState>) -> wasmtime::Result<wasmtime::Memory> {
    caller
        .get_export("memory")
        .and_then(Extern::into_memory)
        .ok_or_else(|| format_err!("taskhost.call needs the module to export its `memory`"))
}

/// `pointer..pointer+length` if it lies in a memory of `size` bytes; a trap otherwise.
fn span(
    size: usize,
    pointer: i32,
    length: i32,
    what: &str,
) -> wasmtime::Result<std::ops::Range<usize>> {
    let (start, length) = (pointer as u32 as usize, length as u32 as usize);
    start
        .checked_add(length)
        .filter(|end| *end <= size)
        .map(|end| start..end)
        .ok_or_else(|| {
            format_err!(
                "taskhost.call was given {what} at {start}..{start}+{length}, outside the \
                 module's memory of {size} bytes"
            )
        })
}
