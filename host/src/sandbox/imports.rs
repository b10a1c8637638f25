//! What a task may import: WASI (preview 1 for modules, preview 2 for components), the
//! optional `progress` call and the capability calls (`capability_calls.rs` for modules,
//! `component_calls.rs` for components), nothing else.
//!
//! - Preview 1: module `taskhost`, function `progress(fraction: f64, ptr: i32, len: i32)`,
//!   the message being UTF-8 bytes in the module's exported `memory`.
//! - Preview 2: interface `taskhost:task/progress@0.1.0`, `report(fraction: f64, message:
//!   string)` (`wit/taskhost.wit`).
//!
//! A call with a message outside the module's memory traps the task. Only the first
//! [`super::MAX_PROGRESS_MESSAGE`] characters are passed on, and the host copies no more:
//! preview 1 decodes at most 4 bytes for each of them; preview 2 reads the string in place in
//! the component's memory (the component model has the host check that all of it is UTF-8),
//! and a message, like anything a component passes one host call, may be at most
//! `COMPONENT_MAX_CALL_BYTES` (`mod.rs`).

use anyhow::Context;
use wasmtime::component::{Linker as ComponentLinker, WasmStr};
use wasmtime::{Caller, Engine, Extern, Linker, format_err};

use super::state::{ComponentState, ModuleState};

/// The preview 1 import module and function of `progress`.
pub const PROGRESS_MODULE: &str = "taskhost";
pub const PROGRESS_FUNCTION: &str = "progress";

/// The preview 2 interface of `progress`.
pub const PROGRESS_INTERFACE: &str = "taskhost:task/progress@0.1.0";

/// The linker for preview 1 modules.
pub fn module_linker(engine: &Engine) -> anyhow::Result<Linker<ModuleState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, ModuleState::wasi)
        .map_err(anyhow::Error::from)
        .context("could not link WASI preview 1")?;
    super::stdio::shadow_wasi(&mut linker)?;
    linker
        .func_wrap_async(
            PROGRESS_MODULE,
            PROGRESS_FUNCTION,
            |mut caller, (fraction, pointer, length)| {
                Box::new(async move {
                    super::stdio::pause_if_due(&mut caller).await;
                    module_progress(caller, fraction, pointer, length)
                })
            },
        )
        .map_err(anyhow::Error::from)
        .context("could not link taskhost.progress")?;
    super::capability_calls::link(&mut linker).context("could not link taskhost.call")?;
    Ok(linker)
}

/// The linker for preview 2 components.
pub fn component_linker(engine: &Engine) -> anyhow::Result<ComponentLinker<ComponentState>> {
    let mut linker = ComponentLinker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("could not link WASI preview 2")?;
    // wasi:http's outgoing handler and types; requests go through the task's http grant
    // (sandbox/wasi_http.rs).
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("could not link wasi:http")?;
    linker
        .instance(PROGRESS_INTERFACE)
        .and_then(|mut progress| {
            progress.func_wrap(
                "report",
                |store: wasmtime::StoreContextMut<'_, ComponentState>,
                 (fraction, message): (f64, WasmStr)| {
                    // Read in place in the component's memory, not copied into the host
                    // (a `String` would be, whole); `report_progress` keeps the first
                    // MAX_PROGRESS_MESSAGE characters of it.
                    let message = message.to_str(&store)?;
                    store.data().controls.report_progress(fraction, &message);
                    Ok(())
                },
            )
        })
        .map_err(anyhow::Error::from)
        .context("could not link taskhost:task/progress")?;
    super::component_calls::link(&mut linker)
        .context("could not link the taskhost:task capability interfaces")?;
    Ok(linker)
}

fn module_progress(
    mut caller: Caller<'_, ModuleState>,
    fraction: f64,
    pointer: i32,
    length: i32,
) -> wasmtime::Result<()> {
    let memory = caller
        .get_export("memory")
        .and_then(Extern::into_memory)
        .ok_or_else(|| format_err!("taskhost.progress needs the module to export its `memory`"))?;
    let (start, length) = (pointer as u32 as usize, length as u32 as usize);
    let (data, state) = memory.data_and_store_mut(&mut caller);
    let bytes = start
        .checked_add(length)
        .and_then(|end| data.get(start..end))
        .ok_or_else(|| {
            format_err!(
                "taskhost.progress was given a message at {start}..{start}+{length}, outside the \
                 module's memory of {} bytes",
                data.len()
            )
        })?;
    // Only the first MAX_PROGRESS_MESSAGE characters are passed on: decode no more than
    // those can take (4 bytes each), however long the message.
    let bytes = &bytes[..bytes.len().min(4 * super::MAX_PROGRESS_MESSAGE)];
    let message = String::from_utf8_lossy(bytes);
    state.controls.report_progress(fraction, &message);
    Ok(())
}
