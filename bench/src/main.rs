//! `loadgen`: the benchmark behind `just bench` (issue 5).
//!
//! Starts `taskhost` as a child process on free loopback ports, in sandbox mode and with
//! `--native` (the baseline: the same server and protocol with the bundled tasks as Rust
//! functions in the host), drives it with real WebSocket clients, and prints one table of every
//! figure beside its baseline, the ratio and the target. It writes the figures to
//! `target/bench/latest.json` and draws them in `target/bench/latest.svg`.
//!
//! # Layout
//!
//! - [`server`]: a server under test: spawn, wait for `/healthz`, memory and CPU, SIGTERM.
//! - [`client`]: WebSocket clients keeping N tasks in flight and timing each.
//! - [`scenarios`]: the eight scenarios, one file each, and the quick or full [`Plan`].
//! - [`stats`]: percentiles. [`procfs`]: what Linux says about a process and the machine.
//! - [`report`]: the table rows and targets. [`chart`]: the SVG.
//! - [`soak`]: `loadgen soak`, mixed load for a long time, failing when a figure trends upward.

mod chart;
mod client;
mod procfs;
mod report;
mod scenarios;
mod server;
mod soak;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use serde::Serialize;

use crate::procfs::Machine;
use crate::report::Row;
use crate::scenarios::{
    CpuShare, Plan, Unexpected, connections::Connections, cpu::Cpu, echo_latency::EchoLatency,
    echo_throughput::EchoThroughput, fairness::Fairness, jetstream::JetStream, sleeping::Sleeping,
    startup::Startup,
};
use crate::server::{Launcher, Mode, Server, SwoolePeer};

/// Benchmarks taskhost's sandbox against its native baseline (see docs/PERFORMANCE.md).
///
/// Scenarios: 1 echo-throughput, 2 echo-latency, 3 cpu, 4 sleeping, 5 fairness, 6 connections,
/// 7 startup, 8 jetstream (with nats-server: echo through `--nats` against the embedded queue).
/// Everything runs on loopback, bounded in count and time. Exits non-zero when a
/// scenario could not run or a task ended otherwise than expected; a missed target is reported,
/// not an error.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Options {
    /// A few seconds per scenario and small counts (CI runs this); the default full mode takes
    /// a minute or two.
    #[arg(long)]
    quick: bool,

    /// The server binary [default: `taskhost` beside this binary].
    #[arg(long, global = true)]
    server: Option<PathBuf>,

    /// The tasks folder the servers serve (`just build-guests` fills it).
    #[arg(long, default_value = "tasks", global = true)]
    tasks: PathBuf,

    /// Where latest.json, latest.svg and the server logs go [default: `bench/` in the target
    /// directory this binary is in; `soak/` for the soak].
    #[arg(long, global = true)]
    out: Option<PathBuf>,

    /// The Swoole extension for the peer column (Swoole's task workers serving the same
    /// protocol, scenarios 1-4) [default: `swoole/swoole.so` in the target directory, where
    /// `just swoole` builds it]. Without it the table has no Swoole column and says why.
    #[arg(long, value_name = "PATH/swoole.so")]
    peer_swoole: Option<PathBuf>,

    /// Leave the Swoole column out even when Swoole is built.
    #[arg(long)]
    no_peer: bool,

    /// Run only these scenarios, by number or name, comma-separated (e.g. `--only 1,cpu`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Mixed load (echo, slow, broadcast, the failure tasks, clients leaving mid-task, a slow
    /// reader, module reloads) for MINUTES; samples the server's memory, open files, queue
    /// depth and echo p99 every 10 s and fails if one trends upward (docs/RELIABILITY.md).
    Soak {
        /// How long the load runs, in minutes (at least 1).
        #[arg(long, default_value_t = 60.0)]
        minutes: f64,

        /// Flags for the server, after `--` [default: -- --task-workers 64].
        #[arg(last = true)]
        server_args: Vec<String>,
    },
}

const SCENARIOS: [&str; 8] = [
    "echo-throughput",
    "echo-latency",
    "cpu",
    "sleeping",
    "fairness",
    "connections",
    "startup",
    "jetstream",
];

