//! The `taskhost` binary: options, logging, bind, serve until Ctrl-C or SIGTERM.

use std::io::IsTerminal;

use anyhow::Context;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use taskhost::config::LogFormat;
use taskhost::{NativeTasks, Options, ProtocolApp};

/// jemalloc, not glibc's malloc. Frames and task states are allocated on one thread and freed
/// on another (a task worker builds the `finished` frame, the network thread frees it once
/// written); glibc then takes the allocating thread's arena lock, and the two threads woke
/// each other through futexes on every task. Measured (docs/PERFORMANCE.md, "The server's
/// allocator"): echo's server CPU per task -15 to -20%, the sleepers' peak memory unchanged.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts (the environment's `_RJEM_MALLOC_CONF` is applied
/// after these). Freed memory goes back to the system after a second instead of ten, so a
/// burst's memory is returned about as soon as glibc returns it, and in one step (no "muzzy"
/// stage kept for another ten seconds). The decay advances as the process allocates, so an
/// idle server keeps what it freed last. jemalloc's own purging thread would return it, but
/// raised the sleepers' peak by about 4 MiB and made echo's CPU less steady (docs/PERFORMANCE.md,
/// "An idle server keeps what it freed last"). A C string: jemalloc reads a `const char *`.
#[cfg(not(target_env = "msvc"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_SETTINGS: &[u8; 37] = b"dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> anyhow::Result<()> {
    keep_backtraces_out_of_errors();
    taskhost::runtime_builder()
        .build()
        .context("could not start the async runtime")?
        .block_on(run())
}

/// Errors (anyhow's, wasmtime's) capture a stack trace when `RUST_BACKTRACE` or
/// `RUST_LIB_BACKTRACE` asks for one, and WASI streams hand an error's debug text to the
/// guest: with `RUST_BACKTRACE=1` in the server's environment, a task would read the host's
/// stack in an error (and every error would cost a stack walk). `RUST_LIB_BACKTRACE=0`
/// turns that off for errors and leaves `RUST_BACKTRACE` to panics, whose traces go to the
/// log. Set before the runtime starts any thread.
fn keep_backtraces_out_of_errors() {
    // SAFETY: no other thread runs yet, so none reads the environment meanwhile.
    unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
}

async fn run() -> anyhow::Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if taskhost::tools::is_tool(&args) {
        end_quietly_on_closed_pipe();
        let code = taskhost::tools::main(args).await?;
        std::process::exit(code.into());
    }
    let options = Options::load()?;
    if options.completions.is_some() || options.man || options.print_config || options.host_index {
        end_quietly_on_closed_pipe();
    }
    if let Some(shell) = options.completions {
        return taskhost::cli_docs::print_completions(shell);
    }
    if options.man {
        return taskhost::cli_docs::print_man_page();
    }
    if options.print_config {
        print!("{}", options.to_toml()?);
        return Ok(());
    }
    // Lines go to stderr from a thread of their own: a slow terminal or pipe never holds up
    // the runtime's threads (lines beyond the writer's queue are dropped, not waited for).
    // The guard flushes what is left when main returns.
    // Its queue is allocated whole at start: 16,384 lines is 0.4 MiB, where the default
    // 128,000 was 3 MiB of an idle server's memory.
    let (writer, _flush_on_exit) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(16_384)
        .finish(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match options.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    taskhost::config::raise_open_files_limit();
    let config = options.validate()?;
    if options.host_index {
        let index = taskhost::calibrate::measure(&config).await?;
        println!("{}", serde_json::to_string(&index)?);
        return Ok(());
    }
    // Listen for Ctrl-C and SIGTERM from here on, before the (possibly slow) start.
    let shutdown = taskhost::shutdown_signal();
    let listener = TcpListener::bind(options.listen).await.with_context(|| {
        format!(
            "could not listen on {}: is another server using it? pass --listen ADDR",
            options.listen
        )
    })?;
    if options.native {
        tracing::warn!("--native: echo, fib, slow and spin run unsandboxed in the host");
        taskhost::run(listener, config, NativeTasks, shutdown).await
    } else {
        taskhost::run(listener, config, ProtocolApp, shutdown).await
    }
}

/// For the commands that print and exit (`check`, `run`, `--man`, `--print-config`…): when the
/// reader of stdout goes away (`taskhost check x.wasm | head -1`), end as `cat` would, by
/// SIGPIPE, instead of panicking in `println!` with "failed printing to stdout". Rust ignores
/// SIGPIPE by default; the server keeps that, its sockets report EPIPE as errors.
fn end_quietly_on_closed_pipe() {
    // SAFETY: restoring a signal's default disposition before any thread writes to stdout.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
