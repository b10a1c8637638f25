//! The only door into wasmtime: the engine, compiling a module or component once, and running
//! one task in a fresh, limited instance.
//!
//! A task's store holds its own WASI context (stdin is the input; stdout and stderr are
//! bounded in-memory pipes; no files, environment, arguments beyond the task's name, host
//! stdio or sockets), its memory cap (all its memories and tables together, within the
//! server's budget) and its progress sink. Fuel bounds its CPU and, through async yields,
//! keeps it from holding a thread; a timer around the whole run bounds its wall-clock time,
//! which also covers time blocked in host calls such as WASI's sleep, where fuel does not
//! tick.

mod cache_dir;
mod capability_calls;
mod component_calls;
#[cfg(test)]
mod differential_tests;
mod engine;
mod fuel_register;
mod guest_memory;
mod image_layout;
mod imports;
mod limiter;
mod outcome;
mod output;
mod state;
mod stdio;
mod warm;
mod wasi_abi;
mod wasi_http;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::future::Either;
use wasmtime::component::{Component, Linker as ComponentLinker, ResourceTable};
use wasmtime::{Engine, InstancePre, Linker, Module, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi_http::WasiHttpCtx;

pub use engine::{EngineSettings, FUEL_YIELD_INTERVAL, physical_memory};
pub use outcome::{Failure, RunEnd};
pub use state::{MAX_PROGRESS_MESSAGE, ProgressSink};

use crate::limits::Limits;
use limiter::{MemoryBudget, MemoryCap};
use outcome::{Ending, RunError, classify};
use output::OutputCapture;
use state::{ComponentState, Controlled, Controls, HostSlice, ModuleState};
use stdio::Stdio;
pub use warm::Warmed;
use warm::Warmer;
use wasi_http::TaskHttp;

/// The most randomness a component gets from one call (`wasi:random`), in bytes.
const COMPONENT_MAX_RANDOM: u64 = 1 << 20;

/// The most resource handles (streams, pollables) a component may hold at once: they live
/// in host memory, outside the task's memory limit (wasmtime's default is a million).
const COMPONENT_MAX_HANDLES: usize = 10_000;

/// The most one `wasi:http` header set (a `fields` resource) may hold, in bytes of its
/// in-memory form: the host holds them, outside the task's memory cap.
const COMPONENT_MAX_HEADER_BYTES: usize = 64 << 10;

/// The most data a component may hand the host in one call, in bytes (wasmtime's "hostcall
/// fuel", whose default is 128 MiB): its strings and lists, such as a progress message, a
/// write or a `wasi:io/poll` list. A call that passes more traps. What the host copies or
/// builds for one call lives outside the task's memory limit; this bounds it. Four times
/// the largest write the output streams permit (64 KiB). A poll list costs a host
/// `Resource` (12 bytes) an entry, so it may name at most 21,845 pollables, where
/// wasmtime-wasi takes any number up to wasmtime's 100,000 live handles in a store (the
/// same pollable repeated: each entry is a lend).
pub(crate) const COMPONENT_MAX_CALL_BYTES: usize = 256 << 10;

/// A task's code, compiled and linked once, ready to be instantiated for every task.
pub struct WasmModule {
    entry: Entry,
    /// Where a preview 1 module's tasks write first in its memory (`image_layout`), for
    /// warming its pool slots.
    layout: image_layout::Layout,
}

enum Entry {
    /// A WASI preview 1 command module.
    Module(Command),
    /// A WASI preview 2 command component.
    Component(CommandPre<ComponentState>),
}

impl WasmModule {
    /// `module` (preview 1) or `component` (preview 2), as `list` reports it.
    pub fn kind(&self) -> &'static str {
        match self.entry {
            Entry::Module(_) => "module",
            Entry::Component(_) => "component",
        }
    }
}

impl std::fmt::Debug for WasmModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmModule")
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

/// One task's run, as the sandbox needs it.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The task's name: the module's only argument (argv\[0\]).
    pub name: Arc<str>,
    /// The input JSON, handed to the module on stdin.
    pub input: Bytes,
    pub limits: Limits,
    /// Where the task's progress reports go, if anywhere.
    pub progress: Option<ProgressSink>,
    /// The capabilities the task may call, if any.
    pub capabilities: Option<crate::capabilities::TaskAccess>,
}

