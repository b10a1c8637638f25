//! `spin`: an endless loop, to show that a task that never yields is still stopped
//! (by the wall-clock limit or by fuel).
//!
//! `black_box` makes the counter opaque to the optimizer, so the loop is neither
//! removed nor turned into a bare `loop {}`; it keeps doing work every turn.

use std::hint::black_box;

fn main() {
    let mut turns: u64 = 0;
    loop {
        turns = black_box(turns.wrapping_add(1));
    }
}
