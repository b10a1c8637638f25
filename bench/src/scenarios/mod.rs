//! The scenarios (seven from issue 5, jetstream from issue 12), one file each, and what they share: the [`Plan`] (how long
//! and how many, quick or full) and the closed-loop rate measurement behind the two
//! throughput scenarios.
//!
//! Each scenario measures the sandbox and its baseline in the same run and returns a typed
//! result; [`crate::report`] turns results into table rows and [`crate::chart`] into bars.

pub mod connections;
pub mod cpu;
pub mod echo_latency;
pub mod echo_throughput;
pub mod fairness;
pub mod jetstream;
pub mod sleeping;
pub mod startup;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::time::sleep_until;

use crate::client::{Client, Expect, Load, Tally, run_all};
use crate::procfs;
use crate::server::Server;
use crate::stats::Percentiles;

/// How long each scenario runs and how much it submits.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub quick: bool,
    /// Load before a throughput window opens, so pools, caches and the CPU's clocks settle.
    pub warmup: Duration,
    /// How long throughput is counted.
    pub window: Duration,
    /// How long the latency probe runs (scenarios 2 and 5).
    pub probe: Duration,
    /// Wall-clock limit of each `spin` hog; hogs are resubmitted as they end.
    pub hog_timeout_ms: u64,
    /// CPU hogs in flight during the fairness probe (two per core on two cores).
    pub hogs: usize,
    /// Sleeping tasks, and the connections they are spread over.
    pub sleepers: usize,
    pub sleeper_connections: usize,
    /// Idle connections whose memory is measured.
    pub idle_connections: usize,
    /// Server starts timed in the start-up scenario (and in its baseline).
    pub starts: usize,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                warmup: Duration::from_millis(500),
                window: Duration::from_secs(2),
                probe: Duration::from_secs(2),
                hog_timeout_ms: 1_000,
                hogs: 4,
                sleepers: 2_000,
                sleeper_connections: 20,
                idle_connections: 200,
                starts: 3,
            }
        } else {
            Plan {
                quick,
                warmup: Duration::from_secs(1),
                window: Duration::from_secs(5),
                probe: Duration::from_secs(5),
                hog_timeout_ms: 2_000,
                hogs: 4,
                sleepers: 10_000,
                sleeper_connections: 100,
                idle_connections: 4_000,
                starts: 6,
            }
        }
    }
}

/// The peer's label in the table: Swoole 6 with task workers (`peers/swoole_server.php`).
pub const PEER: &str = "swoole";

/// How long tasks still in flight when a window closes may take to end.
const DRAIN: Duration = Duration::from_secs(30);

/// The task ids, refs and outcomes a scenario did not expect, by kind (empty when all is well).
pub type Unexpected = BTreeMap<String, u64>;

/// A reading of the CPU clocks: the server's, this load generator's and the whole machine's.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    at: Instant,
    server: Duration,
    loadgen: Duration,
    machine: procfs::MachineTimes,
}

/// Where the cores went between two readings, in cores (2.0 = both cores of a two-core
/// machine, the whole time).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuShare {
    pub server_cores: f64,
    /// The load generator shares the cores with the server.
    pub loadgen_cores: f64,
    /// Every other process: anything well above zero means the figures are skewed.
    pub other_cores: f64,
    /// Taken by the hypervisor (`steal`): a virtual machine's cores shared with its host's
    /// other guests, or woken late. It moves with the host from minute to minute, and every
    /// figure with it.
    pub stolen_cores: f64,
    /// Server CPU over the interval, in microseconds.
    #[serde(skip)]
    pub server_us: f64,
    #[serde(skip)]
    pub loadgen_us: f64,
}

impl CpuMeter {
    pub fn read(server: &Server) -> anyhow::Result<CpuMeter> {
        Ok(CpuMeter {
            at: Instant::now(),
            server: server.cpu_time()?,
            loadgen: procfs::cpu_time("self")?,
            machine: procfs::machine_times()?,
        })
    }

    /// The share of each since `earlier`.
    pub fn since(&self, earlier: &CpuMeter) -> CpuShare {
        let wall = (self.at - earlier.at).as_secs_f64().max(1e-9);
        let server = self.server.saturating_sub(earlier.server).as_secs_f64();
        let loadgen = self.loadgen.saturating_sub(earlier.loadgen).as_secs_f64();
        let busy = self
            .machine
            .busy
            .saturating_sub(earlier.machine.busy)
            .as_secs_f64();
        let stolen = self
            .machine
            .stolen
            .saturating_sub(earlier.machine.stolen)
            .as_secs_f64();
        CpuShare {
            server_cores: server / wall,
            loadgen_cores: loadgen / wall,
            other_cores: ((busy - server - loadgen) / wall).max(0.0),
            stolen_cores: stolen / wall,
            server_us: server * 1e6,
            loadgen_us: loadgen * 1e6,
        }
    }
}

