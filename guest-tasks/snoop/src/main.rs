//! `snoop`: tries to see the host, and reports what it saw.
//!
//! A probe of the sandbox (docs/PROTOCOL.md, guarantee 4: a module sees no files, no
//! environment, no network, and no clock beyond what WASI gives). Every attempt is
//! caught and reported, so the task always finishes; in a correct sandbox the
//! result is a list of refusals. The result is an object:
//!
//! - `files`: path -> `{"ok": content}` or `{"error": why}` (content cut at
//!   [`MAX_BYTES`]);
//! - `dirs`: path -> `{"ok": [entry names]}` or `{"error": why}`;
//! - `cwd`: the current directory as WASI's libc reports it, or `{"error": why}`;
//! - `env`: the environment as `NAME=value` strings (expected: empty);
//! - `args`: the arguments (expected: the task's name only);
//! - `socket`: a TCP connection to the server's own default port, `{"ok": peer}`
//!   or `{"error": why}`;
//! - `clock_unix_ms`: the wall clock as Unix milliseconds (or `{"error": why}`);
//! - `clock_monotonic_us`: microseconds the probe took, read from the monotonic clock.

use std::fs::{self, File};
use std::io::Read;
use std::net::TcpStream;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use std::{env, io};

use taskhost_guest::{Map, Value, json, run};

/// Files a leaky sandbox would show: the host's users, the host process's
/// environment, and the project's own manifest (relative to a leaked working dir).
const FILES: &[&str] = &["/etc/passwd", "/proc/self/environ", "./Cargo.toml"];

/// Directories a leaky sandbox would list.
const DIRS: &[&str] = &["/", ".", "/tmp"];

/// The server's default address (docs/PROTOCOL.md, "Endpoint").
const SOCKET_ADDR: &str = "127.0.0.1:9501";

/// At most this many bytes of each file, so a leak cannot overrun the output limit.
const MAX_BYTES: u64 = 4096;

/// At most this many directory entries or environment variables, for the same reason.
const MAX_ENTRIES: usize = 100;

fn main() {
    run(|_input: taskhost_guest::Value| Ok(snoop()));
}

/// Makes every attempt and gathers what each one saw.
fn snoop() -> Value {
    let started = Instant::now();
    let files: Map<String, Value> = FILES
        .iter()
        .map(|path| (path.to_string(), outcome(read_file(path))))
        .collect();
    let dirs: Map<String, Value> = DIRS
        .iter()
        .map(|path| (path.to_string(), outcome(list_dir(path))))
        .collect();
    let cwd = env::current_dir().map(|dir| Value::from(dir.to_string_lossy().into_owned()));
    let env: Vec<String> = env::vars_os()
        .take(MAX_ENTRIES)
        .map(|(name, value)| format!("{}={}", name.to_string_lossy(), value.to_string_lossy()))
        .collect();
    // `args_os`, not `args`: `args` panics on an argument that is not Unicode.
    let args: Vec<String> = env::args_os()
        .take(MAX_ENTRIES)
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let socket = TcpStream::connect(SOCKET_ADDR)
        .and_then(|stream| stream.peer_addr())
        .map(|peer| Value::from(format!("connected to {peer}")));
    let clock_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| Value::from(u64::try_from(since.as_millis()).unwrap_or(u64::MAX)))
        .map_err(|err| format!("the wall clock is before 1970: {err}"));
    let clock_monotonic_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    json!({
        "files": files,
        "dirs": dirs,
        "cwd": value_or_error(cwd),
        "env": env,
        "args": args,
        "socket": outcome(socket),
        "clock_unix_ms": value_or_error(clock_unix_ms),
        "clock_monotonic_us": clock_monotonic_us,
    })
}

/// The first [`MAX_BYTES`] of a file, as text (bytes that are not UTF-8 replaced).
fn read_file(path: &str) -> io::Result<Value> {
    let mut bytes = Vec::new();
    File::open(path)?.take(MAX_BYTES).read_to_end(&mut bytes)?;
    Ok(Value::from(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The names of the first [`MAX_ENTRIES`] entries of a directory.
fn list_dir(path: &str) -> io::Result<Value> {
    let mut names = Vec::new();
    for entry in fs::read_dir(path)?.take(MAX_ENTRIES) {
        names.push(Value::from(
            entry?.file_name().to_string_lossy().into_owned(),
        ));
    }
    Ok(Value::from(names))
}

/// `{"ok": value}` or `{"error": why}`.
fn outcome<E: ToString>(attempt: Result<Value, E>) -> Value {
    match attempt {
        Ok(value) => json!({ "ok": value }),
        Err(err) => json!({ "error": err.to_string() }),
    }
}

/// The value itself, or `{"error": why}`.
fn value_or_error<E: ToString>(attempt: Result<Value, E>) -> Value {
    attempt.unwrap_or_else(|err| json!({ "error": err.to_string() }))
}
