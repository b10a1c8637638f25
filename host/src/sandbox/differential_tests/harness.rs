//! Running a guest under plain wasmtime-wasi and under the sandbox's linker, and what is
//! compared: how the run ended, the guest's log, stdout and stderr.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use wasmtime::{Caller, Engine, Instance, Linker, Module, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use crate::sandbox::imports;
use crate::sandbox::limiter::{MemoryBudget, MemoryCap};
use crate::sandbox::output::OutputCapture;
use crate::sandbox::state::{Controls, HostSlice, ModuleState};
use crate::sandbox::stdio::Stdio;

/// The task's name: its only argument.
pub(super) const TASK: &str = "difftask";

/// Output either side may capture; no guest here comes near it.
const OUTPUT_LIMIT: usize = 16 << 20;

/// Where a text guest's log starts; the `log_end` global says where it ends.
const LOG_START: usize = 0x10000;

/// Errno values the tests name (`wasi_snapshot_preview1.witx`), written out again here so
/// that a mistake in `wasi_abi.rs` does not hide in both sides.
pub(super) const SUCCESS: i64 = 0;
pub(super) const BADF: i64 = 8;
pub(super) const INTR: i64 = 27;
pub(super) const INVAL: i64 = 28;

/// How a run ended.
#[derive(Debug, Clone)]
pub(super) enum Ending {
    Returned,
    Exit(i32),
    /// A trap or any other error, with its message (which the comparison ignores).
    Trap(#[expect(dead_code, reason = "read in failures' debug output")] String),
}

impl PartialEq for Ending {
    fn eq(&self, other: &Ending) -> bool {
        match (self, other) {
            (Ending::Returned, Ending::Returned) | (Ending::Trap(_), Ending::Trap(_)) => true,
            (Ending::Exit(a), Ending::Exit(b)) => a == b,
            _ => false,
        }
    }
}

/// What a run showed of the guest's behaviour.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Seen {
    pub(super) ending: Ending,
    /// The text guests' log: a word per entry (an errno, a count, a byte, a yes or no).
    pub(super) log: Vec<i64>,
    pub(super) stdout: String,
    /// Trimmed, as the sandbox's capture hands it out.
    pub(super) stderr: String,
}

impl Seen {
    pub(super) fn traps(&self) -> bool {
        matches!(self.ending, Ending::Trap(_))
    }
}

/// The engine and both linkers.
pub(super) struct Harness {
    engine: Engine,
    sandbox: Linker<ModuleState>,
    reference: Linker<WasiP1Ctx>,
}

