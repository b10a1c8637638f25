//! The WASI preview 1 ABI as data: the values and memory layouts of
//! `wasi_snapshot_preview1.witx` (WebAssembly/WASI, `legacy/preview1/witx/typenames.witx`)
//! that [`super::stdio`] reads from and writes into a task's memory.
//!
//! Only what those calls use is here. Offsets and sizes are in bytes, for wasm32 (pointers
//! and `size` are 4 bytes), and every value is little-endian. A record's fields are laid
//! out in order, each at its own alignment, and a union's payload follows its tag at the
//! payload's alignment; the padding in between belongs to nobody, so it is never written.

/// The import module of every preview 1 function.
pub const MODULE: &str = "wasi_snapshot_preview1";

/// `$errno` (an `u16` in records, an `i32` as a function's result): the values returned.
pub mod errno {
    /// `success`: no error occurred.
    pub const SUCCESS: i32 = 0;
    /// `badf`: bad file descriptor.
    pub const BADF: i32 = 8;
    /// `inval`: invalid argument.
    pub const INVAL: i32 = 28;
}

/// `$clockid` (`u32`): the clocks.
pub mod clockid {
    /// `realtime`: wall-clock time, nanoseconds since the Unix epoch.
    pub const REALTIME: u32 = 0;
    /// `monotonic`: nanoseconds since an arbitrary start, never going back.
    pub const MONOTONIC: u32 = 1;
    /// `process_cputime_id`: the CPU time of the process.
    pub const PROCESS_CPUTIME_ID: u32 = 2;
    /// `thread_cputime_id`: the CPU time of the thread.
    pub const THREAD_CPUTIME_ID: u32 = 3;
}

/// The standard streams' descriptors (`$fd`, an `u32`): preview 1 has no constants for them,
/// but its programs and libcs take 0, 1 and 2 to be stdin, stdout and stderr, as in POSIX.
pub mod fd {
    pub const STDIN: u32 = 0;
    pub const STDOUT: u32 = 1;
    pub const STDERR: u32 = 2;
}

/// The alignment of the scalar results the calls write through a pointer.
pub mod align {
    /// `$size` (`u32`): counts and lengths.
    pub const SIZE: u32 = 4;
    /// `$timestamp` (`u64`): nanoseconds.
    pub const TIMESTAMP: u32 = 8;
}

/// `$iovec` and `$ciovec`: one buffer of a scatter read or gather write. Both have the same
/// layout (the one points at writable bytes, the other at readable ones).
pub mod iovec {
    pub const SIZE: usize = 8;
    pub const ALIGN: u32 = 4;
    /// `buf`: the buffer's address (`u32`).
    pub const BUF: usize = 0;
    /// `buf_len`: its length in bytes (`$size`).
    pub const BUF_LEN: usize = 4;
}

/// `$rights` (`u64` flags): what may be done with a descriptor.
pub mod rights {
    /// `fd_read`: `fd_read` and `sock_recv` (bit 1).
    pub const FD_READ: u64 = 1 << 1;
    /// `fd_write`: `fd_write` and `sock_send` (bit 6).
    pub const FD_WRITE: u64 = 1 << 6;
}

/// `$filetype` (`u8`).
pub mod filetype {
    /// `unknown`: neither a file, a directory nor a terminal, such as a pipe.
    pub const UNKNOWN: u8 = 0;
}

/// `$fdstat`: what `fd_fdstat_get` says about a descriptor.
pub mod fdstat {
    pub const SIZE: usize = 24;
    pub const ALIGN: u32 = 8;
    /// `fs_filetype` (`$filetype`, `u8`).
    pub const FILETYPE: usize = 0;
    /// `fs_flags` (`$fdflags`, `u16`).
    pub const FLAGS: usize = 2;
    /// `fs_rights_base` (`$rights`, `u64`).
    pub const RIGHTS_BASE: usize = 8;
    /// `fs_rights_inheriting` (`$rights`, `u64`).
    pub const RIGHTS_INHERITING: usize = 16;
}

/// `$eventtype` (`u8`): a subscription's tag and an event's type.
pub mod eventtype {
    /// `clock`: a clock reached a time.
    pub const CLOCK: u8 = 0;
    /// `fd_read`: a descriptor has bytes to read.
    pub const FD_READ: u8 = 1;
    /// `fd_write`: a descriptor takes bytes to write.
    pub const FD_WRITE: u8 = 2;
}

/// `$subscription`: one thing `poll_oneoff` waits for, a `$userdata` and a
/// `$subscription_u` union tagged with an [`eventtype`](super::eventtype).
pub mod subscription {
    pub const SIZE: usize = 48;
    pub const ALIGN: u32 = 8;
    /// `userdata` (`u64`), copied into the event.
    pub const USERDATA: usize = 0;
    /// The union's tag (`$eventtype`, `u8`).
    pub const TAG: usize = 8;
    /// `$subscription_clock.id` (`$clockid`, `u32`).
    pub const CLOCK_ID: usize = 16;
    /// `$subscription_clock.timeout` (`$timestamp`, `u64`).
    pub const CLOCK_TIMEOUT: usize = 24;
    /// `$subscription_clock.flags` (`$subclockflags`, `u16`), after `precision` (a
    /// `$timestamp` at 32, a hint the sandbox has no use for).
    pub const CLOCK_FLAGS: usize = 40;
    /// `$subscription_fd_readwrite.file_descriptor` (`$fd`, `u32`).
    pub const FD: usize = 16;
}

/// `$subclockflags` (`u16` flags).
pub mod subclockflags {
    /// `subscription_clock_abstime`: the timeout is a time on the clock, not a duration.
    pub const ABSTIME: u16 = 1;
}

/// `$event`: one subscription that `poll_oneoff` found ready.
pub mod event {
    pub const SIZE: usize = 32;
    pub const ALIGN: u32 = 8;
    /// `userdata` (`u64`), the subscription's.
    pub const USERDATA: usize = 0;
    /// `error` (`$errno`, `u16`).
    pub const ERROR: usize = 8;
    /// `type` (`$eventtype`, `u8`).
    pub const TYPE: usize = 10;
    /// `fd_readwrite.nbytes` (`$filesize`, `u64`).
    pub const NBYTES: usize = 16;
    /// `fd_readwrite.flags` (`$eventrwflags`, `u16`).
    pub const RW_FLAGS: usize = 24;
}
