//! The WASI preview 1 calls every task makes, answered straight from the task's store: its
//! arguments and (empty) environment, stdin from the input bytes, stdout and stderr into the
//! bounded capture, the clocks, sleeping in `poll_oneoff`, randomness and `proc_exit`.
//!
//! Why: wasmtime-wasi's preview 1 runs on its preview 2 implementation, so every task would
//! first build a full WASI context (a resource table, boxed streams, a seeded random number
//! generator) and then go through the preview 2 stream types for each read and write. That
//! was about a third of the sandbox's cost on a small task (docs/PERFORMANCE.md). Here a
//! task's standard streams are a byte slice, a position and the capture.
//!
//! Every other preview 1 function stays wasmtime-wasi's, on a context the store builds the
//! first time a task calls one: with no files, sockets or environment, they
//! mostly answer "bad file descriptor", exactly as before. That context gets the same
//! streams (stdin from where the task's reads have got to), so `fd_seek` or `fd_filestat_get`
//! on them answer as they did; a task that closes or renumbers a standard stream and then
//! uses it through both sets of functions may find them disagree.
//!
//! A host call runs on the task's own fiber and burns no fuel of its own, so fuel alone cannot
//! stop a guest that loops over expensive calls (64 MiB of randomness at a time, say) from
//! holding its thread: the timeout and cancel, which need the task to yield, would never
//! come. So the calls that do work in proportion to their arguments yield to the scheduler
//! once the task's host slice is up ([`StdioView::slice_is_up`]), and big buffers are filled
//! in pieces with a check between them.
//!
//! The behaviour is wasmtime-wasi's own, call for call and errno for errno, and
//! `differential_tests.rs` holds it there: out-of-bounds or misaligned pointers trap (and
//! only those the call gets to), a clock id preview 1 does not have traps, the CPU-time
//! clocks are "bad file descriptor", a read or write moves the first non-empty iovec only,
//! and `poll_oneoff` answers a ready stream at once, without the clocks. The differences,
//! each on purpose and each stated by a test:
//!
//! - any non-zero exit status is an exit (wasmtime-wasi traps on 126 and above);
//! - reads and writes take at most 1024 iovecs and `poll_oneoff` 4096 subscriptions (more
//!   is `EINVAL`), bounding the host's work on one call;
//! - a zero-length read of stdin is 0 bytes, as in POSIX, where wasmtime-wasi says `EINTR`
//!   while input is left (a guest that retries `EINTR` would spin);
//! - `random_get` fills any buffer, in pieces, where wasmtime-wasi traps past 64 MiB;
//! - `clock_res_get` says a nanosecond, where wasmtime-wasi asks the system (which says a
//!   nanosecond on Linux).

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use wasmtime::{Caller, Extern, Linker, Memory, format_err};
use wasmtime_wasi::I32Exit;

use super::guest_memory::{
    bytes, bytes_mut, element, put, read_u16, read_u32, read_u64, record, record_mut, write_u32,
    write_u64,
};
use super::output::OutputCapture;
use super::wasi_abi::fd::{STDERR, STDIN, STDOUT};
use super::wasi_abi::{
    MODULE as WASI, clockid, errno, event, eventtype, fdstat, filetype, iovec, rights,
    subclockflags, subscription,
};

/// Largest piece of a `random_get` filled between two checks of the slice.
const RANDOM_PIECE: usize = 64 << 10;

/// Most iovecs one read or write takes (POSIX's `IOV_MAX`); more is `EINVAL`. It bounds
/// the host's walk through empty ones to the first that is not.
const MAX_IOVECS: usize = 1024;

/// Most subscriptions one `poll_oneoff` takes; more is `EINVAL`. Each costs host memory.
const MAX_SUBSCRIPTIONS: usize = 4096;