/// Every scenario's figures; `None` for one that did not run.
#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub echo_throughput: Option<EchoThroughput>,
    pub echo_latency: Option<EchoLatency>,
    pub cpu: Option<Cpu>,
    pub sleeping: Option<Sleeping>,
    pub fairness: Option<Fairness>,
    pub connections: Option<Connections>,
    pub startup: Option<Startup>,
    pub jetstream: Option<JetStream>,
    /// Peak memory of the two servers that scenarios 1, 2, 3 and 5 share.
    pub shared_servers_peak_rss_bytes: Vec<(String, u64)>,
}

/// `latest.json`.
#[derive(Serialize)]
struct Document<'a> {
    mode: &'static str,
    command: String,
    machine: &'a Machine,
    server_binary: String,
    server_version: String,
    /// `git describe --always --dirty` of the checkout the run was made in, if any.
    source: Option<String>,
    native_baseline: bool,
    /// `taskhost --host-index` on this host before the scenarios, or why it is missing.
    host_index: Result<&'a HostIndex, &'a str>,
    /// `swoole_version()` of the peer column, or why there is none.
    peer: Result<&'a str, &'a str>,
    plan: &'a Plan,
    /// Cores other processes kept busy just before the run.
    background_cores: f64,
    rows: &'a [Row],
    results: &'a Results,
    /// What may skew figures without making them wrong (other processes busy, say).
    warnings: &'a [String],
    /// Scenario failures and tasks that ended otherwise than expected; empty on a clean run.
    problems: &'a [String],
}

