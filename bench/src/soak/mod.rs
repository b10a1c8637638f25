//! `loadgen soak --minutes M` (`just soak M`): mixed load against the release binary for a
//! long time, watching the server for leaks.
//!
//! The server serves a copy of the tasks folder, which the reloads rewrite. [`mix`] runs the
//! load: echo (a timed probe and bursts), `slow`, `broadcast`, the failure tasks, clients that
//! leave mid-task, a client that stops reading, and module reloads. Every [`SAMPLE_EVERY`] the
//! soak samples the server's resident memory, open files (`/proc/PID/fd`), queue depth and
//! running tasks (`/metrics`) and the probe's echo p99, and prints a line. At the end,
//! [`trend`] judges each figure; the soak fails (exit status 1) when one rises, when a task
//! ended otherwise than expected, when a round failed, or when the server did not stop
//! cleanly; it reports, without failing, connections whose first message was not their
//! `hello` (docs/RELIABILITY.md). The samples and verdicts go to `soak/latest.json` in the
//! target directory.

mod contention;
mod mix;
mod trend;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::procfs::{self, Machine};
use crate::server::{Launcher, Mode, Server};
use crate::stats::Percentiles;
use contention::{Contention, Taken};
use mix::Shared;
use trend::{Tolerance, Verdict};

/// Between two samples.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// How long the loops may take to finish their last round after the end.
const WIND_DOWN: Duration = Duration::from_secs(120);

/// The server's flags when the command line gives none. A pool of 64 task workers: every slot
/// of the sandbox pool keeps up to a few MiB resident once a task has used it (the memory,
/// table and stack it keeps mapped for the next task), so resident memory climbs until every
/// slot has served a task. With 64 slots that is over within the warm-up; with the default
/// 1,024 it takes longer than a short soak and would read as a leak.
const DEFAULT_SERVER_ARGS: [&str; 2] = ["--task-workers", "64"];

/// The server's bound on kept results (`--result-bytes`) in a soak. Kept results fill up to
/// their bound under load, which a short soak would read as a leak at the default 64 MiB
/// (a few minutes of echo); 4 MiB fills within the warm-up, and eviction then runs all
/// the time, which is what a soak should exercise.
const SOAK_RESULT_BYTES: &str = "4194304";

/// The tasks the load runs; the tasks folder must serve them all.
const NEEDED: [&str; 10] = [
    "echo",
    "slow",
    "broadcast",
    "spin",
    "oom",
    "panic",
    "exit",
    "recurse",
    "flood",
    "upper",
];

/// A figure the soak judges: its name, unit, tolerance (see [`trend`]) and where a sample has it.
struct Figure {
    name: &'static str,
    unit: &'static str,
    tolerance: Tolerance,
    /// A latency, which follows the CPU the server gets: not judged when the machine left the
    /// run's last third clearly fewer cores than its first ([`contention`]).
    follows_cpu: bool,
    value: fn(&Sample) -> f64,
}

const FIGURES: [Figure; 4] = [
    Figure {
        name: "resident memory",
        unit: "MiB",
        // Allocators and the sandbox pool settle by steps; a leak of a few KiB a task is more.
        tolerance: Tolerance {
            relative: 0.10,
            absolute: 16.0,
        },
        follows_cpu: false,
        value: |s| s.rss_mib,
    },
    Figure {
        name: "open files",
        unit: "",
        // One per open connection: the loops open and close about a dozen at any moment.
        tolerance: Tolerance {
            relative: 0.0,
            absolute: 32.0,
        },
        follows_cpu: false,
        value: |s| s.open_fds as f64,
    },
    Figure {
        name: "queue depth",
        unit: "tasks",
        tolerance: Tolerance {
            relative: 0.0,
            absolute: 16.0,
        },
        follows_cpu: false,
        value: |s| s.queue_depth,
    },
    Figure {
        name: "echo p99",
        unit: "ms",
        // Two cores shared by the server, the load and the machine: p99 moves by half at rest.
        tolerance: Tolerance {
            relative: 0.5,
            absolute: 2.0,
        },
        follows_cpu: true,
        value: |s| s.echo_p99_ms,
    },
];