/// What this module needs of a task's store: its [`Stdio`], and a say in when the task
/// yields. The store's type implements it (`state.rs`), so this module never names it; the
/// calls are generic over it, so each is still a direct call on the concrete store.
pub trait StdioView: Send + 'static {
    fn stdio(&mut self) -> &mut Stdio;

    /// Whether the task has run host calls for its whole slice without yielding.
    fn slice_is_up(&self) -> bool;

    /// The task just yielded (or slept): a new slice starts.
    fn restart_slice(&mut self);
}

/// A task's standard streams, as this module serves them.
#[derive(Debug)]
pub struct Stdio {
    /// argv\[0\], the task's name; there are no other arguments.
    pub name: std::sync::Arc<str>,
    pub input: bytes::Bytes,
    /// How much of `input` the task has read.
    pub read: usize,
    pub capture: OutputCapture,
    /// Standard streams the task closed.
    pub closed: [bool; 3],
    /// The task's exported memory, once a call has looked it up.
    memory: Option<Memory>,
    /// Where the task's monotonic clock counts from: its start, as wasmtime-wasi's counts
    /// from the making of each task's context, so a task cannot learn from it how long the
    /// server has run or what ran before it.
    started: Instant,
}

impl Stdio {
    pub fn new(name: std::sync::Arc<str>, input: bytes::Bytes, capture: OutputCapture) -> Stdio {
        Stdio {
            name,
            input,
            read: 0,
            capture,
            closed: [false; 3],
            memory: None,
            started: Instant::now(),
        }
    }

    /// Nanoseconds on `clock`, or `None` for the CPU-time clocks, which tasks do not get.
    fn now(&self, clock: Clock) -> Option<u64> {
        match clock {
            Clock::Realtime => Some(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |since| since.as_nanos() as u64),
            ),
            Clock::Monotonic => Some(self.started.elapsed().as_nanos() as u64),
            Clock::CpuTime => None,
        }
    }

    fn is_open(&self, fd: u32) -> bool {
        fd <= STDERR && !self.closed[fd as usize]
    }
}

/// A clock of preview 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    Realtime,
    Monotonic,
    /// The process's or the thread's CPU time.
    CpuTime,
}

impl Clock {
    /// The clock of a `$clockid`, or `None` for an id preview 1 does not have.
    fn from_id(id: u32) -> Option<Clock> {
        match id {
            clockid::REALTIME => Some(Clock::Realtime),
            clockid::MONOTONIC => Some(Clock::Monotonic),
            clockid::PROCESS_CPUTIME_ID | clockid::THREAD_CPUTIME_ID => Some(Clock::CpuTime),
            _ => None,
        }
    }

    /// The clock a call was given as its argument. An id preview 1 does not have is a
    /// trap, as in wasmtime-wasi, whose bindings refuse it before the call (inside a
    /// `poll_oneoff` subscription it is `EINVAL` in both).
    fn argument(call: &str, id: i32) -> wasmtime::Result<Clock> {
        Clock::from_id(id as u32).ok_or_else(|| {
            format_err!("{call} was given clock id {id}, which WASI preview 1 does not have")
        })
    }
}

/// Defines this module's functions in `linker`, over wasmtime-wasi's of the same names.
pub fn shadow_wasi<T: StdioView>(linker: &mut Linker<T>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    define(linker)
        .map_err(anyhow::Error::from)
        .context("could not link the sandbox's own WASI preview 1 calls")?;
    linker.allow_shadowing(false);
    Ok(())
}