fn main() -> ExitCode {
    let options = Options::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loadgen: could not start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the selected scenarios and writes the report; `Ok(false)` when there were problems.
async fn run(options: Options) -> anyhow::Result<bool> {
    let selected = selection(&options.only)?;
    let exe_dir = std::env::current_exe()
        .context("could not find this binary's path")?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let binary = options
        .server
        .clone()
        .unwrap_or_else(|| exe_dir.join("taskhost"));
    if let Some(Command::Soak {
        minutes,
        server_args,
    }) = &options.command
    {
        let out = options
            .out
            .clone()
            .unwrap_or_else(|| soak::default_out(&exe_dir));
        return soak::run(*minutes, &binary, &options.tasks, &out, server_args).await;
    }
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| exe_dir.parent().unwrap_or(&exe_dir).join("bench"));
    if !options.tasks.join("echo.wasm").exists() {
        anyhow::bail!(
            "{} has no echo.wasm: run `just build-guests` first, or pass --tasks DIR",
            options.tasks.display()
        );
    }
    let log_dir = out.join("logs");
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("could not create {}", log_dir.display()))?;
    let open_files = procfs::raise_open_files_limit()?;

    let machine = Machine::describe();
    let plan = Plan::new(options.quick);
    let mode = if options.quick { "quick" } else { "full" };
    let help = command_output(&binary, "--help")?;
    let native_baseline = help.contains("--native");
    let server_version = command_output(&binary, "--version")?.trim().to_owned();
    let tasks = snapshot_tasks(&options.tasks, &out.join("tasks"))?;
    // A compile cache of the run's own, so that the start-up scenario controls what is cold
    // and the user's cache is neither used nor touched.
    let cache_dir = help
        .contains("--cache-dir")
        .then(|| out.join("compile-cache"));
    let common_args = match &cache_dir {
        Some(dir) => vec!["--cache-dir".to_owned(), dir.display().to_string()],
        None => Vec::new(),
    };
    let launcher = Launcher {
        binary: binary.clone(),
        tasks,
        log_dir: log_dir.clone(),
        common_args,
        cache_dir,
        warnings: Arc::default(),
    };
    eprintln!(
        "loadgen: {mode} run of {server_version} ({}), {} cores, Linux {}; server logs in {}",
        binary.display(),
        machine.cores,
        machine.kernel,
        log_dir.display()
    );

    let host_index = if help.contains("--host-index") {
        host_index(&binary, &launcher.tasks, &launcher.common_args)
    } else {
        Err(format!("{} has no --host-index", binary.display()))
    };
    let host_index_line = match &host_index {
        Ok(index) => format!(
            "host index: native fib(30) {:.2} ms, sandbox echo {:.1} µs a task{}{} \
             (taskhost --host-index; compare figures across hosts by these)",
            index.native_fib_ms,
            index.sandbox_echo_us,
            index.sandbox_echo_idle().unwrap_or_default(),
            index.sandbox_fib().unwrap_or_default()
        ),
        Err(reason) => format!("host index: not measured ({reason})"),
    };
    eprintln!("loadgen: {host_index_line}");

    let peer = if options.no_peer {
        Err("left out (--no-peer)".to_owned())
    } else {
        let extension = options.peer_swoole.clone().unwrap_or_else(|| {
            exe_dir
                .parent()
                .unwrap_or(&exe_dir)
                .join("swoole/swoole.so")
        });
        SwoolePeer::find(&extension, &peer_script())
    };
    match &peer {
        Ok(peer) => eprintln!(
            "loadgen: peer column: Swoole {} ({})",
            peer.version,
            peer.extension.display()
        ),
        Err(reason) => eprintln!("loadgen: no Swoole column: {reason}"),
    }
    let peer_ref = peer.as_ref().ok();

    let mut warnings = Vec::new();
    let background = background_load().await?;
    if background > BUSY_CORES {
        warnings.push(format!(
            "before the run, other processes kept {background:.2} cores busy: every figure shares the cores with them"
        ));
    }

    let mut results = Results::default();
    let mut failures: Vec<(usize, anyhow::Error)> = Vec::new();
    let mut problems = Vec::new();
    if !native_baseline {
        problems.push(format!(
            "{} has no --native flag: figures have no native baseline",
            binary.display()
        ));
    }
    let wants = |n: usize| selected.contains(&n);

    // Start-up first, so that its first start is the run's first: the coldest there is.
    if wants(7) {
        step(7);
        let empty = out.join("empty-tasks");
        record(
            &mut failures,
            7,
            scenarios::startup::run(&launcher, plan.starts, &empty).await,
            |r| results.startup = Some(r),
        );
    }
    if [1, 2, 3, 5].into_iter().any(wants) {
        let sandbox = launcher.start("sandbox", Mode::Sandbox, &[]).await?;
        let native = if native_baseline {
            Some(launcher.start("native", Mode::Native, &[]).await?)
        } else {
            None
        };
        let native_ref = native.as_ref();
        // Swoole in the original example's shape: 2 workers, 2 task workers.
        let swoole = match peer_ref {
            Some(peer) if [1, 2, 3].into_iter().any(wants) => {
                Some(peer.start(&launcher, "swoole", &[]).await?)
            }
            _ => None,
        };
        let swoole_ref = swoole.as_ref();
        if wants(1) {
            step(1);
            let outcome =
                scenarios::echo_throughput::run(&sandbox, native_ref, swoole_ref, &plan).await;
            record(&mut failures, 1, outcome, |r| {
                results.echo_throughput = Some(r)
            });
        }
        if wants(2) || wants(5) {
            step(2);
            let outcome =
                scenarios::echo_latency::run(&sandbox, native_ref, swoole_ref, plan.probe).await;
            record(&mut failures, 2, outcome, |r| {
                results.echo_latency = Some(r)
            });
        }
        if wants(3) {
            step(3);
            let outcome = scenarios::cpu::run(&sandbox, native_ref, swoole_ref, &plan).await;
            record(&mut failures, 3, outcome, |r| results.cpu = Some(r));
        }
        if wants(5) {
            step(5);
            let outcome = scenarios::fairness::run(
                &sandbox,
                native_ref,
                &plan,
                results.echo_latency.as_ref(),
            )
            .await;
            record(&mut failures, 5, outcome, |r| results.fairness = Some(r));
        }
        for server in [Some(sandbox), native, swoole].into_iter().flatten() {
            results
                .shared_servers_peak_rss_bytes
                .push((server.label.clone(), server.memory()?.peak_rss_bytes));
            stop(server, &mut problems).await;
        }
    }
    if wants(4) {
        step(4);
        let outcome = scenarios::sleeping::run(&launcher, &plan, native_baseline, peer_ref).await;
        record(&mut failures, 4, outcome, |r| results.sleeping = Some(r));
    }
    if wants(6) {
        step(6);
        let count = plan
            .idle_connections
            .min(usize::try_from(open_files / 3).unwrap_or(usize::MAX));
        if count < plan.idle_connections {
            warnings.push(format!(
                "scenario 6 opened {count} connections, not {}: the open-files limit is {open_files}",
                plan.idle_connections
            ));
        }
        let outcome = scenarios::connections::run(&launcher, count).await;
        record(&mut failures, 6, outcome, |r| results.connections = Some(r));
    }
    if wants(8) {
        match server::Broker::binary() {
            Ok(_) => {
                step(8);
                let outcome = scenarios::jetstream::run(&launcher, &plan).await;
                record(&mut failures, 8, outcome, |r| results.jetstream = Some(r));
            }
            Err(reason) => {
                warnings.push(format!("scenario 8 ({}) skipped: {reason:#}", SCENARIOS[7]))
            }
        }
    }

    let rows = rows(&results, &failures);
    problems.extend(
        failures
            .iter()
            .map(|(n, error)| format!("scenario {n} failed: {error:#}")),
    );
    problems.extend(unexpected_outcomes(&results));
    warnings.extend(busy_windows(&results));
    warnings.extend(
        launcher
            .warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..),
    );

    println!(
        "\ntaskhost benchmark, {mode} mode, {} ({} cores, {}, Linux {})\n",
        machine.date, machine.cores, machine.cpu_model, machine.kernel
    );
    println!("{host_index_line}\n");
    println!("{}", report::table(&rows));
    match &peer {
        Ok(peer) => println!(
            "swoole: Swoole {} on {}, 2 workers and 2 task workers (the original example's shape); \
             scenario 4 with coroutine task workers; CPU and memory of its whole process tree\n",
            peer.version,
            php_version()
        ),
        Err(reason) => println!("no swoole column: {reason}\n"),
    }
    for (title, lines) in [("warnings", &warnings), ("problems", &problems)] {
        if !lines.is_empty() {
            println!("{title}:");
            for line in lines {
                println!("- {line}");
            }
        }
    }

    let document = Document {
        mode,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: &machine,
        server_binary: binary.display().to_string(),
        server_version,
        source: git_describe(),
        native_baseline,
        host_index: match &host_index {
            Ok(index) => Ok(index),
            Err(reason) => Err(reason.as_str()),
        },
        peer: match &peer {
            Ok(peer) => Ok(peer.version.as_str()),
            Err(reason) => Err(reason.as_str()),
        },
        plan: &plan,
        background_cores: background,
        rows: &rows,
        results: &results,
        warnings: &warnings,
        problems: &problems,
    };
    let json_path = out.join("latest.json");
    let json = serde_json::to_string_pretty(&document)?;
    std::fs::write(&json_path, json + "\n")
        .with_context(|| format!("could not write {}", json_path.display()))?;
    let svg_path = out.join("latest.svg");
    std::fs::write(&svg_path, chart::render(&results, &rows, &machine, mode))
        .with_context(|| format!("could not write {}", svg_path.display()))?;
    println!("\nwrote {} and {}", json_path.display(), svg_path.display());
    Ok(problems.is_empty())
}