impl Harness {
    pub(super) fn new() -> Harness {
        let engine = Engine::default();
        let sandbox = imports::module_linker(&engine).expect("the sandbox's linker");
        let mut reference = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut reference, |ctx| ctx)
            .expect("wasmtime-wasi's preview 1");
        // The Rust tasks that report progress import it; wasmtime-wasi has nothing to say.
        reference
            .func_wrap(
                imports::PROGRESS_MODULE,
                imports::PROGRESS_FUNCTION,
                |_: Caller<'_, WasiP1Ctx>, _: f64, _: i32, _: i32| {},
            )
            .expect("a progress stub");
        Harness {
            engine,
            sandbox,
            reference,
        }
    }

    pub(super) fn module(&self, wasm: &[u8]) -> Module {
        Module::new(&self.engine, wasm).expect("the guest compiles")
    }

    /// Runs `module` under plain wasmtime-wasi.
    pub(super) async fn reference(&self, module: &Module, input: &[u8]) -> Seen {
        let stdout = MemoryOutputPipe::new(OUTPUT_LIMIT);
        let stderr = MemoryOutputPipe::new(OUTPUT_LIMIT);
        let ctx = WasiCtxBuilder::new()
            .stdin(MemoryInputPipe::new(Bytes::copy_from_slice(input)))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .arg(TASK)
            .build_p1();
        let mut store = Store::new(&self.engine, ctx);
        let (ending, log) = run(&self.reference, &mut store, module).await;
        Seen {
            ending,
            log,
            stdout: String::from_utf8_lossy(&stdout.contents()).into_owned(),
            stderr: String::from_utf8_lossy(&stderr.contents())
                .trim()
                .to_owned(),
        }
    }

    /// Runs `module` under the sandbox's linker, with the state `Sandbox::run` gives a module
    /// (not its fuel or memory limit, which these calls do not meet).
    pub(super) async fn sandbox(&self, module: &Module, input: &[u8]) -> Seen {
        let capture = OutputCapture::new(OUTPUT_LIMIT);
        let stdio = Stdio::new(TASK.into(), Bytes::copy_from_slice(input), capture.clone());
        let controls = Controls {
            memory: MemoryCap::new(u64::MAX, Arc::new(MemoryBudget::new(u64::MAX))),
            progress: None,
            slice: HostSlice::new(),
            capabilities: None,
        };
        let mut store = Store::new(&self.engine, ModuleState::new(stdio, controls));
        let (ending, log) = run(&self.sandbox, &mut store, module).await;
        Seen {
            ending,
            log,
            stdout: String::from_utf8_lossy(&capture.stdout()).into_owned(),
            stderr: capture.stderr_tail(OUTPUT_LIMIT),
        }
    }

    /// Runs `module` both ways: (wasmtime-wasi's run, the sandbox's).
    pub(super) async fn both(&self, module: &Module, input: &[u8]) -> (Seen, Seen) {
        let reference = self.reference(module, input).await;
        let sandbox = self.sandbox(module, input).await;
        (reference, sandbox)
    }

    /// Runs `module` both ways, checks that they saw the same, and returns what they saw.
    pub(super) async fn same(&self, what: &str, module: &Module, input: &[u8]) -> Seen {
        let (reference, sandbox) = self.both(module, input).await;
        assert_eq!(
            sandbox, reference,
            "{what}: the sandbox (left) and wasmtime-wasi (right) differ"
        );
        sandbox
    }

    /// A text guest made of [`PRELUDE`] and `body`, with `pages` of memory.
    pub(super) fn text(&self, pages: u32, body: &str) -> Module {
        let text = PRELUDE
            .replace("{pages}", &pages.to_string())
            .replace("{body}", body);
        self.module(text.as_bytes())
    }
}

/// Instantiates `module` in `store`, calls its `_start`, and reads its log.
async fn run<T: Send + 'static>(
    linker: &Linker<T>,
    store: &mut Store<T>,
    module: &Module,
) -> (Ending, Vec<i64>) {
    let instance = linker
        .instantiate_async(&mut *store, module)
        .await
        .expect("the guest instantiates");
    let start = instance
        .get_typed_func::<(), ()>(&mut *store, "_start")
        .expect("the guest has a `_start`");
    let ending = match start.call_async(&mut *store, ()).await {
        Ok(()) => Ending::Returned,
        Err(error) => match error.downcast_ref::<I32Exit>() {
            Some(I32Exit(status)) => Ending::Exit(*status),
            None => Ending::Trap(format!("{error:#}")),
        },
    };
    (ending, log(&instance, store))
}

/// The log a text guest left in its memory; nothing for other guests.
fn log<T>(instance: &Instance, store: &mut Store<T>) -> Vec<i64> {
    let Some(end) = instance.get_global(&mut *store, "log_end") else {
        return Vec::new();
    };
    let end = end.get(&mut *store).i32().expect("`log_end` is an i32") as usize;
    let memory = instance
        .get_memory(&mut *store, "memory")
        .expect("the guest exports its memory");
    memory.data(&*store)[LOG_START..end]
        .chunks_exact(8)
        .map(|word| i64::from_le_bytes(word.try_into().expect("8 bytes")))
        .collect()
}

/// What every text guest starts with: the imports, a memory of `{pages}` pages, the log
/// and helpers that make a call and log what came of it. `{body}` is `_start`'s.
///
/// Memory: 0x100 results, 0x200 iovecs, 0x800 text to write, 0x1000 read buffer, 0x3000
/// subscriptions, 0x4000 events, 0x5000 an fdstat, 0x6000 arguments, 0x10000 the log,
/// 0x20000 random bytes. Buffers the host may write are filled with 0xAA (results with
/// 0x7777) first, so a byte written where it should not be shows in the log.
const PRELUDE: &str = include_str!("prelude.wat");

/// A tasks-folder module, built by `just build-guests`.
pub(super) fn task(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tasks")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "{} is missing ({error}): run `just build-guests` first (`just test` does)",
            path.display()
        )
    })
}