fn define<T: StdioView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.func_wrap(WASI, "args_sizes_get", args_sizes_get::<T>)?;
    linker.func_wrap(WASI, "args_get", args_get::<T>)?;
    linker.func_wrap(WASI, "environ_sizes_get", environ_sizes_get::<T>)?;
    linker.func_wrap(WASI, "environ_get", |_: Caller<'_, T>, _: i32, _: i32| {
        Ok(errno::SUCCESS)
    })?;
    linker.func_wrap(WASI, "clock_res_get", clock_res_get::<T>)?;
    linker.func_wrap(WASI, "clock_time_get", clock_time_get::<T>)?;
    linker.func_wrap_async(
        WASI,
        "fd_read",
        |caller: Caller<'_, T>, (fd, iovs, count, read)| {
            Box::new(fd_read(caller, fd, iovs, count, read))
        },
    )?;
    linker.func_wrap_async(
        WASI,
        "fd_write",
        |caller: Caller<'_, T>, (fd, iovs, count, written)| {
            Box::new(fd_write(caller, fd, iovs, count, written))
        },
    )?;
    linker.func_wrap(WASI, "fd_fdstat_get", fd_fdstat_get::<T>)?;
    linker.func_wrap(WASI, "fd_close", fd_close::<T>)?;
    linker.func_wrap_async(
        WASI,
        "random_get",
        |caller: Caller<'_, T>, (buffer, len)| Box::new(random_get(caller, buffer, len)),
    )?;
    linker.func_wrap_async(WASI, "sched_yield", |mut caller: Caller<'_, T>, ()| {
        Box::new(async move {
            pause_if_due(&mut caller).await;
            Ok(errno::SUCCESS)
        })
    })?;
    linker.func_wrap(WASI, "proc_exit", proc_exit::<T>)?;
    linker.func_wrap_async(
        WASI,
        "poll_oneoff",
        |caller: Caller<'_, T>, (subscriptions, events, count, written): (i32, i32, i32, i32)| {
            Box::new(poll_oneoff(caller, subscriptions, events, count, written))
        },
    )?;
    Ok(())
}

/// Yields to the scheduler if the task's host slice is up.
pub async fn pause_if_due<T: StdioView>(caller: &mut Caller<'_, T>) {
    if caller.data().slice_is_up() {
        tokio::task::yield_now().await;
        caller.data_mut().restart_slice();
    }
}

/// The task's exported memory: WASI hands pointers into it.
fn memory<'a, T: StdioView>(
    caller: &'a mut Caller<'_, T>,
) -> wasmtime::Result<(&'a mut [u8], &'a mut T)> {
    let memory = match caller.data_mut().stdio().memory {
        Some(memory) => memory,
        None => {
            let memory = caller
                .get_export("memory")
                .and_then(Extern::into_memory)
                .ok_or_else(|| format_err!("WASI calls need the module to export its `memory`"))?;
            // A task has one instance, so its first lookup holds for all its calls.
            caller.data_mut().stdio().memory = Some(memory);
            memory
        }
    };
    Ok(memory.data_and_store_mut(caller))
}

/// The first buffer of an iovec array with a non-zero length, as `(pointer, length)`, or
/// `(0, 0)` when all are empty. A read or write moves at most this one buffer, as
/// wasmtime-wasi's do (a short count, which callers of `readv` and `writev` expect), and
/// the entries after it are not looked at.
fn first_non_empty(memory: &[u8], array: i32, count: i32) -> wasmtime::Result<(i32, usize)> {
    for index in 0..count as u32 as usize {
        let at = element(array, index, iovec::SIZE)?;
        let entry = record(memory, at, iovec::SIZE, iovec::ALIGN)?;
        let len = read_u32(entry, iovec::BUF_LEN) as usize;
        if len > 0 {
            return Ok((read_u32(entry, iovec::BUF) as i32, len));
        }
    }
    Ok((0, 0))
}

fn args_sizes_get<T: StdioView>(
    mut caller: Caller<'_, T>,
    count: i32,
    size: i32,
) -> wasmtime::Result<i32> {
    let (memory, state) = memory(&mut caller)?;
    write_u32(memory, count, 1)?;
    write_u32(memory, size, state.stdio().name.len() as u32 + 1)?;
    Ok(errno::SUCCESS)
}