/// The engine and the imports every module and component is linked against.
pub struct Sandbox {
    engine: Engine,
    /// The on-disk compile cache, if any; kept to report its hits.
    cache: Option<wasmtime::Cache>,
    modules: Linker<ModuleState>,
    components: ComponentLinker<ComponentState>,
    /// Bytes of stdout and stderr together a task may write (`--max-output`).
    max_output: usize,
    /// The memory all running tasks may hold together; each task's cap holds a clone.
    budget: Arc<MemoryBudget>,
    warmer: Warmer,
}

impl Sandbox {
    pub fn new(settings: &EngineSettings, max_output: usize) -> anyhow::Result<Sandbox> {
        let (engine, cache) = engine::build_engine(settings)?;
        Ok(Sandbox {
            budget: Arc::new(MemoryBudget::new(settings.memory_budget_bytes)),
            cache,
            modules: imports::module_linker(&engine)?,
            components: imports::component_linker(&engine)?,
            warmer: Warmer::new(&engine)?,
            engine,
            max_output,
        })
    }

    /// Bytes of memories and tables that running tasks hold now, out of `--memory-budget`.
    pub fn memory_reserved(&self) -> u64 {
        self.budget.reserved()
    }

    /// Modules and components loaded from the compile cache, and compiled afresh, so far.
    pub fn cache_counts(&self) -> Option<(usize, usize)> {
        self.cache
            .as_ref()
            .map(|cache| (cache.cache_hits(), cache.cache_misses()))
    }

    /// Compiles a module or component (binary or text format, told apart by its header) and
    /// links it: the work done once, so that each task only instantiates. Compiled code comes
    /// from the on-disk cache when the engine has one and the same bytes were seen before.
    pub fn compile(&self, bytes: &[u8]) -> anyhow::Result<WasmModule> {
        let binary = wat::parse_bytes(bytes).map_err(|error| {
            anyhow::anyhow!(
                "it is neither WebAssembly nor valid WebAssembly text: {}",
                text_error(&error.to_string())
            )
        })?;
        if is_component(&binary) {
            self.compile_component(&binary)
        } else {
            self.compile_module(&binary)
        }
    }

    fn compile_module(&self, binary: &[u8]) -> anyhow::Result<WasmModule> {
        let module = Module::new(&self.engine, binary).map_err(pool_misfit)?;
        let start = match module.get_export("_start") {
            Some(wasmtime::ExternType::Func(start))
                if start.params().len() == 0 && start.results().len() == 0 =>
            {
                module
                    .get_export_index("_start")
                    .context("its `_start` export could not be indexed")?
            }
            Some(_) => anyhow::bail!(
                "its `_start` is not a function without parameters or results, as WASI commands have"
            ),
            None => anyhow::bail!(
                "it has no `_start` function: task modules are WASI command programs \
                 (for Rust, a binary crate built for wasm32-wasip1)"
            ),
        };
        let pre = self.modules.instantiate_pre(&module).map_err(anyhow::Error::from).context(
            "it imports something the sandbox does not provide (WASI preview 1, taskhost.progress \
             and taskhost.call)",
        )?;
        Ok(WasmModule {
            entry: Entry::Module(Command { pre, start }),
            layout: image_layout::Layout::of(binary),
        })
    }

    fn compile_component(&self, binary: &[u8]) -> anyhow::Result<WasmModule> {
        let component = Component::new(&self.engine, binary).map_err(pool_misfit)?;
        let pre = self
            .components
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context(
                "it imports something the sandbox does not provide (WASI preview 2 and \
                 taskhost:task/progress, kv, sql, mail and publish)",
            )?;
        let command = CommandPre::new(pre)
            .map_err(anyhow::Error::from)
            .context("it is a component but not a WASI command: it must export wasi:cli/run")?;
        Ok(WasmModule {
            entry: Entry::Component(command),
            layout: image_layout::Layout::default(),
        })
    }

