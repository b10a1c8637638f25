//! The `taskhost` binary: options, logging, bind, serve until Ctrl-C or SIGTERM.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use taskhost::{NativeTasks, Options, ProtocolApp};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let options = Options::parse();
    let config = options.validate()?;
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
