//! A task's stdout and stderr: two in-memory pipes that share one byte budget
//! (`--max-output`). The first write past the budget traps the guest at once, and the
//! overflow is remembered so the outcome says `output_too_large` rather than `trap`.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Largest write permit handed to the guest at once; WASI streams use about this much.
const WRITE_PERMIT: usize = 64 * 1024;

/// The captured output of one task, shared by its stdout and stderr pipes.
#[derive(Debug, Default)]
struct Captured {
    stdout: BytesMut,
    stderr: BytesMut,
    /// Bytes still allowed, over both streams.
    remaining: usize,
    /// Set by the first write that did not fit; read when classifying the outcome.
    overflowed: bool,
    /// The budget it started with, for the error message.
    budget: usize,
}

/// The owner's side: creates the two pipes and reads what they captured after the run.
///
/// Std mutex: it is held only to append bytes or read flags, never across an `.await`.
#[derive(Debug, Clone)]
pub struct OutputCapture {
    captured: Arc<Mutex<Captured>>,
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// One of the two pipes, as handed to the WASI context.
#[derive(Debug, Clone)]
pub struct CapturePipe {
    captured: Arc<Mutex<Captured>>,
    stream: Stream,
}

impl OutputCapture {
    pub fn new(budget: usize) -> Self {
        OutputCapture {
            captured: Arc::new(Mutex::new(Captured {
                remaining: budget,
                budget,
                ..Captured::default()
            })),
        }
    }

    pub fn stdout_pipe(&self) -> CapturePipe {
        self.pipe(Stream::Stdout)
    }

    pub fn stderr_pipe(&self) -> CapturePipe {
        self.pipe(Stream::Stderr)
    }

    fn pipe(&self, stream: Stream) -> CapturePipe {
        CapturePipe {
            captured: Arc::clone(&self.captured),
            stream,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Captured> {
        // A poisoned lock only means a panic elsewhere mid-append: the bytes are still usable.
        self.captured.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends to stdout; `Err` (and remembered) past the budget.
    pub fn append_stdout(&self, bytes: &[u8]) -> Result<(), ()> {
        self.lock().append(Stream::Stdout, bytes)
    }

    /// Appends to stderr; `Err` (and remembered) past the budget.
    pub fn append_stderr(&self, bytes: &[u8]) -> Result<(), ()> {
        self.lock().append(Stream::Stderr, bytes)
    }

    /// The bytes of output the task was allowed, over both streams.
    pub fn budget(&self) -> usize {
        self.lock().budget
    }

    /// Whether the task tried to write more than its budget.
    pub fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    /// Reads stdout in place: the result is built from it once, without a copy of it first.
    pub fn with_stdout<R>(&self, read: impl FnOnce(&[u8]) -> R) -> R {
        read(&self.lock().stdout)
    }

    #[cfg(test)]
    pub fn stdout(&self) -> Bytes {
        self.with_stdout(Bytes::copy_from_slice)
    }

    /// The last `max` bytes of stderr, as text: what a person needs to see why a task failed.
    pub fn stderr_tail(&self, max: usize) -> String {
        let captured = self.lock();
        let stderr = &captured.stderr[..];
        let start = stderr.len().saturating_sub(max);
        let tail = String::from_utf8_lossy(&stderr[start..]);
        let tail = tail.trim();
        if start > 0 {
            format!("…{tail}")
        } else {
            tail.to_owned()
        }
    }
}

impl Captured {
    /// Appends `bytes`, or records the overflow and refuses them all.
    fn append(&mut self, stream: Stream, bytes: &[u8]) -> Result<(), ()> {
        if bytes.len() > self.remaining {
            self.overflowed = true;
            return Err(());
        }
        self.remaining -= bytes.len();
        match stream {
            Stream::Stdout => self.stdout.extend_from_slice(bytes),
            Stream::Stderr => self.stderr.extend_from_slice(bytes),
        }
        Ok(())
    }
}

impl CapturePipe {
    fn append(&self, bytes: &[u8]) -> Result<(), ()> {
        let mut captured = self.captured.lock().unwrap_or_else(|e| e.into_inner());
        captured.append(self.stream, bytes)
    }

    fn overflow_error() -> StreamError {
        StreamError::Trap(wasmtime::format_err!(
            "the task wrote more output than its limit (--max-output)"
        ))
    }
}

impl IsTerminal for CapturePipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturePipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturePipe {
    /// Memory is always ready to take bytes.
    async fn ready(&mut self) {}
}

impl OutputStream for CapturePipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes).map_err(|()| Self::overflow_error())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // A permit beyond the remaining budget is fine: the write itself enforces the budget,
        // so that the first byte too many traps instead of blocking forever.
        Ok(WRITE_PERMIT)
    }
}

impl AsyncWrite for CapturePipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(match self.append(buf) {
            Ok(()) => Ok(buf.len()),
            Err(()) => Err(io::Error::other("output limit exceeded")),
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_and_overflow_is_remembered() {
        let capture = OutputCapture::new(10);
        let mut out = capture.stdout_pipe();
        let mut err = capture.stderr_pipe();
        out.write(Bytes::from_static(b"hello")).unwrap();
        err.write(Bytes::from_static(b"oops")).unwrap();
        assert!(!capture.overflowed());
        assert!(out.write(Bytes::from_static(b"xx")).is_err());
        assert!(capture.overflowed());
        assert_eq!(&capture.stdout()[..], b"hello");
        assert_eq!(capture.stderr_tail(100), "oops");
        assert_eq!(capture.stderr_tail(2), "…ps");
    }
}
