//! `exit`: exits with status 3 after one line on stderr, to show how a task that
//! gives up is reported: `failed`, code `exit`, with that line in the message.

use std::io::{self, Write};
use std::process;

fn main() {
    // The exit status carries the failure even if stderr cannot be written.
    let _ = writeln!(
        io::stderr(),
        "exit task: giving up on purpose with status 3"
    );
    process::exit(3);
}
