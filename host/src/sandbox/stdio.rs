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
//! The behaviour follows wasmtime-wasi's own: out-of-bounds or misaligned pointers trap,
//! the CPU-time clocks are "bad file descriptor". Two differences: any non-zero exit status
//! is an exit (wasmtime-wasi traps on 126 and above), and reads and writes take at most
//! 1024 iovecs and `poll_oneoff` 4096 subscriptions (more is `EINVAL`).

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use wasmtime::{Caller, Extern, Linker, Memory, format_err};
use wasmtime_wasi::I32Exit;

use super::output::OutputCapture;
use super::wasi_abi::fd::{STDERR, STDIN, STDOUT};
use super::wasi_abi::{
    MODULE as WASI, align, clockid, errno, event, eventtype, fdstat, filetype, iovec, rights,
    subclockflags, subscription,
};

/// Largest piece of a `random_get` filled between two checks of the slice.
const RANDOM_PIECE: usize = 64 << 10;

/// Most iovecs one read or write takes (POSIX's `IOV_MAX`); more is `EINVAL`.
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
    pub name: String,
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
    pub fn new(name: String, input: bytes::Bytes, capture: OutputCapture) -> Stdio {
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

    /// Nanoseconds on `clock`, or `None` for the CPU-time clocks and unknown ids.
    fn now(&self, clock: i32) -> Option<u64> {
        match clock as u32 {
            clockid::REALTIME => Some(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |since| since.as_nanos() as u64),
            ),
            clockid::MONOTONIC => Some(self.started.elapsed().as_nanos() as u64),
            clockid::PROCESS_CPUTIME_ID | clockid::THREAD_CPUTIME_ID => None,
            _ => None,
        }
    }

    fn is_open(&self, fd: u32) -> bool {
        fd <= STDERR && !self.closed[fd as usize]
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

/// `len` bytes at `pointer` in guest memory, or a trap.
fn bytes(memory: &[u8], pointer: i32, len: usize) -> wasmtime::Result<&[u8]> {
    let start = pointer as u32 as usize;
    start
        .checked_add(len)
        .and_then(|end| memory.get(start..end))
        .ok_or_else(|| out_of_bounds(start, len, memory.len()))
}

fn bytes_mut(memory: &mut [u8], pointer: i32, len: usize) -> wasmtime::Result<&mut [u8]> {
    let start = pointer as u32 as usize;
    let size = memory.len();
    start
        .checked_add(len)
        .and_then(|end| memory.get_mut(start..end))
        .ok_or_else(|| out_of_bounds(start, len, size))
}

fn out_of_bounds(start: usize, len: usize, size: usize) -> wasmtime::Error {
    format_err!(
        "a WASI call was given {len} bytes at {start}, outside the module's memory of {size} bytes"
    )
}

/// Checks that `pointer` is aligned for a value of `align` bytes, as WASI requires.
fn aligned(pointer: i32, align: u32) -> wasmtime::Result<()> {
    if (pointer as u32).is_multiple_of(align) {
        Ok(())
    } else {
        Err(format_err!(
            "a WASI call was given a pointer {pointer:#x} not aligned to {align} bytes"
        ))
    }
}

fn write_u32(memory: &mut [u8], pointer: i32, value: u32) -> wasmtime::Result<()> {
    aligned(pointer, align::SIZE)?;
    bytes_mut(memory, pointer, 4)?.copy_from_slice(&value.to_le_bytes());
    Ok(())
}

fn write_u64(memory: &mut [u8], pointer: i32, value: u64) -> wasmtime::Result<()> {
    aligned(pointer, align::TIMESTAMP)?;
    bytes_mut(memory, pointer, 8)?.copy_from_slice(&value.to_le_bytes());
    Ok(())
}

/// The `(pointer, length)` pairs of an iovec array of `count` entries.
fn iovecs(memory: &[u8], array: i32, count: i32) -> wasmtime::Result<Vec<(i32, usize)>> {
    aligned(array, iovec::ALIGN)?;
    let count = count as u32 as usize;
    let entries = bytes(memory, array, count.saturating_mul(iovec::SIZE))?;
    Ok(entries
        .chunks_exact(iovec::SIZE)
        .map(|entry| {
            let pointer = read_u32(entry, iovec::BUF);
            let len = read_u32(entry, iovec::BUF_LEN);
            (pointer as i32, len as usize)
        })
        .collect())
}

/// The little-endian `u16` at `at` in `record`, which the caller sized to hold it.
fn read_u16(record: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([record[at], record[at + 1]])
}

fn read_u32(record: &[u8], at: usize) -> u32 {
    let mut value = [0; 4];
    value.copy_from_slice(&record[at..at + 4]);
    u32::from_le_bytes(value)
}

fn read_u64(record: &[u8], at: usize) -> u64 {
    let mut value = [0; 8];
    value.copy_from_slice(&record[at..at + 8]);
    u64::from_le_bytes(value)
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

fn clock_res_get<T: StdioView>(
    mut caller: Caller<'_, T>,
    clock: i32,
    resolution: i32,
) -> wasmtime::Result<i32> {
    if caller.data_mut().stdio().now(clock).is_none() {
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
    let Some(now) = caller.data_mut().stdio().now(clock) else {
        return Ok(errno::BADF);
    };
    let (memory, _) = memory(&mut caller)?;
    write_u64(memory, time, now)?;
    Ok(errno::SUCCESS)
}

/// Reads stdin into the iovecs, as far as the input goes.
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
    let stdio = state.stdio();
    if fd as u32 != STDIN || !stdio.is_open(STDIN) {
        return Ok(errno::BADF);
    }
    let mut total = 0;
    for (pointer, len) in iovecs(memory, iovs, count)? {
        let rest = &stdio.input[stdio.read..];
        let n = len.min(rest.len());
        bytes_mut(memory, pointer, n)?.copy_from_slice(&rest[..n]);
        stdio.read += n;
        total += n;
        if n < len {
            break;
        }
    }
    write_u32(memory, read, total as u32)?;
    Ok(errno::SUCCESS)
}

/// Appends the iovecs to stdout or stderr. Past the output budget the task traps, and the
/// capture remembers why.
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
    let stdio = state.stdio();
    let fd = fd as u32;
    if !(fd == STDOUT || fd == STDERR) || !stdio.is_open(fd) {
        return Ok(errno::BADF);
    }
    let mut total = 0_usize;
    for (pointer, len) in iovecs(memory, iovs, count)? {
        let data = bytes(memory, pointer, len)?;
        let appended = if fd == STDOUT {
            stdio.capture.append_stdout(data)
        } else {
            stdio.capture.append_stderr(data)
        };
        appended.map_err(|()| {
            format_err!("the task wrote more output than its limit (--max-output)")
        })?;
        total += len;
    }
    write_u32(memory, written, total as u32)?;
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
    let rights = if fd == STDIN {
        rights::FD_READ
    } else {
        rights::FD_WRITE
    };
    aligned(stat, fdstat::ALIGN)?;
    let target = bytes_mut(memory, stat, fdstat::SIZE)?;
    target.fill(0);
    target[fdstat::FILETYPE] = filetype::UNKNOWN;
    target[fdstat::FLAGS..][..2].copy_from_slice(&0_u16.to_le_bytes());
    target[fdstat::RIGHTS_BASE..][..8].copy_from_slice(&rights.to_le_bytes());
    target[fdstat::RIGHTS_INHERITING..][..8].copy_from_slice(&rights.to_le_bytes());
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
    /// A standard stream, always ready: stdin has its bytes, the capture takes writes.
    Stream { kind: u8, ready: u64 },
}

/// Waits for the first of the subscriptions: clocks sleep without holding a thread; the
/// standard streams are always ready.
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
    aligned(subscriptions, subscription::ALIGN)?;
    aligned(events, event::ALIGN)?;
    let mut waits = Vec::with_capacity(count);
    {
        let (memory, state) = memory(&mut caller)?;
        let all = bytes(
            memory,
            subscriptions,
            count.saturating_mul(subscription::SIZE),
        )?;
        bytes(memory, events, count.saturating_mul(event::SIZE))?;
        let started = Instant::now();
        for entry in all.chunks_exact(subscription::SIZE) {
            let userdata = read_u64(entry, subscription::USERDATA);
            let wait = match entry[subscription::TAG] {
                eventtype::CLOCK => {
                    let clock = read_u32(entry, subscription::CLOCK_ID) as i32;
                    let timeout = read_u64(entry, subscription::CLOCK_TIMEOUT);
                    let flags = read_u16(entry, subscription::CLOCK_FLAGS);
                    let Some(now) = state.stdio().now(clock) else {
                        return Ok(errno::INVAL);
                    };
                    let after = if flags & subclockflags::ABSTIME != 0 {
                        timeout.saturating_sub(now)
                    } else {
                        timeout
                    };
                    let after = Duration::from_nanos(after).min(LONGEST_WAIT);
                    Wait::Clock(started + after)
                }
                kind @ (eventtype::FD_READ | eventtype::FD_WRITE) => {
                    let fd = read_u32(entry, subscription::FD);
                    let readable = kind == eventtype::FD_READ && fd == STDIN;
                    let writable = kind == eventtype::FD_WRITE && (fd == STDOUT || fd == STDERR);
                    if !(readable || writable) || !state.stdio().is_open(fd) {
                        return Ok(errno::BADF);
                    }
                    let ready = if readable {
                        (state.stdio().input.len() - state.stdio().read) as u64
                    } else {
                        u64::from(u32::MAX)
                    };
                    Wait::Stream { kind, ready }
                }
                _ => return Ok(errno::INVAL),
            };
            waits.push((userdata, wait));
        }
    }
    let streams_ready = waits
        .iter()
        .any(|(_, wait)| matches!(wait, Wait::Stream { .. }));
    if !streams_ready {
        let first = waits
            .iter()
            .filter_map(|(_, wait)| match wait {
                Wait::Clock(at) => Some(*at),
                Wait::Stream { .. } => None,
            })
            .min()
            .expect("every subscription is a clock");
        tokio::time::sleep_until(first.into()).await;
        caller.data_mut().restart_slice();
    }
    let now = Instant::now();
    let (memory, _) = memory(&mut caller)?;
    let mut fired = 0;
    for (userdata, wait) in waits {
        let (kind, ready) = match wait {
            Wait::Clock(at) if at <= now => (eventtype::CLOCK, 0),
            Wait::Clock(_) => continue,
            Wait::Stream { kind, ready } => (kind, ready),
        };
        let target = bytes_mut(
            memory,
            events.wrapping_add((fired * event::SIZE) as i32),
            event::SIZE,
        )?;
        target.fill(0);
        target[event::USERDATA..][..8].copy_from_slice(&userdata.to_le_bytes());
        target[event::ERROR..][..2].copy_from_slice(&(errno::SUCCESS as u16).to_le_bytes());
        target[event::TYPE] = kind;
        target[event::NBYTES..][..8].copy_from_slice(&ready.to_le_bytes());
        target[event::RW_FLAGS..][..2].copy_from_slice(&0_u16.to_le_bytes());
        fired += 1;
    }
    write_u32(memory, written, fired as u32)?;
    Ok(errno::SUCCESS)
}