    /// Warms up to `slots` slots of the instance pool (see `sandbox/warm.rs`), each held with a permit
    /// from `lend`; stops early when `lend` has none or `release` is cancelled. With `image`,
    /// a preview 1 module, its data image is mapped into a memory slot for each warmed slot,
    /// ready for its first tasks. Says how many slots were warmed, and whether with the image.
    pub async fn warm_pool<P: Send + 'static>(
        &self,
        slots: usize,
        lend: impl FnMut() -> Option<P>,
        release: tokio_util::sync::CancellationToken,
        image: Option<&WasmModule>,
    ) -> anyhow::Result<Warmed> {
        let image = image.and_then(|module| match &module.entry {
            Entry::Module(command) => Some(warm::Image {
                module: command.pre.module(),
                layout: module.layout,
            }),
            Entry::Component(_) => None,
        });
        self.warmer.warm(slots, lend, release, image).await
    }

    /// Runs one task in a fresh instance and says how it ended, handing back the spent
    /// store for the caller to drop when the task's answer is on its way: the drop resets the
    /// instance's pool slot (a few microseconds on a warm core, 6-17 after an idle one, by
    /// the host index's `sandbox_echo_idle_reset_us`), which no client need wait for. Whoever
    /// holds the [`Spent`] holds that slot. Never panics on a guest's behaviour; dropping the
    /// future stops the guest at its next yield.
    ///
    /// The store is made here, before the future is returned: the task's name, input,
    /// progress sink and capabilities move into it, and the future keeps only what the run
    /// needs after (a `spec` kept by an `async fn` is held for the whole run, twice: as the
    /// argument and as the local it is moved to). A sleeping task holds this future for as
    /// long as it sleeps (`tests::a_sleeping_task_s_future_and_state_stay_small`).
    pub fn run<'a>(
        &'a self,
        module: &'a WasmModule,
        spec: RunSpec,
    ) -> impl Future<Output = (RunEnd, Spent)> + Send + 'a {
        let RunSpec {
            name,
            input,
            limits,
            progress,
            capabilities,
        } = spec;
        let capture = OutputCapture::new(self.max_output);
        let controls = Controls {
            memory: MemoryCap::new(limits.memory_bytes, Arc::clone(&self.budget)),
            progress,
            slice: HostSlice::new(),
            capabilities,
        };
        match &module.entry {
            Entry::Module(command) => {
                let stdio = Stdio::new(name, input, capture.clone());
                let store = self.store(ModuleState::new(stdio, controls));
                Either::Left(Sandbox::metered(store, limits, capture, command))
            }
            Entry::Component(pre) => {
                let state = ComponentState {
                    wasi: WasiCtxBuilder::new()
                        .stdin(MemoryInputPipe::new(input))
                        .stdout(capture.stdout_pipe())
                        .stderr(capture.stderr_pipe())
                        .arg(&name)
                        // One call's worth of randomness is work the host does unmetered.
                        .max_random_size(COMPONENT_MAX_RANDOM)
                        .build(),
                    table: {
                        let mut table = ResourceTable::new();
                        table.set_max_capacity(COMPONENT_MAX_HANDLES);
                        table
                    },
                    http: {
                        let mut http = WasiHttpCtx::new();
                        http.set_field_size_limit(COMPONENT_MAX_HEADER_BYTES);
                        http
                    },
                    http_hooks: TaskHttp::new(controls.capabilities.clone()),
                    controls,
                };
                let store = self.store(state);
                // Boxed: a component's run is the larger future, and every module's run would
                // otherwise be as large.
                Either::Right(Box::pin(Sandbox::metered(store, limits, capture, pre)))
            }
        }
    }

    /// A new store holding `state`, its memory limited. Made before the run's future is
    /// awaited, so that the state moves into the store's allocation and is not also held,
    /// spent, in the future's (sleeping tasks hold both while they sleep).
    fn store<T: Controlled>(&self, state: T) -> Store<T> {
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.controls().memory);
        T::prepare(&mut store);
        store
    }

    /// Runs `start` in `store` under the task's limits and classifies how it ended. Not an
    /// `async fn`: its future would hold each argument twice (as the argument and as the
    /// local it is moved to); an `async move` block holds what it captures once.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn's future holds its arguments twice; see the doc comment"
    )]
    fn metered<'a, T: Controlled>(
        mut store: Store<T>,
        limits: Limits,
        capture: OutputCapture,
        entry: &'a (impl Start<T> + Sync),
    ) -> impl Future<Output = (RunEnd, Spent)> + Send + 'a {
        async move {
            // A new store starts with no fuel: without this, the first instruction would trap.
            if let Err(error) = store
                .set_fuel(limits.fuel)
                .and_then(|()| store.fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL)))
            {
                let end = RunEnd::unmetered(format!("could not meter the task: {error}"));
                return (end, T::spent(store));
            }
            let deadline = Duration::from_millis(limits.timeout_ms);
            let ran = tokio::time::timeout(deadline, entry.start(&mut store))
                .await
                .ok();
            let fuel_used = limits.fuel - store.get_fuel().unwrap_or(0);
            let controls = store.data_mut().controls();
            let out_of_time = controls
                .capabilities
                .as_ref()
                .is_some_and(|access| access.time_left().is_zero());
            let end = classify(Ending {
                ran,
                capture: &capture,
                refused_memory: controls.memory.refused(),
                fuel_used,
                limits,
                out_of_time,
            });
            (end, T::spent(store))
        }
    }
}

