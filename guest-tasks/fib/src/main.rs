//! `fib`: the n-th Fibonacci number by naive recursion, the CPU-bound benchmark.
//!
//! Input `{"n": N}` or a bare `N`; result `fib(N)` as an integer, with `fib(0) = 0`
//! and `fib(1) = 1`. The recursion is deliberately exponential: the work grows by
//! about 1.6x per step of `n`, which makes `n` a knob for CPU time and fuel. Do not
//! memoize or loop it. Results above 2^53 are exact in the JSON but not in a
//! JavaScript client's numbers.

use taskhost_guest::{Value, input_u64, run};

/// `fib(93)` is the largest Fibonacci number that fits in a `u64`.
const MAX_N: u64 = 93;

fn main() {
    run(|input| {
        let n = input_u64(&input, "n")?.ok_or("fib needs `n`: send {\"n\": 30} or a bare 30")?;
        if n > MAX_N {
            return Err(format!(
                "n = {n} is too large: fib(n) overflows a 64-bit integer above n = {MAX_N}"
            ));
        }
        Ok(Value::from(fib(n)))
    });
}

/// Naive recursive Fibonacci. Never overflows for `n <= MAX_N`: every partial sum
/// is at most `fib(n)`.
fn fib(n: u64) -> u64 {
    if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
}
