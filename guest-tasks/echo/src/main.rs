//! `echo`: returns its input unchanged.
//!
//! The benchmark's cheapest task, so it skips the guest crate's parse and
//! re-serialize: the host already wrote valid JSON on stdin, and copying the bytes
//! back gives the same value. Empty stdin (no input) is `null`, as in the guest crate.

use std::io::{self, Read, Write};
use std::process;

fn main() {
    let mut input = Vec::new();
    if let Err(err) = io::stdin().lock().read_to_end(&mut input) {
        fail(&format!("echo: could not read stdin: {err}"));
    }
    let output: &[u8] = if input.iter().all(u8::is_ascii_whitespace) {
        b"null"
    } else {
        &input
    };
    let mut stdout = io::stdout().lock();
    if let Err(err) = stdout.write_all(output).and_then(|()| stdout.flush()) {
        fail(&format!("echo: could not write stdout: {err}"));
    }
}

/// Reports `message` on stderr and exits 1 (the task failed).
fn fail(message: &str) -> ! {
    // If stderr is gone too, the exit status is all that can be said.
    let _ = writeln!(io::stderr(), "{message}");
    process::exit(1)
}
