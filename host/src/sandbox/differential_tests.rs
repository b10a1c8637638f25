//! Holds the sandbox's own WASI preview 1 calls ([`super::stdio`]) to wasmtime-wasi's: the
//! same guest runs under plain wasmtime-wasi (a `WasiP1Ctx` set up as the sandbox sets up
//! its own: stdin the input, stdout and stderr captured, the task's name as the only
//! argument, no environment or files) and under the sandbox's linker, and what it saw must
//! be the same: each call's errno and what it read or was told (the guest keeps a log in
//! its memory, read after the run), what it printed, and how it ended. A trap is a trap
//! whatever its message. Where `stdio.rs` documents a difference, a test states it.
//!
//! The guests are WebAssembly text written here, one per group of calls, one per bad
//! pointer (a trap ends the run), and the bundled Rust tasks from `tasks/`.
//!
//! - `harness.rs`: running a guest both ways and what is compared; `prelude.wat`, the start
//!   of every text guest (its imports, its log and helpers that make a call and log it);
//! - `streams.rs`: stdin, stdout and stderr, closed and bad descriptors, polling them;
//! - `clocks.rs`: the clocks and polling them;
//! - `pointers.rs`: pointers out of bounds or misaligned;
//! - `process.rs`: arguments, environment, randomness, exits, the caps and the Rust tasks.

mod clocks;
mod harness;
mod pointers;
mod process;
mod streams;
