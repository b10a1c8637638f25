//! Stdin read whole and stdout written at once, for the task ABI.
//!
//! On preview 1 they go straight to WASI's `fd_read` and `fd_write`: std's `stdin()` and
//! `stdout()` allocate buffers (8 KiB and 1 KiB) that a task reading its input whole and
//! writing its result once never fills, but whose allocation the guest's allocator places
//! in pages of their own. Every running instance holds those pages: 10,000 sleeping `slow`
//! tasks held about 40 MiB more through std (docs/PERFORMANCE.md, "Where a sleeper's
//! memory goes"). Elsewhere (preview 2 components, the host's unit tests) std's streams.

use std::io;

/// Appends all of stdin to `bytes`.
pub fn read_stdin(bytes: &mut Vec<u8>) -> io::Result<()> {
    imp::read_stdin(bytes)
}

/// Writes all of `bytes` to stdout.
pub fn write_stdout(bytes: &[u8]) -> io::Result<()> {
    imp::write_stdout(bytes)
}

#[cfg(all(target_arch = "wasm32", target_os = "wasi", target_env = "p1"))]
mod imp {
    use std::io;

    const STDIN: u32 = 0;
    const STDOUT: u32 = 1;

    /// The first read's room; it doubles while the input keeps coming.
    const FIRST_READ: usize = 256;

    fn error(errno: wasi::Errno) -> io::Error {
        io::Error::from_raw_os_error(i32::from(errno.raw()))
    }

    pub fn read_stdin(bytes: &mut Vec<u8>) -> io::Result<()> {
        loop {
            if bytes.capacity() - bytes.len() < FIRST_READ / 4 {
                bytes.reserve(bytes.capacity().max(FIRST_READ));
            }
            let spare = bytes.spare_capacity_mut();
            let iovec = wasi::Iovec {
                buf: spare.as_mut_ptr().cast::<u8>(),
                buf_len: spare.len(),
            };
            // SAFETY: the iovec points at the vector's spare capacity, which fd_read fills
            // with at most `buf_len` bytes and reports how many.
            let read = unsafe { wasi::fd_read(STDIN, &[iovec]) }.map_err(error)?;
            if read == 0 {
                return Ok(());
            }
            // SAFETY: fd_read initialised `read` bytes of the spare capacity.
            unsafe { bytes.set_len(bytes.len() + read) };
        }
    }

    pub fn write_stdout(mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let ciovec = wasi::Ciovec {
                buf: bytes.as_ptr(),
                buf_len: bytes.len(),
            };
            // SAFETY: the ciovec points at `bytes`, which fd_write only reads.
            let written = unsafe { wasi::fd_write(STDOUT, &[ciovec]) }.map_err(error)?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            bytes = &bytes[written..];
        }
        Ok(())
    }
}

#[cfg(not(all(target_arch = "wasm32", target_os = "wasi", target_env = "p1")))]
mod imp {
    use std::io::{self, Read, Write};

    pub fn read_stdin(bytes: &mut Vec<u8>) -> io::Result<()> {
        io::stdin().lock().read_to_end(bytes).map(drop)
    }

    pub fn write_stdout(bytes: &[u8]) -> io::Result<()> {
        let mut stdout = io::stdout().lock();
        stdout.write_all(bytes)?;
        stdout.flush()
    }
}