fn args_get<T: StdioView>(
    mut caller: Caller<'_, T>,
    argv: i32,
    buffer: i32,
) -> wasmtime::Result<i32> {
    let (memory, state) = memory(&mut caller)?;
    write_u32(memory, argv, buffer as u32)?;
    let name = state.stdio().name.as_bytes();
    let target = bytes_mut(memory, buffer, name.len() + 1)?;
    target[..name.len()].copy_from_slice(name);
    target[name.len()] = 0;
    Ok(errno::SUCCESS)
}

fn environ_sizes_get<T: StdioView>(
    mut caller: Caller<'_, T>,
    count: i32,
    size: i32,
) -> wasmtime::Result<i32> {
    let (memory, _) = memory(&mut caller)?;
    write_u32(memory, count, 0)?;
    write_u32(memory, size, 0)?;
    Ok(errno::SUCCESS)
}

/// The resolution of the realtime and monotonic clocks: a nanosecond, which is what
/// wasmtime-wasi reports on Linux (it asks `clock_getres`).
fn clock_res_get<T: StdioView>(
    mut caller: Caller<'_, T>,
    clock: i32,
    resolution: i32,
) -> wasmtime::Result<i32> {
    if Clock::argument("clock_res_get", clock)? == Clock::CpuTime {
        return Ok(errno::BADF);
    }
    let (memory, _) = memory(&mut caller)?;
    write_u64(memory, resolution, 1)?;
    Ok(errno::SUCCESS)
}

fn clock_time_get<T: StdioView>(
    mut caller: Caller<'_, T>,
    clock: i32,
    _precision: i64,
    time: i32,
) -> wasmtime::Result<i32> {
    let clock = Clock::argument("clock_time_get", clock)?;
    let Some(now) = caller.data_mut().stdio().now(clock) else {
        return Ok(errno::BADF);
    };
    let (memory, _) = memory(&mut caller)?;
    write_u64(memory, time, now)?;
    Ok(errno::SUCCESS)
}

/// Reads stdin into the first non-empty iovec, as far as the input goes.
async fn fd_read<T: StdioView>(
    mut caller: Caller<'_, T>,
    fd: i32,
    iovs: i32,
    count: i32,
    read: i32,
) -> wasmtime::Result<i32> {
    pause_if_due(&mut caller).await;
    if count as u32 as usize > MAX_IOVECS {
        return Ok(errno::INVAL);
    }
    let (memory, state) = memory(&mut caller)?;
    let (pointer, len) = first_non_empty(memory, iovs, count)?;
    let stdio = state.stdio();
    if fd as u32 != STDIN || !stdio.is_open(STDIN) {
        return Ok(errno::BADF);
    }
    let rest = &stdio.input[stdio.read..];
    let n = len.min(rest.len());
    bytes_mut(memory, pointer, n)?.copy_from_slice(&rest[..n]);
    stdio.read += n;
    write_u32(memory, read, n as u32)?;
    Ok(errno::SUCCESS)
}

/// Appends the first non-empty iovec to stdout or stderr. Past the output budget the task
/// traps, and the capture remembers why.
async fn fd_write<T: StdioView>(
    mut caller: Caller<'_, T>,
    fd: i32,
    iovs: i32,
    count: i32,
    written: i32,
) -> wasmtime::Result<i32> {
    pause_if_due(&mut caller).await;
    if count as u32 as usize > MAX_IOVECS {
        return Ok(errno::INVAL);
    }
    let (memory, state) = memory(&mut caller)?;
    let (pointer, len) = first_non_empty(memory, iovs, count)?;
    let stdio = state.stdio();
    let fd = fd as u32;
    if !(fd == STDOUT || fd == STDERR) || !stdio.is_open(fd) {
        return Ok(errno::BADF);
    }
    let data = bytes(memory, pointer, len)?;
    let appended = if fd == STDOUT {
        stdio.capture.append_stdout(data)
    } else {
        stdio.capture.append_stderr(data)
    };
    appended
        .map_err(|()| format_err!("the task wrote more output than its limit (--max-output)"))?;
    write_u32(memory, written, len as u32)?;
    Ok(errno::SUCCESS)
}

