//! `recurse`: runaway recursion, to show that a stack overflow is stopped.
//!
//! Each call works on its result after the recursive call returns, so it is not a
//! tail call, and `black_box` hides the values from the optimizer, so the recursion
//! is neither turned into a loop nor removed. The base case can never be reached
//! (the depth would have to hit `u64::MAX`) but keeps the function from being
//! unconditional recursion, which the compiler may treat as unreachable code.

use std::hint::black_box;

fn main() {
    let depth = descend(black_box(0));
    println!("{depth}");
}

/// Recurses until the stack runs out; returns the depth reached (it never does).
fn descend(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return depth;
    }
    let below = descend(black_box(depth + 1));
    black_box(below).wrapping_add(depth)
}