/// One sample of the server.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Since the load started.
    pub at_s: f64,
    pub rss_mib: f64,
    pub open_fds: usize,
    pub queue_depth: f64,
    pub running_tasks: f64,
    pub connections: f64,
    /// The echo probe's submit-to-`finished` p99 over the last interval (NaN with no sample).
    pub echo_p99_ms: f64,
    pub echo_probes: usize,
    /// Tasks that ended as expected so far.
    pub tasks_ended: u64,
    /// Cores the machine took from the server and the load over the interval.
    #[serde(flatten)]
    pub taken: Taken,
}

/// `soak/latest.json`.
#[derive(Serialize)]
struct Document<'a> {
    minutes: f64,
    machine: &'a Machine,
    server_args: &'a [String],
    server_binary: String,
    server_version: String,
    warmup_s: f64,
    samples: &'a [Sample],
    verdicts: &'a [Verdict],
    /// Figures left unjudged, and why (a latency on a machine that took cores away).
    not_judged: &'a [String],
    tasks_ended: u64,
    unexpected: &'a std::collections::BTreeMap<String, u64>,
    disconnects: u64,
    /// Connections whose first message was pushed to all (`broadcast`, `tasks_changed`)
    /// rather than their `hello`: reported, not a failure (docs/RELIABILITY.md).
    pushed_before_hello: u64,
    reloads: u64,
    slow_reader_rounds: u64,
    problems: &'a [String],
}

