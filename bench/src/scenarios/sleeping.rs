//! Scenario 4, sleeping: 10,000 `slow` tasks of one second, all in flight at once over 100
//! connections: the wall time until the last one finished, and the server's peak RSS.
//!
//! A sleeping sandbox holds a pool slot (its instance, memory and stack) but no thread; ideal is
//! one second plus the time to instantiate 10,000 instances on two cores. The server runs with
//! `--task-workers` equal to the task count, so none waits in the queue.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{CpuMeter, CpuShare, Plan, Unexpected};
use crate::client::{Client, Expect, Load};
use crate::report::{Row, Target, Unit};
use crate::server::{Launcher, Mode, Server, SwoolePeer};
use crate::stats::Percentiles;

pub const NAME: &str = "4 sleeping";
const SLEEP_SECONDS: f64 = 1.0;
/// Progress reports per sleeper in the second sandbox burst: `slow`'s default.
const DEFAULT_REPORTS: u32 = 10;
/// The whole scenario, per mode, is bounded by this.
const DEADLINE: Duration = Duration::from_secs(60);
/// When the server's PSS is read, after the first submit: every sleeper has started by then
/// (the latest start in these runs came at 0.6 s) and none has woken, so it is the burst's
/// peak. PSS has no high-water mark, and one read of a server holding 10,000 sandboxes takes
/// the kernel 50-110 ms (a walk of some 60,000 mappings): read every 200 ms during the burst,
/// as it once was, it took a third of a core from the two and held up the load generator's
/// thread meanwhile, against 5 ms a read of the native server (docs/PERFORMANCE.md).
const PSS_AT: Duration = Duration::from_millis(800);

#[derive(Debug, Clone, Serialize)]
pub struct Sleepers {
    pub tasks: usize,
    pub connections: usize,
    /// The `--task-workers` the server ran with (lower than `tasks` if the machine refused).
    pub task_workers: usize,
    pub finished: usize,
    /// First submit to the last `finished`.
    pub wall_s: f64,
    /// Submit to `accepted`, over all tasks: how fast the burst is taken in.
    pub accepted: Percentiles,
    /// Submit to `started`, over the tasks that reported it (Swoole sends none): when each
    /// got its worker. A task that finds one free is told with its `accepted`, before its
    /// sandbox starts, so this no longer splits the wall time into the sandboxes' start and
    /// their wake-up, as it did while the server sent every `started` from the task's thread.
    pub started: Percentiles,
    /// Submit to `finished`, over all tasks.
    pub finished_latency: Percentiles,
    /// From ready (`/healthz`) to the end of the server's pool warming (`--warm-slots`); the
    /// burst starts after it.
    pub warming_s: f64,
    /// Resident memory after start-up (the pool reserved, nothing run) and at its peak.
    pub idle_rss_bytes: u64,
    pub peak_rss_bytes: u64,
    /// The proportional set size with every task asleep (read once, [`PSS_AT`] into the burst),
    /// or after the burst if larger: the physical memory, where RSS counts a page once per
    /// mapping of it.
    pub peak_pss_bytes: u64,
    /// Server CPU per task, from the first submit to the last `finished`.
    pub server_cpu_us_per_task: f64,
    /// Where the cores went meanwhile.
    pub cpu: CpuShare,
    /// `progress` messages per task that reached the client: the bundled `slow` and the native
    /// one both report ten, which the server's rate limit (one per 100 ms a task) thins out.
    pub progress_per_task: f64,
    pub unexpected: Unexpected,
    /// What the figures need said beside them: a pool smaller than asked, a compile cache
    /// that missed.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sleeping {
    /// `slow` asked for no progress (`"reports": 0`): one sleep a task, the work Swoole's
    /// `slow` does, so the three columns compare the same job.
    pub sandbox: Sleepers,
    pub native: Option<Sleepers>,
    /// The sandbox again with `slow`'s default of ten progress reports a task (ten wake-ups,
    /// ten `progress` messages), which the bundled page shows.
    pub sandbox_reporting: Sleepers,
    /// Swoole with coroutine task workers (`TASK_COROUTINE=1`: its `slow` sleeps with
    /// `Coroutine::sleep`, so a task worker holds many sleepers; with plain task workers two
    /// workers would sleep through 10,000 seconds one task at a time).
    pub peer: Option<Sleepers>,
}

