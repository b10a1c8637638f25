//! `flood`: a WASI preview 2 component that reports progress forever, each time with a
//! 64 KiB message. It shows that a component looping over host calls, which burn no fuel
//! of their own, is still stopped by its wall-clock limit or a cancel and does not hold a
//! thread that other tasks need.
//!
//! Every report makes the host check the whole message (it must be UTF-8) before it cuts it
//! to 200 characters; the loop itself does almost nothing in WebAssembly.

use std::hint::black_box;

use taskhost_guest::progress;

/// Bytes in each report's message.
const MESSAGE_BYTES: usize = 64 << 10;

fn main() {
    let message = "x".repeat(MESSAGE_BYTES);
    let mut turns: u64 = 0;
    loop {
        turns = black_box(turns.wrapping_add(1));
        progress(0.5, &message);
    }
}