/// Runs the soak for `minutes`; `Ok(false)` when it found a problem.
pub async fn run(
    minutes: f64,
    binary: &Path,
    tasks: &Path,
    out: &Path,
    server_args: &[String],
) -> anyhow::Result<bool> {
    let length = Duration::try_from_secs_f64(minutes * 60.0)
        .ok()
        .filter(|length| *length >= trend::MIN_WARMUP + SAMPLE_EVERY * trend::MIN_SAMPLES as u32)
        .with_context(|| {
            format!("--minutes {minutes}: a soak needs at least a minute to judge trends")
        })?;
    for task in NEEDED {
        let found = ["wasm", "wat"]
            .iter()
            .any(|ext| tasks.join(format!("{task}.{ext}")).exists());
        if !found {
            bail!(
                "{} has no task {task}: run `just build-guests` first, or pass --tasks DIR",
                tasks.display()
            );
        }
    }
    let log_dir = out.join("logs");
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("could not create {}", log_dir.display()))?;
    procfs::raise_open_files_limit()?;
    let served = crate::snapshot_tasks(tasks, &out.join("tasks"))?;
    let help = crate::command_output(binary, "--help")?;
    let server_version = crate::command_output(binary, "--version")?
        .trim()
        .to_owned();
    // A compile cache of the soak's own: each reload of echo compiles a new version.
    let cache_dir = help
        .contains("--cache-dir")
        .then(|| out.join("compile-cache"));
    let launcher = Launcher {
        binary: binary.to_path_buf(),
        tasks: served.clone(),
        log_dir: log_dir.clone(),
        common_args: cache_dir
            .iter()
            .flat_map(|dir| ["--cache-dir".to_owned(), dir.display().to_string()])
            .chain(
                help.contains("--result-bytes")
                    .then(|| ["--result-bytes".to_owned(), SOAK_RESULT_BYTES.to_owned()])
                    .into_iter()
                    .flatten(),
            )
            .collect(),
        cache_dir,
        warnings: Arc::default(),
    };
    let machine = Machine::describe();
    let server_args: Vec<String> = if server_args.is_empty() {
        DEFAULT_SERVER_ARGS.map(str::to_owned).to_vec()
    } else {
        server_args.to_vec()
    };
    let server = launcher.start("soak", Mode::Sandbox, &server_args).await?;
    eprintln!(
        "soak: {minutes} min against {server_version} ({} {}) on {}, pid {}, {} cores; log in {}",
        binary.display(),
        server_args.join(" "),
        server.addr,
        server.pid,
        machine.cores,
        log_dir.display()
    );

    let begin = Instant::now();
    let shared = Arc::new(Shared::new(server.addr, begin + length, served)?);
    let loops = mix::spawn_all(&shared);
    let mut samples = Vec::new();
    let mut contention = Contention::start(machine.cores, server.cpu_time().unwrap_or_default());
    let mut tick = begin;
    while tick + SAMPLE_EVERY <= begin + length {
        tick += SAMPLE_EVERY;
        tokio::time::sleep_until(tick.into()).await;
        let sample = sample(&server, &shared, &mut contention, begin).await?;
        println!("{}", line(&sample, &shared));
        samples.push(sample);
    }

    let mut problems = Vec::new();
    let wind_down = Instant::now() + WIND_DOWN;
    for (name, handle) in loops {
        match tokio::time::timeout_at(wind_down.into(), handle).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => problems.push(format!("the {name} loop panicked: {error}")),
            Err(_) => problems.push(format!(
                "the {name} loop was still in a round {WIND_DOWN:?} after the end"
            )),
        }
    }
    let warmup = trend::warmup(length);
    let judged: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at_s > warmup.as_secs_f64())
        .collect();
    let cores_left: Vec<f64> = judged.iter().map(|s| contention.left(s.taken)).collect();
    let squeeze = trend::third_medians(&cores_left)
        .filter(|&(first, last)| contention::squeezed(first, last));
    let mut verdicts = Vec::new();
    let mut not_judged = Vec::new();
    for figure in &FIGURES {
        if let (true, Some((first, last))) = (figure.follows_cpu, squeeze) {
            not_judged.push(format!(
                "{}: not judged, the machine left the last third of the run {last:.2} cores \
                 against {first:.2} in the first (the hypervisor's steal and other processes, \
                 per sample above); a latency cannot tell that from the server slowing down",
                figure.name
            ));
            continue;
        }
        let values: Vec<f64> = judged.iter().map(|s| (figure.value)(s)).collect();
        match trend::judge(figure.name, figure.unit, &values, figure.tolerance) {
            Some(verdict) => verdicts.push(verdict),
            None => problems.push(format!(
                "too few samples after the warm-up to judge {}",
                figure.name
            )),
        }
    }

    let (kept, problem_count) = {
        let guard = shared.problems.lock().unwrap_or_else(|e| e.into_inner());
        guard.clone()
    };
    if problem_count > kept.len() as u64 {
        problems.push(format!(
            "{} more failed rounds than listed",
            problem_count - kept.len() as u64
        ));
    }
    problems.splice(0..0, kept);
    let unexpected = shared
        .unexpected
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for (kind, n) in &unexpected {
        problems.push(format!(
            "{n} × {kind}: tasks that ended otherwise than expected"
        ));
    }
    if let Err(error) = server.stop().await {
        problems.push(format!("{error:#}"));
    }

    println!(
        "\nsoak: {minutes} min, {} tasks ended as expected, {} clients left mid-task, {} reloads, \
         {} slow-reader rounds; warm-up {:.0} s left out",
        shared.ended.load(Ordering::Relaxed),
        shared.disconnects.load(Ordering::Relaxed),
        shared.reloads.load(Ordering::Relaxed),
        shared.slow_reads.load(Ordering::Relaxed),
        warmup.as_secs_f64()
    );
    for verdict in &verdicts {
        println!(
            "  {:<16} first third {:>8.2} {unit:<5} last third {:>8.2} {unit:<5} limit {:>8.2}  {}",
            verdict.figure,
            verdict.first_third_median,
            verdict.last_third_median,
            verdict.limit,
            if verdict.rising { "RISING" } else { "flat" },
            unit = verdict.unit,
        );
    }
    for reason in &not_judged {
        println!("  {reason}");
    }
    for verdict in verdicts.iter().filter(|v| v.rising) {
        problems.push(format!("{} trends upward", verdict.figure));
    }
    let early = shared.pushed_before_hello.load(Ordering::Relaxed);
    if early > 0 {
        println!(
            "warning: {early} connections got a broadcast or tasks_changed before their hello \
             (the server counts a connection as open before it queues the hello)"
        );
    }
    for problem in &problems {
        println!("problem: {problem}");
    }

    let document = Document {
        minutes,
        machine: &machine,
        server_args: &server_args,
        server_binary: binary.display().to_string(),
        server_version,
        warmup_s: warmup.as_secs_f64(),
        samples: &samples,
        verdicts: &verdicts,
        not_judged: &not_judged,
        tasks_ended: shared.ended.load(Ordering::Relaxed),
        unexpected: &unexpected,
        disconnects: shared.disconnects.load(Ordering::Relaxed),
        pushed_before_hello: shared.pushed_before_hello.load(Ordering::Relaxed),
        reloads: shared.reloads.load(Ordering::Relaxed),
        slow_reader_rounds: shared.slow_reads.load(Ordering::Relaxed),
        problems: &problems,
    };
    let json_path = out.join("latest.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&document)? + "\n")
        .with_context(|| format!("could not write {}", json_path.display()))?;
    println!(
        "soak: {}; wrote {}",
        if problems.is_empty() {
            "passed"
        } else {
            "FAILED"
        },
        json_path.display()
    );
    Ok(problems.is_empty())
}