/// `taskhost --host-index`, the host's speed: see `host/src/calibrate.rs`.
#[derive(Debug, Serialize, serde::Deserialize)]
struct HostIndex {
    native_fib_ms: f64,
    sandbox_echo_us: f64,
    /// fib(30) through the sandbox; a server older than this figure does not print it.
    #[serde(default)]
    sandbox_fib_ms: Option<f64>,
    /// echo after 1 ms idle, to its result and then its reset; absent from older servers.
    #[serde(default)]
    sandbox_echo_idle_us: Option<f64>,
    #[serde(default)]
    sandbox_echo_idle_reset_us: Option<f64>,
}

impl HostIndex {
    /// " (after 1 ms idle: 24.1 µs to its result, 12.9 µs to reset)": what one task at a time
    /// costs on a core that has just idled, which one-at-a-time latency meets.
    fn sandbox_echo_idle(&self) -> Option<String> {
        let (answered, reset) = (self.sandbox_echo_idle_us?, self.sandbox_echo_idle_reset_us?);
        Some(format!(
            " (after 1 ms idle: {answered:.1} µs to its result, {reset:.1} µs to reset)"
        ))
    }

    /// ", sandbox fib(30) 7.80 ms (0.41x native)": the compiled code's speed on this host, which
    /// bounds scenario 3's ratio.
    fn sandbox_fib(&self) -> Option<String> {
        let sandbox = self.sandbox_fib_ms?;
        Some(format!(
            ", sandbox fib(30) {sandbox:.2} ms ({:.2}x native)",
            self.native_fib_ms / sandbox
        ))
    }
}