/// Throughput of a closed loop over one window.
#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    pub connections: usize,
    pub in_flight_per_connection: usize,
    /// Tasks that ended (as expected) inside the window.
    pub tasks: usize,
    pub window_s: f64,
    pub tasks_per_s: f64,
    /// Server CPU (user + system, all threads) over the window, per task.
    pub server_cpu_us_per_task: f64,
    /// The load generator's own CPU per task: it shares the cores with the server.
    pub loadgen_cpu_us_per_task: f64,
    /// Where the cores went during the window.
    pub cpu: CpuShare,
    /// Submit to `finished`, under this load.
    pub latency: Percentiles,
    /// Mean `fuel_used` of a task (0 for native tasks, which have no fuel).
    pub fuel_per_task: f64,
    pub unexpected: Unexpected,
}

/// A throughput scenario's load, as [`measure_rate`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct RateLoad<'a> {
    pub connections: usize,
    pub in_flight: usize,
    pub task: &'a str,
    pub input: &'a str,
}

/// Windows per server in full mode, taken in turns ([`rates_in_turns`]); one in quick mode.
const FULL_ROUNDS: usize = 3;

/// Each server's median window (with the unexpected answers of all its windows), and every
/// window in the order they ran: what scenarios 1 and 3 report, each keeping it whole.
#[derive(Debug, Clone, Serialize)]
pub struct InTurns {
    pub sandbox: Rate,
    pub native: Option<Rate>,
    pub peer: Option<Rate>,
    pub rounds: Rounds,
}

/// Windows of `load` against each of up to three servers (taskhost, native, Swoole), taken in
/// turns: taskhost, native, Swoole, then again, [`FULL_ROUNDS`] times in full mode. The host's
/// speed drifts over tens of seconds (a virtual machine's steal moved by a third of its cores
/// within a minute), so one window each puts each server in a different stretch of it; in
/// turns, every server sees every stretch, and the window with the median `figure` per server
/// ([`median_window`]) drops a slow or a fast one.
pub async fn rates_in_turns(
    servers: [Option<&Server>; 3],
    plan: &Plan,
    load: RateLoad<'_>,
    figure: fn(&Rate) -> f64,
) -> anyhow::Result<InTurns> {
    let rounds = if plan.quick { 1 } else { FULL_ROUNDS };
    let mut windows: [Vec<Rate>; 3] = Default::default();
    for _ in 0..rounds {
        for (server, windows) in servers.into_iter().zip(windows.iter_mut()) {
            if let Some(server) = server {
                windows.push(measure_rate(server, plan, load).await?);
            }
        }
    }
    let rounds = Rounds::of(&windows);
    let [sandbox, native, peer] = windows.map(|windows| median_window(windows, figure));
    Ok(InTurns {
        sandbox: sandbox.context("no window of the sandbox ran")?,
        native,
        peer,
        rounds,
    })
}

/// One window of one server, as the note lists it beside the median one.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Window {
    pub tasks_per_s: f64,
    pub server_cpu_us_per_task: f64,
    /// Where the cores went during it.
    pub cpu: CpuShare,
}

impl From<&Rate> for Window {
    fn from(rate: &Rate) -> Window {
        Window {
            tasks_per_s: rate.tasks_per_s,
            server_cpu_us_per_task: rate.server_cpu_us_per_task,
            cpu: rate.cpu,
        }
    }
}

/// Every window per server (taskhost, native, Swoole), in the order they ran: the median one
/// is reported in full, and a window that other processes or the host disturbed is warned of
/// whichever it was.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rounds {
    pub sandbox: Vec<Window>,
    pub native: Vec<Window>,
    pub peer: Vec<Window>,
}

impl Rounds {
    /// The windows [`rates_in_turns`] measured.
    pub fn of(windows: &[Vec<Rate>; 3]) -> Rounds {
        let each = |rates: &[Rate]| rates.iter().map(Window::from).collect();
        Rounds {
            sandbox: each(&windows[0]),
            native: each(&windows[1]),
            peer: each(&windows[2]),
        }
    }