/// Reads the server's figures now, and takes the probe's samples and the machine's contention
/// since the last reading.
async fn sample(
    server: &Server,
    shared: &Shared,
    contention: &mut Contention,
    begin: Instant,
) -> anyhow::Result<Sample> {
    let taken = contention.since_last(server.cpu_time().unwrap_or_default());
    let memory = server.memory()?;
    let open_fds = server.open_fds()?;
    let metrics = server.metrics().await.unwrap_or_default();
    let gauge = |name: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let probes: Vec<Duration> =
        std::mem::take(&mut *shared.probe.lock().unwrap_or_else(|e| e.into_inner()));
    let p99 = if probes.is_empty() {
        f64::NAN
    } else {
        Percentiles::of(probes.iter().copied()).p99_us / 1e3
    };
    Ok(Sample {
        at_s: begin.elapsed().as_secs_f64(),
        rss_mib: memory.rss_bytes as f64 / f64::from(1 << 20),
        open_fds,
        queue_depth: gauge("taskhost_queue_depth"),
        running_tasks: gauge("taskhost_running_tasks"),
        connections: gauge("taskhost_connections"),
        echo_p99_ms: p99,
        echo_probes: probes.len(),
        tasks_ended: shared.ended.load(Ordering::Relaxed),
        taken,
    })
}

/// One printed line per sample.
fn line(sample: &Sample, shared: &Shared) -> String {
    format!(
        "soak {:>6.0} s  rss {:>7.1} MiB  fds {:>4}  queue {:>3}  running {:>4}  connections {:>3}  \
         echo p99 {:>6.2} ms (of {:>5})  tasks {:>9}  unexpected {}  failed rounds {}  \
         cores taken: stolen {:.2} other {:.2}",
        sample.at_s,
        sample.rss_mib,
        sample.open_fds,
        sample.queue_depth,
        sample.running_tasks,
        sample.connections,
        sample.echo_p99_ms,
        sample.echo_probes,
        sample.tasks_ended,
        shared.unexpected_count(),
        shared.problem_count(),
        sample.taken.stolen_cores,
        sample.taken.other_cores,
    )
}

/// Where the soak writes by default: `soak/` in the target directory `loadgen` is in.
pub fn default_out(exe_dir: &Path) -> PathBuf {
    exe_dir.parent().unwrap_or(exe_dir).join("soak")
}
