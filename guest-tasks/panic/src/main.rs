//! `panic`: a Rust panic, to show how a crashing task is reported.
//!
//! On `wasm32-wasip1` a panic prints its message to stderr and aborts, which is a
//! wasm trap (`unreachable`); the host reports the task as `failed`, code `trap`.

fn main() {
    panic!("panic task: panicking on purpose");
}