    /// Where the cores went in every window, labelled by server (`labels`: taskhost's,
    /// native's, Swoole's), for the warnings: all of them, not only the ones reported.
    pub fn cpu_shares(
        &self,
        labels: [&'static str; 3],
    ) -> impl Iterator<Item = (&'static str, &CpuShare)> {
        labels
            .into_iter()
            .zip([&self.sandbox, &self.native, &self.peer])
            .flat_map(|(label, windows)| windows.iter().map(move |window| (label, &window.cpu)))
    }

    /// `; the median of 3 windows each, taken in turns: sandbox 16.2, 15.8, 17.0 µs, native …`:
    /// every window's `figure` per server; empty with one window each, where the figure
    /// reported is the only one.
    pub fn text(&self, figure: fn(&Window) -> String, unit: &str) -> String {
        if self.sandbox.len() < 2 {
            return String::new();
        }
        let each = |windows: &[Window]| -> String {
            let figures: Vec<String> = windows.iter().map(figure).collect();
            format!("{} {unit}", figures.join(", "))
        };
        let mut text = format!(
            "; the median of {} windows each, taken in turns: sandbox {}",
            self.sandbox.len(),
            each(&self.sandbox)
        );
        for (label, windows) in [("native", &self.native), (PEER, &self.peer)] {
            if !windows.is_empty() {
                text += &format!(", {label} {}", each(windows));
            }
        }
        text
    }
}

/// The window with the median `figure` (of an even number, the lower middle), its unexpected
/// answers replaced by those of every window: none is lost by the choice.
pub fn median_window(mut windows: Vec<Rate>, figure: fn(&Rate) -> f64) -> Option<Rate> {
    let mut unexpected = Unexpected::new();
    for window in &windows {
        for (what, count) in &window.unexpected {
            *unexpected.entry(what.clone()).or_default() += count;
        }
    }
    windows.sort_by(|a, b| figure(a).total_cmp(&figure(b)));
    let middle = windows.len().checked_sub(1)? / 2;
    let mut median = windows.swap_remove(middle);
    median.unexpected = unexpected;
    Some(median)
}

/// Runs `load`'s `connections` × `in_flight` of `task` against `server`: warm up, then count the tasks
/// that end within the window and the CPU the server spends meanwhile.
pub async fn measure_rate(
    server: &Server,
    plan: &Plan,
    load: RateLoad<'_>,
) -> anyhow::Result<Rate> {
    let RateLoad {
        connections,
        in_flight,
        task,
        input,
    } = load;
    let clients = Client::connect_many(server.addr, connections, &[task]).await?;
    let begin = Instant::now();
    let (from, to) = (begin + plan.warmup, begin + plan.warmup + plan.window);
    let load = Load {
        task: task.to_owned(),
        input: input.to_owned(),
        limits: None,
        in_flight,
        max_tasks: u64::MAX,
        stop: to,
        cancel_at_stop: false,
        expect: Expect::Finished,
        deadline: to + DRAIN,
    };
    let run = tokio::spawn(async move { run_all(clients, &load).await });
    sleep_until(from.into()).await;
    let before = CpuMeter::read(server)?;
    sleep_until(to.into()).await;
    let cpu = CpuMeter::read(server)?.since(&before);
    let tally: Tally = run.await.context("the load panicked")??;

    let in_window: Vec<_> = tally.ended_between(from, to).collect();
    let tasks = in_window.len();
    let window = (to - from).as_secs_f64();
    let per_task = |us: f64| if tasks == 0 { 0.0 } else { us / tasks as f64 };
    Ok(Rate {
        connections,
        in_flight_per_connection: in_flight,
        tasks,
        window_s: window,
        tasks_per_s: tasks as f64 / window,
        server_cpu_us_per_task: per_task(cpu.server_us),
        loadgen_cpu_us_per_task: per_task(cpu.loadgen_us),
        cpu,
        latency: Percentiles::of(in_window.iter().map(|sample| sample.to_end())),
        fuel_per_task: if tally.samples.is_empty() {
            0.0
        } else {
            tally.fuel_used as f64 / tally.samples.len() as f64
        },
        unexpected: tally.unexpected,
    })
}

/// `1.62 / 0.31 / 0.02 / 0.05`: server, load generator, other processes and the host's steal,
/// in cores.
pub fn cores_text(cpu: &CpuShare) -> String {
    format!(
        "{:.2} / {:.2} / {:.2} / {:.2}",
        cpu.server_cores, cpu.loadgen_cores, cpu.other_cores, cpu.stolen_cores
    )
}