/// The standard streams' `fdstat`: not terminals (filetype unknown), no flags, read or
/// write rights. There are no other descriptors.
fn fd_fdstat_get<T: StdioView>(
    mut caller: Caller<'_, T>,
    fd: i32,
    stat: i32,
) -> wasmtime::Result<i32> {
    let (memory, state) = memory(&mut caller)?;
    let fd = fd as u32;
    if !state.stdio().is_open(fd) {
        return Ok(errno::BADF);
    }
    let granted = if fd == STDIN {
        rights::FD_READ
    } else {
        rights::FD_WRITE
    };
    let target = record_mut(memory, stat, fdstat::SIZE, fdstat::ALIGN)?;
    target[fdstat::FILETYPE] = filetype::UNKNOWN;
    put(target, fdstat::FLAGS, &0_u16.to_le_bytes());
    put(target, fdstat::RIGHTS_BASE, &granted.to_le_bytes());
    put(target, fdstat::RIGHTS_INHERITING, &granted.to_le_bytes());
    Ok(errno::SUCCESS)
}

fn fd_close<T: StdioView>(mut caller: Caller<'_, T>, fd: i32) -> wasmtime::Result<i32> {
    let stdio = caller.data_mut().stdio();
    let fd = fd as u32;
    if !stdio.is_open(fd) {
        return Ok(errno::BADF);
    }
    stdio.closed[fd as usize] = true;
    Ok(errno::SUCCESS)
}

/// Fills the buffer from the operating system's randomness, in pieces, pausing between
/// them when the task's slice is up.
async fn random_get<T: StdioView>(
    mut caller: Caller<'_, T>,
    buffer: i32,
    len: i32,
) -> wasmtime::Result<i32> {
    let len = len as u32 as usize;
    bytes(memory(&mut caller)?.0, buffer, len)?;
    let mut filled = 0;
    loop {
        pause_if_due(&mut caller).await;
        let piece = (len - filled).min(RANDOM_PIECE);
        let (memory, _) = memory(&mut caller)?;
        let target = bytes_mut(memory, buffer.wrapping_add(filled as i32), piece)?;
        getrandom::fill(target)
            .map_err(|error| format_err!("no randomness for the task: {error}"))?;
        filled += piece;
        if filled == len {
            return Ok(errno::SUCCESS);
        }
    }
}

/// Ends the task with `status`; any status but 0 is an `exit` failure (WASI reserves 126
/// and above, but a task that uses them still meant to fail, not to trap).
fn proc_exit<T: StdioView>(_: Caller<'_, T>, status: i32) -> wasmtime::Result<()> {
    Err(I32Exit(status).into())
}

/// Longest single wait: tokio's timer wheel reaches about two years; the task's wall-clock
/// limit ends it long before.
const LONGEST_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// One subscription, decoded.
enum Wait {
    /// Ready at this instant.
    Clock(Instant),
    /// A standard stream, always ready (stdin has its bytes or its end, the capture takes
    /// writes), with the event type it was subscribed for.
    Stream(u8),
}

