//! What a task's store holds: its WASI context (preview 1 for modules, preview 2 for
//! components) and the controls the host keeps on it, the memory cap and the progress sink.

use std::fmt;
use std::sync::Arc;

use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{CallHook, CallHookHandler, Store, StoreContextMut};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::limiter::MemoryCap;
use super::stdio::{Stdio, StdioView};
use super::wasi_http::TaskHttp;
use crate::capabilities::TaskAccess;

/// Where a task's progress reports go: the host's `progress` import calls it with a fraction
/// in 0.0..=1.0 and a short message. Whoever supplies it decides about rate limits.
#[derive(Clone)]
pub struct ProgressSink(Arc<ReportFn>);

/// The function behind a [`ProgressSink`].
type ReportFn = dyn Fn(f64, &str) + Send + Sync;

impl ProgressSink {
    pub fn new(report: impl Fn(f64, &str) + Send + Sync + 'static) -> Self {
        ProgressSink(Arc::new(report))
    }

    pub fn report(&self, fraction: f64, message: &str) {
        (self.0)(fraction, message);
    }
}

impl fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProgressSink")
    }
}

/// The host's hold on a running task, the same for modules and components.
#[derive(Debug)]
pub struct Controls {
    pub memory: MemoryCap,
    pub progress: Option<ProgressSink>,
    pub slice: HostSlice,
    /// The task's door to the capabilities its manifest grants (`None`: no calls at all).
    pub capabilities: Option<TaskAccess>,
}

/// How long a task may run host calls without yielding to the scheduler.
pub const HOST_SLICE: Duration = Duration::from_millis(1);

/// The time a task has run host calls since it last yielded to the scheduler. Host calls
/// burn no fuel, so fuel's yields cannot bound it: the host calls that do work check this
/// and yield once it is [`HOST_SLICE`], so that the task's timeout, a cancel and other
/// tasks get their turn.
#[derive(Debug)]
pub struct HostSlice {
    started: Instant,
}

impl HostSlice {
    pub fn new() -> HostSlice {
        HostSlice {
            started: Instant::now(),
        }
    }

    /// Whether the task should yield now.
    pub fn is_up(&self) -> bool {
        self.started.elapsed() >= HOST_SLICE
    }

    /// The task just yielded (or slept): a new slice starts.
    pub fn restart(&mut self) {
        self.started = Instant::now();
    }
}

impl Default for HostSlice {
    fn default() -> Self {
        HostSlice::new()
    }
}

impl Controls {
    /// Forwards a progress report from the guest, tidied: the fraction clamped into 0..=1
    /// (NaN is 0) and the message cut to [`MAX_PROGRESS_MESSAGE`] characters.
    pub fn report_progress(&self, fraction: f64, message: &str) {
        let Some(progress) = &self.progress else {
            return;
        };
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        match message.char_indices().nth(MAX_PROGRESS_MESSAGE) {
            Some((cut, _)) => progress.report(fraction, &message[..cut]),
            None => progress.report(fraction, message),
        }
    }
}

/// Longest progress message passed on, in characters: a status line, not a channel for data.
pub const MAX_PROGRESS_MESSAGE: usize = 200;

/// Access to the controls, whichever kind of store they are in.
pub trait Controlled: Send + Sized + 'static {
    fn controls(&mut self) -> &mut Controls;

    /// Sets up a new store of this kind before the task starts.
    fn prepare(_store: &mut Store<Self>) {}

    /// The store, its run over, to be dropped when its holder chooses.
    fn spent(store: Store<Self>) -> super::Spent;
}

/// A preview 1 module's store.
pub struct ModuleState {
    /// The standard streams and arguments, served by [`super::stdio`].
    pub stdio: Stdio,
    /// wasmtime-wasi's context for the preview 1 calls `stdio` does not answer, built the
    /// first time the task makes one: most tasks never do. Boxed, so that the tasks that do
    /// not carry none of its 384 bytes (10,000 sleepers: 3.7 MiB).
    wasi: Option<Box<WasiP1Ctx>>,
    pub controls: Controls,
    /// A `taskhost.call` response that did not fit the guest's buffer, with its status,
    /// until the guest fetches it (`sandbox/capability_calls.rs`).
    pub pending_response: Option<(i32, Vec<u8>)>,
}

impl ModuleState {
    pub fn new(stdio: Stdio, controls: Controls) -> ModuleState {
        ModuleState {
            stdio,
            wasi: None,
            controls,
            pending_response: None,
        }
    }

    /// wasmtime-wasi's context, with the same streams: stdin from where the task's reads
    /// have got to, stdout and stderr into the same capture.
    pub fn wasi(&mut self) -> &mut WasiP1Ctx {
        let stdio = &self.stdio;
        self.wasi.get_or_insert_with(|| {
            Box::new(
                WasiCtxBuilder::new()
                    .stdin(MemoryInputPipe::new(stdio.input.slice(stdio.read..)))
                    .stdout(stdio.capture.stdout_pipe())
                    .stderr(stdio.capture.stderr_pipe())
                    .arg(&stdio.name)
                    .build_p1(),
            )
        })
    }
}

/// A preview 2 component's store.
pub struct ComponentState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub controls: Controls,
    /// `wasi:http`'s settings (the size of a header set).
    pub http: WasiHttpCtx,
    /// Where `wasi:http` sends requests: through the task's `http` grant.
    pub http_hooks: TaskHttp,
}

impl Controlled for ModuleState {
    fn controls(&mut self) -> &mut Controls {
        &mut self.controls
    }

    fn spent(store: Store<Self>) -> super::Spent {
        super::Spent(super::SpentStore::Module(store))
    }
}

impl StdioView for ModuleState {
    fn stdio(&mut self) -> &mut Stdio {
        &mut self.stdio
    }

    fn slice_is_up(&self) -> bool {
        self.controls.slice.is_up()
    }

    fn restart_slice(&mut self) {
        self.controls.slice.restart();
    }
}

impl Controlled for ComponentState {
    fn controls(&mut self) -> &mut Controls {
        &mut self.controls
    }

    fn spent(store: Store<Self>) -> super::Spent {
        super::Spent(super::SpentStore::Component(store))
    }

    /// A component's host calls are wasmtime-wasi's preview 2, which burn no fuel: every
    /// return from one yields to the scheduler once the task has run [`HOST_SLICE`]
    /// without yielding, as the preview 1 calls of [`super::stdio`] do. And each may carry
    /// at most [`super::COMPONENT_MAX_CALL_BYTES`] from the guest.
    fn prepare(store: &mut Store<Self>) {
        store.call_hook_async(YieldAfterSlice);
        store.set_hostcall_fuel(super::COMPONENT_MAX_CALL_BYTES);
    }
}

/// The call hook of [`ComponentState::prepare`].
struct YieldAfterSlice;

#[wasmtime_wasi::async_trait]
impl CallHookHandler<ComponentState> for YieldAfterSlice {
    async fn handle_call_event(
        &self,
        mut store: StoreContextMut<'_, ComponentState>,
        hook: CallHook,
    ) -> wasmtime::Result<()> {
        if matches!(hook, CallHook::ReturningFromHost) && store.data().controls.slice.is_up() {
            tokio::task::yield_now().await;
            store.data_mut().controls.slice.restart();
        }
        Ok(())
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