/// Runs `binary --host-index` on the run's tasks snapshot, with the servers' common flags.
fn host_index(binary: &Path, tasks: &Path, common_args: &[String]) -> Result<HostIndex, String> {
    let output = std::process::Command::new(binary)
        .arg("--host-index")
        .arg("--tasks")
        .arg(tasks)
        .args(common_args)
        .env("RUST_LOG", "warn")
        .output()
        .map_err(|error| format!("could not run {} --host-index: {error}", binary.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} --host-index failed: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    serde_json::from_slice(&output.stdout).map_err(|error| {
        format!(
            "{} --host-index printed no index ({error}): {}",
            binary.display(),
            String::from_utf8_lossy(&output.stdout).trim()
        )
    })
}

/// The Swoole server script, `bench/peers/swoole_server.php` in the source tree.
fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/swoole_server.php")
}

/// `PHP 8.2.x`, the first line of `php --version`.
fn php_version() -> String {
    std::process::Command::new("php")
        .arg("--version")
        .output()
        .ok()
        .and_then(|output| {
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.lines().next().map(|line| {
                line.split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        })
        .unwrap_or_else(|| "PHP (version unknown)".to_owned())
}

/// The scenario numbers `--only` names (all of them when it is empty).
fn selection(only: &[String]) -> anyhow::Result<Vec<usize>> {
    if only.is_empty() {
        return Ok((1..=SCENARIOS.len()).collect());
    }
    only.iter()
        .map(|name| {
            let name = name.trim();
            name.parse::<usize>()
                .ok()
                .filter(|n| (1..=SCENARIOS.len()).contains(n))
                .or_else(|| SCENARIOS.iter().position(|s| *s == name).map(|i| i + 1))
                .with_context(|| {
                    format!(
                        "--only {name:?}: scenarios are 1-{} or {}",
                        SCENARIOS.len(),
                        SCENARIOS.join(", ")
                    )
                })
        })
        .collect()
}

fn step(n: usize) {
    eprintln!("loadgen: scenario {n}, {}", SCENARIOS[n - 1]);
}

/// Keeps a scenario's result, or its error for the table.
fn record<T>(
    failures: &mut Vec<(usize, anyhow::Error)>,
    n: usize,
    outcome: anyhow::Result<T>,
    keep: impl FnOnce(T),
) {
    match outcome {
        Ok(result) => keep(result),
        Err(error) => {
            eprintln!("loadgen: scenario {n} failed: {error:#}");
            failures.push((n, error));
        }
    }
}

async fn stop(server: Server, problems: &mut Vec<String>) {
    if let Err(error) = server.stop().await {
        problems.push(format!("{error:#}"));
    }
}

/// The table, scenario by scenario.
fn rows(results: &Results, failures: &[(usize, anyhow::Error)]) -> Vec<Row> {
    let mut rows = Vec::new();
    for n in 1..=SCENARIOS.len() {
        if let Some((_, error)) = failures.iter().find(|(m, _)| *m == n) {
            rows.push(Row::failed(&format!("{n} {}", SCENARIOS[n - 1]), error));
            continue;
        }
        rows.extend(
            match n {
                1 => results.echo_throughput.as_ref().map(EchoThroughput::rows),
                2 => results.echo_latency.as_ref().map(EchoLatency::rows),
                3 => results.cpu.as_ref().map(Cpu::rows),
                4 => results.sleeping.as_ref().map(Sleeping::rows),
                5 => results.fairness.as_ref().map(Fairness::rows),
                6 => results.connections.as_ref().map(Connections::rows),
                7 => results.startup.as_ref().map(Startup::rows),
                _ => results.jetstream.as_ref().map(JetStream::rows),
            }
            .unwrap_or_default(),
        );
    }
    rows
}

/// Every task that ended otherwise than its scenario expected, as a line for the report.
fn unexpected_outcomes(results: &Results) -> Vec<String> {
    let mut found = Vec::new();
    let mut add = |label: &str, unexpected: &Unexpected| {
        if !unexpected.is_empty() {
            let kinds: Vec<String> = unexpected
                .iter()
                .map(|(kind, n)| format!("{n} × {kind}"))
                .collect();
            found.push(format!("{label}: unexpected {}", kinds.join(", ")));
        }
    };
    // A scenario's three servers, each measured the same way: `label` names the scenario.
    let mut by_server = |label: &str, [sandbox, native, peer]: [Option<&Unexpected>; 3]| {
        let servers = [("sandbox", sandbox), ("native", native), ("swoole", peer)];
        for (server, unexpected) in servers {
            if let Some(unexpected) = unexpected {
                add(&format!("{label}, {server}"), unexpected);
            }
        }
    };
    if let Some(r) = results.echo_throughput.as_ref().map(|e| &e.turns) {
        by_server(
            "1 echo throughput",
            [
                Some(&r.sandbox.unexpected),
                r.native.as_ref().map(|n| &n.unexpected),
                r.peer.as_ref().map(|p| &p.unexpected),
            ],
        );
    }
    if let Some(r) = &results.echo_latency {
        by_server(
            "2 echo latency",
            [
                Some(&r.sandbox.unexpected),
                r.native.as_ref().map(|n| &n.unexpected),
                r.peer.as_ref().map(|p| &p.unexpected),
            ],
        );
    }
    if let Some(r) = &results.cpu {
        by_server(
            "3 cpu",
            [
                Some(&r.turns.sandbox.unexpected),
                r.turns.native.as_ref().map(|n| &n.unexpected),
                r.turns.peer.as_ref().map(|p| &p.unexpected),
            ],
        );
        by_server(
            "3 cpu one at a time",
            [
                Some(&r.sandbox_alone.unexpected),
                r.native_alone.as_ref().map(|n| &n.unexpected),
                None,
            ],
        );
    }
    if let Some(r) = &results.sleeping {
        by_server(
            "4 sleeping",
            [
                Some(&r.sandbox.unexpected),
                r.native.as_ref().map(|n| &n.unexpected),
                r.peer.as_ref().map(|p| &p.unexpected),
            ],
        );
        by_server(
            "4 sleeping with progress",
            [Some(&r.sandbox_reporting.unexpected), None, None],
        );
    }
    if let Some(r) = &results.jetstream {
        add("8 jetstream, embedded", &r.embedded.rate.unexpected);
        add("8 jetstream, embedded probe", &r.embedded.probe.unexpected);
        add(
            "8 jetstream, through JetStream",
            &r.jetstream.rate.unexpected,
        );
        add(
            "8 jetstream, through JetStream, probe",
            &r.jetstream.probe.unexpected,
        );
    }
    if let Some(r) = &results.fairness {
        add("5 fairness probe, sandbox", &r.sandbox.probe.unexpected);
        add("5 fairness hogs, sandbox", &r.sandbox.hog_unexpected);
        if let Some(n) = &r.native {
            add("5 fairness probe, native", &n.probe.unexpected);
            add("5 fairness hogs, native", &n.hog_unexpected);
        }
    }
    found
}

/// Modules this large (a language runtime, such as the Python task `visits_py`) are left out
/// of the snapshot: no scenario runs them, and the server would compile them after start, a
/// core busy for tens of seconds during the first measurements.
const LARGE_MODULE_BYTES: u64 = 8 << 20;

/// Copies the task modules (and their sidecars) into `to`, which the servers then serve: the
/// server watches its folder, and a rebuild of `tasks/` during the run (`just build-guests`
/// elsewhere) would otherwise make it recompile modules in the middle of a measurement.
fn snapshot_tasks(from: &Path, to: &Path) -> anyhow::Result<PathBuf> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("could not clear {}", to.display()))?;
    }
    std::fs::create_dir_all(to).with_context(|| format!("could not create {}", to.display()))?;
    let entries =
        std::fs::read_dir(from).with_context(|| format!("could not read {}", from.display()))?;
    for entry in entries {
        let path = entry?.path();
        let wanted = path
            .extension()
            .is_some_and(|ext| ext == "wasm" || ext == "wat" || ext == "toml")
            && std::fs::metadata(&path).is_ok_and(|file| file.len() < LARGE_MODULE_BYTES);
        if wanted && let Some(name) = path.file_name() {
            std::fs::copy(&path, to.join(name)).with_context(|| {
                format!("could not copy {} to {}", path.display(), to.display())
            })?;
        }
    }
    Ok(to.to_path_buf())
}