/// Waits for the first of the subscriptions: clocks sleep without holding a thread; the
/// standard streams are always ready.
///
/// As in wasmtime-wasi: the subscriptions are read one at a time and the first bad one
/// answers (a trap for a bad pointer, `EINVAL` or `EBADF` for its contents); with a stream
/// among them the call returns at once with the streams alone (wasmtime-wasi has even a
/// clock already due yield once before it counts, and the streams are ready first);
/// otherwise it sleeps until the first clock and reports every clock due by then; events
/// are written only for those that fired, and a stream's says 1 byte (ready, uncounted).
async fn poll_oneoff<T: StdioView>(
    mut caller: Caller<'_, T>,
    subscriptions: i32,
    events: i32,
    count: i32,
    written: i32,
) -> wasmtime::Result<i32> {
    let count = count as u32 as usize;
    if count == 0 || count > MAX_SUBSCRIPTIONS {
        return Ok(errno::INVAL);
    }
    pause_if_due(&mut caller).await;
    let mut waits = Vec::with_capacity(count);
    {
        let (memory, state) = memory(&mut caller)?;
        let stdio = state.stdio();
        let started = Instant::now();
        for index in 0..count {
            let at = element(subscriptions, index, subscription::SIZE)?;
            let entry = record(memory, at, subscription::SIZE, subscription::ALIGN)?;
            let wait = match decode(entry, stdio, started) {
                Ok(wait) => wait,
                Err(errno) => return Ok(errno),
            };
            waits.push((read_u64(entry, subscription::USERDATA), wait));
        }
    }
    let first_clock = waits
        .iter()
        .filter_map(|(_, wait)| match wait {
            Wait::Clock(at) => Some(*at),
            Wait::Stream(_) => None,
        })
        .min();
    let stream_ready = waits
        .iter()
        .any(|(_, wait)| matches!(wait, Wait::Stream(_)));
    if let (false, Some(first)) = (stream_ready, first_clock) {
        tokio::time::sleep_until(first.into()).await;
        caller.data_mut().restart_slice();
    }
    let now = Instant::now();
    let (memory, _) = memory(&mut caller)?;
    let mut fired = 0;
    for (userdata, wait) in waits {
        let (kind, nbytes) = match wait {
            Wait::Stream(kind) => (kind, 1_u64),
            Wait::Clock(at) if !stream_ready && at <= now => (eventtype::CLOCK, 0),
            Wait::Clock(_) => continue,
        };
        let at = element(events, fired, event::SIZE)?;
        let target = record_mut(memory, at, event::SIZE, event::ALIGN)?;
        put(target, event::USERDATA, &userdata.to_le_bytes());
        put(target, event::ERROR, &(errno::SUCCESS as u16).to_le_bytes());
        target[event::TYPE] = kind;
        put(target, event::NBYTES, &nbytes.to_le_bytes());
        put(target, event::RW_FLAGS, &0_u16.to_le_bytes());
        fired += 1;
    }
    write_u32(memory, written, fired as u32)?;
    Ok(errno::SUCCESS)
}

/// What one subscription waits for, or the errno it gets: `EINVAL` for a clock or flag
/// preview 1 does not have, the CPU-time clocks and unknown event types, `EBADF` for a
/// stream that is not open for it. Relative clocks count from `started`.
fn decode(entry: &[u8], stdio: &Stdio, started: Instant) -> Result<Wait, i32> {
    match entry[subscription::TAG] {
        eventtype::CLOCK => {
            let clock = match Clock::from_id(read_u32(entry, subscription::CLOCK_ID)) {
                Some(clock @ (Clock::Realtime | Clock::Monotonic)) => clock,
                Some(Clock::CpuTime) | None => return Err(errno::INVAL),
            };
            let timeout = read_u64(entry, subscription::CLOCK_TIMEOUT);
            let flags = read_u16(entry, subscription::CLOCK_FLAGS);
            let after = match flags {
                0 => timeout,
                subclockflags::ABSTIME => match stdio.now(clock) {
                    Some(now) => timeout.saturating_sub(now),
                    None => return Err(errno::INVAL),
                },
                _ => return Err(errno::INVAL),
            };
            Ok(Wait::Clock(
                started + Duration::from_nanos(after).min(LONGEST_WAIT),
            ))
        }
        kind @ (eventtype::FD_READ | eventtype::FD_WRITE) => {
            let fd = read_u32(entry, subscription::FD);
            let readable = kind == eventtype::FD_READ && fd == STDIN;
            let writable = kind == eventtype::FD_WRITE && (fd == STDOUT || fd == STDERR);
            if (readable || writable) && stdio.is_open(fd) {
                Ok(Wait::Stream(kind))
            } else {
                Err(errno::BADF)
            }
        }
        _ => Err(errno::INVAL),
    }
}