/// A task's store after its run. Dropping it drops the instance and resets its pool slot;
/// until then the slot stays taken, so hold it no longer than the worker permit the run
/// had (the pool has one slot a permit).
pub struct Spent(#[allow(dead_code, reason = "held for its drop")] SpentStore);

/// The two kinds of store, so that a spent one is moved, not boxed.
enum SpentStore {
    Module(#[allow(dead_code, reason = "held for its drop")] Store<ModuleState>),
    Component(#[allow(dead_code, reason = "held for its drop")] Store<ComponentState>),
}

/// Says in the server's terms why a module does not fit the instance pool, when that is the
/// compile error: its initial memory above `--memory`, or a table longer than the sandbox's
/// maximum. Any other error is passed on as it is.
fn pool_misfit(error: wasmtime::Error) -> anyhow::Error {
    let text = format!("{error:#}");
    let number_after = |marker: &str| -> Option<u64> {
        let rest = text.split(marker).nth(1)?;
        let digits: String = rest
            .trim_start_matches("0x")
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect();
        if rest.starts_with("0x") {
            u64::from_str_radix(&digits, 16).ok()
        } else {
            digits.parse().ok()
        }
    };
    if let (Some(wanted), Some(limit)) = (
        number_after("minimum byte size of "),
        number_after("exceeds the limit of "),
    ) {
        return anyhow::anyhow!(
            "its memory starts at {wanted} bytes, more than the server's memory limit of \
             {limit} bytes (--memory): start the server with a higher --memory, or give the \
             module a smaller initial memory"
        );
    }
    if let (Some(wanted), Some(limit)) = (
        number_after("minimum element size of "),
        number_after("exceeds the limit of "),
    ) {
        return anyhow::anyhow!(
            "its table starts with {wanted} elements, more than the {limit} a task's table \
             may hold"
        );
    }
    anyhow::Error::from(error)
}

/// The text parser's error without the line of source it quotes: the file may be anything
/// (a link to a host file, say) and the message reaches every client. Keeps the message and
/// its position: `expected `(` at line 1 column 1`.
fn text_error(rendered: &str) -> String {
    let mut lines = rendered.lines();
    let message = lines.next().unwrap_or_default().trim();
    let position = lines
        .find_map(|line| line.trim().strip_prefix("--> "))
        .and_then(|location| {
            let mut parts = location.rsplitn(3, ':');
            let column = parts.next()?;
            let line = parts.next()?;
            Some(format!(" at line {line} column {column}"))
        })
        .unwrap_or_default();
    format!("{message}{position}")
}

/// A binary is a component when its header's layer field is 1 (core modules have 0):
/// `\0asm`, a 2-byte version, then the 2-byte layer.
fn is_component(binary: &[u8]) -> bool {
    binary.get(6..8) == Some(&[1, 0])
}

/// How a task's code starts: instantiate, then call its entry point.
trait Start<T> {
    fn start<'a>(
        &'a self,
        store: &'a mut Store<T>,
    ) -> impl Future<Output = Result<(), RunError>> + Send + 'a;
}

/// A preview 1 command module, ready to instantiate, and where its `_start` is.
struct Command {
    pre: InstancePre<ModuleState>,
    /// `_start`, found once when the module loads: looking it up by name took a string
    /// hash and a map search per task.
    start: wasmtime::ModuleExport,
}

impl Start<ModuleState> for Command {
    /// Instantiates a module and calls its `_start`.
    async fn start(&self, store: &mut Store<ModuleState>) -> Result<(), RunError> {
        let instance = self
            .pre
            .instantiate_async(&mut *store)
            .await
            .map_err(RunError::Instantiate)?;
        let start = instance
            .get_module_export(&mut *store, &self.start)
            .and_then(wasmtime::Extern::into_func)
            .ok_or_else(|| {
                RunError::Instantiate(wasmtime::format_err!(
                    "the instance has no `_start` where its module had one: a bug in taskhost"
                ))
            })?
            .typed::<(), ()>(&*store)
            .map_err(RunError::Instantiate)?;
        start
            .call_async(&mut *store, ())
            .await
            .map_err(RunError::Run)
    }
}

impl Start<ComponentState> for CommandPre<ComponentState> {
    /// Instantiates a component and calls its `wasi:cli/run`.
    async fn start(&self, store: &mut Store<ComponentState>) -> Result<(), RunError> {
        let command = self
            .instantiate_async(&mut *store)
            .await
            .map_err(RunError::Instantiate)?;
        match command.wasi_cli_run().call_run(&mut *store).await {
            Ok(Ok(())) => Ok(()),
            // `run` returned an error: a component's way of exiting with a non-zero status.
            Ok(Err(())) => Err(RunError::Run(wasmtime::Error::new(wasmtime_wasi::I32Exit(
                1,
            )))),
            Err(error) => Err(RunError::Run(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    /// A sleeping task holds its run's future and its store for as long as it sleeps: 10,000
    /// sleepers hold 10,000 of each. Measured with Rust 1.95: the future 1,272 bytes, in
    /// jemalloc's 1,280-byte class (1,632 with `run` and `metered` as `async fn`s holding
    /// the task's spec, 2,480 with the store's state also in it and a component's run
    /// inline), a module's state 304 (688 with wasmtime-wasi's context inline).
    #[test]
    fn a_sleeping_task_s_future_and_state_stay_small() {
        fn future_size<A, B, C, F>(_: impl FnOnce(A, B, C) -> F) -> usize {
            size_of::<F>()
        }
        let run = future_size(super::Sandbox::run);
        let state = size_of::<super::ModuleState>();
        assert!(run <= 1280, "a run's future is {run} bytes");
        assert!(state <= 384, "a module's state is {state} bytes");
    }

    /// Warming maps the default task's image into the slots it warms without calling the
    /// module (its imports are traps: a call of `_start` would fail the warming); a module
    /// whose start function calls an import cannot be instantiated so, and the pool is
    /// warmed the plain way instead. Either way a slot counts as warmed when its store calls
    /// `hold`, on a fiber stack of its own, and all wait there until all are held: the pool
    /// here has one stack a slot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn warming_takes_the_default_task_s_image_or_warms_without_it() {
        let settings = super::EngineSettings {
            instances: 8,
            max_memory_bytes: 64 << 20,
            memory_budget_bytes: 1 << 30,
            cache_dir: None,
            perf_map: false,
        };
        let sandbox = super::Sandbox::new(&settings, 1 << 16).unwrap();
        let plain = sandbox
            .compile(
                br#"(module
                  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
                  (memory 1)
                  (data (i32.const 16) "an image")
                  (func (export "_start") (call $exit (i32.const 3))))"#,
            )
            .unwrap();
        let starter = sandbox
            .compile(
                br#"(module
                  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
                  (memory 1)
                  (func $init (call $exit (i32.const 3)))
                  (start $init)
                  (func (export "_start")))"#,
            )
            .unwrap();
        let permits = |count: usize| {
            let mut left = count;
            move || {
                (left > 0).then(|| {
                    left -= 1;
                })
            }
        };
        for (module, image) in [(Some(&plain), true), (Some(&starter), false), (None, false)] {
            let warmed = sandbox
                .warm_pool(8, permits(8), Default::default(), module)
                .await
                .unwrap();
            assert_eq!(warmed, super::Warmed { slots: 8, image });
        }
        // Each warmed slot's store holds a fiber stack of its own until all are released, with
        // the image as without it: a ninth slot finds the pool's eight stacks taken (its
        // memories, two a task, are not).
        for module in [Some(&plain), None] {
            let error = sandbox
                .warm_pool(9, permits(9), Default::default(), module)
                .await
                .unwrap_err();
            assert!(format!("{error:#}").contains("fibers"), "{error:#}");
        }
    }

    #[test]
    fn a_component_s_poll_list_is_bounded() {
        // wasmtime charges a lifted list of handles at the host size of each.
        let entry = size_of::<wasmtime::component::Resource<()>>();
        assert_eq!(super::COMPONENT_MAX_CALL_BYTES / entry, 21_845);
    }

    #[test]
    fn text_errors_do_not_quote_the_file() {
        let error = wat::parse_bytes(b"root:x:0:0:root:/root:/bin/bash\n").unwrap_err();
        let message = super::text_error(&error.to_string());
        assert!(!message.contains("root:x"), "{message}");
        assert!(message.contains("line 1 column 1"), "{message}");
    }
}