pub async fn run(
    launcher: &Launcher,
    plan: &Plan,
    with_native: bool,
    peer: Option<&SwoolePeer>,
) -> anyhow::Result<Sleeping> {
    let sandbox = measure(launcher, Mode::Sandbox, plan, 0).await?;
    let native = if with_native {
        Some(measure(launcher, Mode::Native, plan, 0).await?)
    } else {
        None
    };
    let sandbox_reporting = measure(launcher, Mode::Sandbox, plan, DEFAULT_REPORTS).await?;
    let peer = match peer {
        Some(peer) => {
            let server = peer
                .start(launcher, "sleeping-swoole", &[("TASK_COROUTINE", "1")])
                .await?;
            Some(burst(server, 0, Vec::new(), plan, 0).await?)
        }
        None => None,
    };
    Ok(Sleeping {
        sandbox,
        native,
        sandbox_reporting,
        peer,
    })
}

/// Starts a server with `--task-workers` = the task count, or the most the machine allows.
async fn start(
    launcher: &Launcher,
    mode: Mode,
    wanted: usize,
) -> anyhow::Result<(Server, usize, Option<String>)> {
    match launch(launcher, mode, wanted).await {
        Ok(server) => Ok((server, wanted, None)),
        Err(error) => {
            // The server names the most it accepts: "use at most --task-workers N".
            let text = format!("{error:#}");
            let Some(fits) = text
                .split("at most --task-workers ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|digits| digits.parse::<usize>().ok())
            else {
                return Err(error);
            };
            let server = launch(launcher, mode, fits).await?;
            let note = format!(
                "the server refused --task-workers {wanted} (vm.max_map_count); ran with {fits}, so {} tasks queued",
                wanted.saturating_sub(fits)
            );
            Ok((server, fits, Some(note)))
        }
    }
}

/// Starts this scenario's server with `--task-workers workers`.
async fn launch(launcher: &Launcher, mode: Mode, workers: usize) -> anyhow::Result<Server> {
    let label = format!("sleeping-{}", mode.name());
    let args = ["--task-workers".to_owned(), workers.to_string()];
    launcher.start(&label, mode, &args).await
}

/// `reports`: the progress reports each `slow` is asked for.
async fn measure(
    launcher: &Launcher,
    mode: Mode,
    plan: &Plan,
    reports: u32,
) -> anyhow::Result<Sleepers> {
    // The pool's size is one of the engine's settings, which compiled code depends on, and no
    // other scenario's server runs with this one's: its first start would compile every module,
    // and what compiling leaves resident stays through the burst (peak RSS 618-624 MiB against
    // 594-601 from the cache; docs/PERFORMANCE.md). A server restarted with the same settings
    // finds its code in the compile cache, as every other scenario's server does; so does this
    // one: started once and stopped, then started for the measurement. Should the cache miss
    // all the same, the note says so. The first start finds the pool size the machine allows;
    // the measured one starts with it.
    let (server, task_workers, capped) = start(launcher, mode, plan.sleepers).await?;
    server.stop().await?;
    let server = launch(launcher, mode, task_workers).await?;
    let missed = server
        .compiled_modules()
        .await
        .filter(|&count| count > 0)
        .map(|compiled| {
            format!(
                "the measured server compiled {compiled} modules (the compile cache missed): its \
                 memory includes what compiling leaves"
            )
        });
    let notes = capped.into_iter().chain(missed).collect();
    burst(server, task_workers, notes, plan, reports).await
}

/// The burst itself, on a started server (which it stops).
async fn burst(
    server: Server,
    task_workers: usize,
    notes: Vec<String>,
    plan: &Plan,
    reports: u32,
) -> anyhow::Result<Sleepers> {
    let warming_s = (server.warm_after - server.ready_after).as_secs_f64();
    let idle_rss_bytes = server.memory()?.rss_bytes;
    let per_connection = plan.sleepers / plan.sleeper_connections;
    let clients = Client::connect_many(server.addr, plan.sleeper_connections, &["slow"]).await?;
    let before = CpuMeter::read(&server)?;
    let begin = Instant::now();
    let load = Load {
        task: "slow".to_owned(),
        input: format!(r#"{{"seconds":{SLEEP_SECONDS},"reports":{reports}}}"#),
        limits: None,
        in_flight: per_connection,
        max_tasks: per_connection as u64,
        stop: begin + DEADLINE,
        cancel_at_stop: false,
        expect: Expect::Finished,
        deadline: begin + DEADLINE,
    };
    let (tally, peak_pss_bytes) = peak_pss_during(
        &server,
        begin + PSS_AT,
        crate::client::run_all(clients, &load),
    )
    .await;
    let tally = tally?;
    let mut notes = notes;
    let late = not_asleep_at(&tally.samples, begin + PSS_AT);
    if late > 0 {
        notes.push(format!(
            "{late} tasks had not started (or had ended) when the PSS was read, {:.1} s into \
             the burst: the peak PSS leaves them out",
            PSS_AT.as_secs_f64()
        ));
    }
    let cpu = CpuMeter::read(&server)?.since(&before);
    let last = tally
        .samples
        .iter()
        .map(|sample| sample.ended)
        .max()
        .unwrap_or(begin);
    let peak_rss_bytes = server.memory()?.peak_rss_bytes;
    server.stop().await?;
    Ok(Sleepers {
        tasks: per_connection * plan.sleeper_connections,
        connections: plan.sleeper_connections,
        task_workers,
        warming_s,
        finished: tally.samples.len(),
        wall_s: (last - begin).as_secs_f64(),
        accepted: Percentiles::of(tally.samples.iter().map(|sample| sample.to_accepted())),
        started: Percentiles::of(
            tally
                .samples
                .iter()
                .filter_map(|sample| sample.to_started()),
        ),
        finished_latency: Percentiles::of(tally.samples.iter().map(|sample| sample.to_end())),
        idle_rss_bytes,
        peak_rss_bytes,
        peak_pss_bytes,
        server_cpu_us_per_task: cpu.server_us
            / (per_connection * plan.sleeper_connections).max(1) as f64,
        cpu,
        progress_per_task: tally.progress as f64 / tally.samples.len().max(1) as f64,
        unexpected: tally.unexpected,
        notes,
    })
}

/// The tasks not asleep at `at`: started (or, from a server that sends no `started`,
/// accepted) after it, or ended before it.
fn not_asleep_at(samples: &[crate::client::Sample], at: Instant) -> usize {
    samples
        .iter()
        .filter(|sample| sample.started.unwrap_or(sample.accepted) > at || sample.ended < at)
        .count()
}

/// Runs `work`, reading the server's PSS once at `read_at` (on a thread of its own) and once
/// more when `work` is done; returns its output and the larger read (0 if none could be made).
async fn peak_pss_during<T>(
    server: &Server,
    read_at: Instant,
    work: impl std::future::Future<Output = T>,
) -> (T, u64) {
    let read = server.pss_reader();
    let asleep = async move {
        tokio::time::sleep_until(read_at.into()).await;
        tokio::task::spawn_blocking(move || read().unwrap_or(0))
            .await
            .unwrap_or(0)
    };
    let (done, asleep) = tokio::join!(work, asleep);
    (done, asleep.max(server.pss_bytes().unwrap_or(0)))
}

impl Sleeping {
    pub fn rows(&self) -> Vec<Row> {
        let sandbox = &self.sandbox;
        let reporting = &self.sandbox_reporting;
        let native = self.native.as_ref();
        let peer = self.peer.as_ref();
        let count = Unit::Count.format(sandbox.tasks as f64);
        let mut wall = Row::new(
            NAME,
            format!("wall time, {count} × 1 s, no progress"),
            Unit::Seconds,
            sandbox.wall_s,
        )
        .baseline("native", native.map(|n| n.wall_s))
        .peer(super::PEER, peer.map(|p| p.wall_s))
        .target(Target::AtMost { value: 1.2 });
        let mut notes = vec![format!(
            "each `slow` asked for no progress reports (`\"reports\": 0`): one sleep, as \
             Swoole's `slow` does; {} of {} finished; progress messages per task: sandbox \
             {:.1}, native {}; cores used by server / loadgen / other / stolen: sandbox {}, native {}; \
             the sandbox server warmed its pool in {:.2} s before the burst",
            sandbox.finished,
            sandbox.tasks,
            sandbox.progress_per_task,
            native.map_or("n/a".to_owned(), |n| format!("{:.1}", n.progress_per_task)),
            super::cores_text(&sandbox.cpu),
            native.map_or("n/a".to_owned(), |n| super::cores_text(&n.cpu)),
            sandbox.warming_s,
        )];
        notes.extend(sandbox.notes.iter().cloned());
        wall = wall.note(notes.join("; "));
        vec![
            wall,
            Row::new(NAME, "peak RSS", Unit::Bytes, sandbox.peak_rss_bytes as f64)
                .baseline("native", native.map(|n| n.peak_rss_bytes as f64))
                .peer(super::PEER, peer.map(|p| p.peak_rss_bytes as f64))
                .target(Target::AtMost {
                    value: 600.0 * f64::from(1 << 20),
                })
                .note(
                    "RSS counts a shared page once per mapping: every instance maps the module's \
                     data image, one copy in RAM; the peak PSS below counts it once",
                ),
            Row::new(NAME, "peak PSS", Unit::Bytes, sandbox.peak_pss_bytes as f64)
                .baseline("native", native.map(|n| n.peak_pss_bytes as f64))
                .peer(super::PEER, peer.map(|p| p.peak_pss_bytes as f64))
                .note(
                    "read once, 0.8 s into the burst, with every task asleep: a read walks every \
                     mapping of the server, 50-110 ms with 10,000 sandboxes, so it is not \
                     repeated while they start or wake",
                ),
            Row::new(
                NAME,
                "submit to accepted, p99",
                Unit::Micros,
                sandbox.accepted.p99_us,
            )
            .baseline("native", native.map(|n| n.accepted.p99_us))
            .peer(super::PEER, peer.map(|p| p.accepted.p99_us)),
            Row::new(
                NAME,
                "submit to started, p99",
                Unit::Micros,
                sandbox.started.p99_us,
            )
            .baseline("native", native.map(|n| n.started.p99_us))
            .note(
                "when each task got its worker: one that finds a worker free is told right \
                 behind its `accepted`, so with the pool as large as the burst this is about \
                 `accepted`; a larger figure is time in the queue",
            ),
            Row::new(
                NAME,
                "server CPU per task",
                Unit::Micros,
                sandbox.server_cpu_us_per_task,
            )
            .baseline("native", native.map(|n| n.server_cpu_us_per_task))
            .peer(super::PEER, peer.map(|p| p.server_cpu_us_per_task)),
            Row::new(
                NAME,
                "with progress: wall time",
                Unit::Seconds,
                reporting.wall_s,
            )
            .note(format!(
                "the sandbox again, each `slow` with its default ten progress reports (ten \
                 wake-ups, the page's progress bar): {} of {} finished, {:.1} progress messages \
                 per task reached the client",
                reporting.finished, reporting.tasks, reporting.progress_per_task
            )),
            Row::new(
                NAME,
                "with progress: peak RSS",
                Unit::Bytes,
                reporting.peak_rss_bytes as f64,
            ),
            Row::new(
                NAME,
                "with progress: server CPU per task",
                Unit::Micros,
                reporting.server_cpu_us_per_task,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::client::Sample;

    #[test]
    fn a_task_is_asleep_between_its_start_and_its_end() {
        let begin = Instant::now();
        let at = |ms| begin + Duration::from_millis(ms);
        let sample = |accepted, started: Option<u64>, ended| Sample {
            sent: begin,
            accepted: at(accepted),
            started: started.map(at),
            ended: at(ended),
        };
        let samples = [
            sample(10, Some(100), 1_100), // asleep at 800 ms
            sample(10, Some(900), 1_900), // started after
            sample(10, None, 1_000),      // no `started`: accepted before, so asleep
            sample(850, None, 1_850),     // accepted after
            sample(10, Some(20), 700),    // ended before
        ];
        assert_eq!(super::not_asleep_at(&samples, at(800)), 3);
    }
}
