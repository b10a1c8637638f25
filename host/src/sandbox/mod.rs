//! The only door into wasmtime: the engine, compiling a module once, and running one task in a
//! fresh, limited instance.
//!
//! A task's store holds its own WASI context (stdin is the input; stdout and stderr are
//! bounded in-memory pipes; no files, environment, arguments beyond the task's name, host
//! stdio or sockets) and its memory cap. Fuel bounds its CPU and, through async yields, keeps
//! it from holding a thread; a timer around the whole run bounds its wall-clock time, which
//! also covers time blocked in host calls such as WASI's sleep, where fuel does not tick.

mod engine;
mod limiter;
mod outcome;
mod output;

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use wasmtime::{Engine, InstancePre, Linker, Module, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;

pub use engine::{EngineSize, FUEL_YIELD_INTERVAL};
pub use outcome::{Outcome, decode_result};

use crate::protocol::Limits;
use limiter::MemoryCap;
use outcome::{Ending, RunError, classify};
use output::OutputCapture;

/// What a task's store holds.
pub struct TaskState {
    wasi: WasiP1Ctx,
    memory: MemoryCap,
}

/// A module compiled and linked once, ready to be instantiated for every task.
pub struct WasmModule {
    pre: InstancePre<TaskState>,
}

impl std::fmt::Debug for WasmModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmModule").finish_non_exhaustive()
    }
}

/// One task's run, as the sandbox needs it.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The task's name: the module's only argument (argv\[0\]).
    pub name: String,
    /// The input JSON, handed to the module on stdin.
    pub input: Bytes,
    pub limits: Limits,
}

/// The engine and the WASI imports every module is linked against.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<TaskState>,
    /// Bytes of stdout and stderr together a task may write (`--max-output`).
    max_output: usize,
}

impl Sandbox {
    pub fn new(size: EngineSize, max_output: usize) -> anyhow::Result<Sandbox> {
        let engine = engine::build_engine(size)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut TaskState| {
            &mut state.wasi
        })
        .map_err(anyhow::Error::from)
        .context("could not link the WASI imports")?;
        Ok(Sandbox {
            engine,
            linker,
            max_output,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles a module (binary or text format) and links it: the work done once per module,
    /// so that each task only instantiates.
    pub fn compile(&self, bytes: &[u8]) -> anyhow::Result<WasmModule> {
        let module = Module::new(&self.engine, bytes).map_err(anyhow::Error::from)?;
        match module.get_export("_start") {
            Some(wasmtime::ExternType::Func(_)) => {}
            _ => anyhow::bail!(
                "it has no `_start` function: task modules are WASI command programs \
                 (for Rust, a binary crate built for wasm32-wasip1)"
            ),
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(anyhow::Error::from)
            .context("it imports something the sandbox does not provide (only WASI preview 1)")?;
        Ok(WasmModule { pre })
    }

    /// Runs one task in a fresh instance and says how it ended. Never panics on a guest's
    /// behaviour; dropping the future stops the guest at its next yield.
    pub async fn run(&self, module: &WasmModule, spec: RunSpec) -> Outcome {
        let capture = OutputCapture::new(self.max_output);
        let wasi = WasiCtxBuilder::new()
            .stdin(MemoryInputPipe::new(spec.input))
            .stdout(capture.stdout_pipe())
            .stderr(capture.stderr_pipe())
            .arg(&spec.name)
            .build_p1();
        let mut store = Store::new(
            &self.engine,
            TaskState {
                wasi,
                memory: MemoryCap::new(spec.limits.memory_bytes),
            },
        );
        store.limiter(|state| &mut state.memory);
        // A new store starts with no fuel: without this, the first instruction would trap.
        if let Err(error) = store
            .set_fuel(spec.limits.fuel)
            .and_then(|()| store.fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL)))
        {
            return Outcome::failed(
                crate::protocol::ErrorCode::Internal,
                format!("could not meter the task: {error}"),
            );
        }

        let deadline = Duration::from_millis(spec.limits.timeout_ms);
        let ran = tokio::time::timeout(deadline, start(&module.pre, &mut store))
            .await
            .ok();
        let fuel_used = spec.limits.fuel - store.get_fuel().unwrap_or(0);
        classify(Ending {
            ran,
            capture: &capture,
            refused_memory: store.data().memory.refused(),
            fuel_used,
            limits: spec.limits,
        })
    }
}

/// Instantiates the module and calls its `_start`.
async fn start(pre: &InstancePre<TaskState>, store: &mut Store<TaskState>) -> Result<(), RunError> {
    let instance = pre
        .instantiate_async(&mut *store)
        .await
        .map_err(RunError::Instantiate)?;
    let start = instance
        .get_typed_func::<(), ()>(&mut *store, "_start")
        .map_err(RunError::Instantiate)?;
    start
        .call_async(&mut *store, ())
        .await
        .map_err(RunError::Run)
}
