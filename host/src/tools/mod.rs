//! Tools for task authors, beside the server: `taskhost run FILE` runs one task once, with
//! no server, and prints how it ended; `taskhost check FILE` says whether the server would
//! load a module or component and its manifest, and why not.
//!
//! Both load the file the way the server does (a tasks folder of their own, in a temporary
//! folder, holding the file and its manifest), through the same registry and sandbox, so
//! what they say is what the server would do. The binary hands its arguments here when the
//! first one is `run` or `check` ([`is_tool`]).

mod check;
mod run;
mod scratch;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

/// What the tools take: a subcommand, then (for `run`) the server's own options after `--`.
#[derive(Debug, Parser)]
#[command(name = "taskhost", about = "Tools for task authors")]
enum Tool {
    /// Runs one task once, locally (no server, no client), and prints its outcome as JSON:
    /// `finished` with the result, or `failed` with the error. Exits 0 when it finished, 1
    /// when it failed.
    Run {
        /// The module or component (`NAME.wasm` or `NAME.wat`); its manifest `NAME.toml`
        /// beside it is used if there is one.
        file: PathBuf,
        /// The task's input, JSON (`-` reads it from stdin).
        #[arg(long, default_value = "null")]
        input: String,
        /// Grants a capability for this run, replacing the manifest's grant of it:
        /// `http=https://api.example.com` (repeat for more origins), `kv=NAME`, `sql=NAME`,
        /// `mail=true`, `publish=TOPIC` (repeat for more).
        #[arg(long = "grant", value_name = "CAPABILITY=VALUE")]
        grants: Vec<String>,
        /// The server's options (limits, --data-dir, --smtp, --database…), as `taskhost
        /// --help` lists them.
        #[arg(last = true)]
        server_options: Vec<OsString>,
    },
    /// Checks that the server would load a module or component and its manifest: prints
    /// its kind, imports (those the server does not provide are refused), exports, and the
    /// manifest's limits and grants. Exits 0 when it would load, 1 when not.
    Check {
        /// The module or component (`NAME.wasm` or `NAME.wat`), with `NAME.toml` beside it
        /// if it has a manifest.
        file: PathBuf,
    },
}

/// Whether the command line asks for a tool rather than the server.
pub fn is_tool(args: &[OsString]) -> bool {
    matches!(
        args.get(1).and_then(|arg| arg.to_str()),
        Some("run" | "check")
    )
}

/// Runs the tool the command line names; the process's exit code.
pub async fn main(args: Vec<OsString>) -> anyhow::Result<u8> {
    match Tool::parse_from(args) {
        Tool::Run {
            file,
            input,
            grants,
            server_options,
        } => run::run(&file, &input, &grants, server_options).await,
        Tool::Check { file } => check::check(&file),
    }
}
