//! `oom`: allocates without end, to show that the memory limit holds.
//!
//! Allocates 1 MiB chunks, writes to every 64 KiB wasm page of each so the memory is
//! really used, and keeps them all alive. When the host refuses to grow memory, the
//! allocator fails and Rust aborts (a trap, not an error return); the host reports
//! the refused growth as `memory_limit`.

use std::hint::black_box;

/// One allocation.
const CHUNK_BYTES: usize = 1 << 20;

/// A wasm page: writing one byte in each touches all of the chunk's memory.
const PAGE_BYTES: usize = 64 << 10;

fn main() {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK_BYTES];
        for offset in (0..CHUNK_BYTES).step_by(PAGE_BYTES) {
            chunk[offset] = 1;
        }
        chunks.push(black_box(chunk));
    }
}