/// Other processes busier than this, in cores, during a measurement get a warning.
const BUSY_CORES: f64 = 0.2;

/// Cores the machine keeps busy without us, over half a second.
async fn background_load() -> anyhow::Result<f64> {
    let (at, before) = (std::time::Instant::now(), procfs::machine_busy_time()?);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let busy = procfs::machine_busy_time()?.saturating_sub(before);
    Ok(busy.as_secs_f64() / at.elapsed().as_secs_f64())
}

/// A warning for every measurement during which other processes took cores.
fn busy_windows(results: &Results) -> Vec<String> {
    let mut windows: Vec<(&str, &CpuShare)> = Vec::new();
    if let Some(r) = &results.echo_throughput {
        windows.extend(r.cpu_shares());
    }
    if let Some(r) = &results.jetstream {
        windows.push(("8 jetstream, embedded", &r.embedded.rate.cpu));
        windows.push(("8 jetstream, through JetStream", &r.jetstream.rate.cpu));
    }
    if let Some(r) = &results.echo_latency {
        windows.push(("2 echo latency, sandbox", &r.sandbox.cpu));
        r.native
            .iter()
            .for_each(|n| windows.push(("2 echo latency, native", &n.cpu)));
    }
    if let Some(r) = &results.cpu {
        windows.extend(r.cpu_shares());
    }
    if let Some(r) = &results.sleeping {
        windows.push(("4 sleeping, sandbox", &r.sandbox.cpu));
        windows.push((
            "4 sleeping with progress, sandbox",
            &r.sandbox_reporting.cpu,
        ));
        r.native
            .iter()
            .for_each(|n| windows.push(("4 sleeping, native", &n.cpu)));
    }
    if let Some(r) = &results.fairness {
        windows.push(("5 fairness, sandbox", &r.sandbox.cpu));
        r.native
            .iter()
            .for_each(|n| windows.push(("5 fairness, native", &n.cpu)));
    }
    let mut warnings = Vec::new();
    for (label, cpu) in windows {
        if cpu.other_cores > BUSY_CORES {
            warnings.push(format!(
                "{label}: other processes took {:.2} cores during the measurement",
                cpu.other_cores
            ));
        }
        if cpu.stolen_cores > BUSY_CORES {
            warnings.push(format!(
                "{label}: the host took {:.2} cores (steal) during the measurement",
                cpu.stolen_cores
            ));
        }
    }
    warnings
}

/// The checkout's commit, `-dirty` when it has changes; `None` outside a git checkout.
fn git_describe() -> Option<String> {
    let output = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|output| output.status.success())?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// What `binary flag` prints (for `--help` and `--version`).
fn command_output(binary: &Path, flag: &str) -> anyhow::Result<String> {
    let output = std::process::Command::new(binary)
        .arg(flag)
        .output()
        .with_context(|| {
            format!(
                "could not run {} {flag}: build it with `cargo build --release -p taskhost`, or pass --server PATH",
                binary.display()
            )
        })?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
