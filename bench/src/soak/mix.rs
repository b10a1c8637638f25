//! The soak's mixed load: one loop per kind of client, each repeating short rounds on fresh
//! connections until the soak's end.
//!
//! Every round is bounded in tasks and in time ([`ROUND_DEADLINE`]) and talks only to the
//! server under test on loopback. A round that fails is recorded as a problem and the loop goes
//! on after a pause. Closed-loop rounds reuse [`Client::run`], so every task must end as its
//! round expects; what does not is counted in [`Shared::unexpected`].

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::client::{Client, Expect, Load, Tally};

/// The most a round may take; a task still pending then fails the round.
const ROUND_DEADLINE: Duration = Duration::from_secs(90);

/// Problems kept word for word; later ones are only counted.
const PROBLEMS_KEPT: usize = 20;

/// What the loops and the sampler share. Std mutexes: held only to push or take, never across
/// an `.await`.
pub struct Shared {
    pub addr: SocketAddr,
    /// No round starts after this.
    pub end: Instant,
    /// The tasks folder the server watches, for the reloads.
    pub tasks: PathBuf,
    /// The files the reloads rewrite, as they were at the start: every rewrite starts from
    /// these bytes.
    originals: BTreeMap<&'static str, Vec<u8>>,
    /// Submit-to-`finished` times of the echo probe since the sampler last took them.
    pub probe: Mutex<Vec<Duration>>,
    /// Tasks that ended as their round expected.
    pub ended: AtomicU64,
    /// Tasks that ended otherwise, by kind (`failed:timeout`, `rejected:queue_full`, ...).
    pub unexpected: Mutex<BTreeMap<String, u64>>,
    /// Rounds that failed, with why (the first [`PROBLEMS_KEPT`]), and how many in all.
    pub problems: Mutex<(Vec<String>, u64)>,
    /// Connections whose first message was a `broadcast` or `tasks_changed`, not `hello`.
    pub pushed_before_hello: AtomicU64,
    /// Connections dropped with tasks in flight; module files replaced; slow-reader rounds.
    pub disconnects: AtomicU64,
    pub reloads: AtomicU64,
    pub slow_reads: AtomicU64,
}

impl Shared {
    /// The shared state of a soak against `addr` serving `tasks`, which must hold the files
    /// the reloads rewrite.
    pub fn new(addr: SocketAddr, end: Instant, tasks: PathBuf) -> anyhow::Result<Shared> {
        let mut originals = BTreeMap::new();
        for file in RELOADED {
            let path = tasks.join(file);
            let bytes = std::fs::read(&path)
                .with_context(|| format!("could not read {}", path.display()))?;
            originals.insert(file, bytes);
        }
        Ok(Shared {
            addr,
            end,
            tasks,
            originals,
            probe: Mutex::default(),
            ended: AtomicU64::new(0),
            unexpected: Mutex::default(),
            problems: Mutex::default(),
            pushed_before_hello: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            slow_reads: AtomicU64::new(0),
        })
    }

    fn problem(&self, text: String) {
        eprintln!("soak: {text}");
        let mut problems = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        if problems.0.len() < PROBLEMS_KEPT {
            problems.0.push(text);
        }
        problems.1 += 1;
    }

    /// Adds a closed-loop round's outcome to the counts.
    fn count(&self, tally: &Tally) {
        self.ended
            .fetch_add(tally.samples.len() as u64, Ordering::Relaxed);
        let mut unexpected = self.unexpected.lock().unwrap_or_else(|e| e.into_inner());
        for (kind, n) in &tally.unexpected {
            *unexpected.entry(kind.clone()).or_default() += n;
        }
    }

    /// Opens a connection (which reads its `hello`), noting messages that came before it.
    async fn connect(&self, needs: &[&str]) -> anyhow::Result<Client> {
        let client = Client::connect(self.addr, needs).await?;
        if client.pushed_before_hello() > 0 {
            self.pushed_before_hello.fetch_add(1, Ordering::Relaxed);
        }
        Ok(client)
    }

    pub fn problem_count(&self) -> u64 {
        self.problems.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    pub fn unexpected_count(&self) -> u64 {
        let unexpected = self.unexpected.lock().unwrap_or_else(|e| e.into_inner());
        unexpected.values().sum()
    }
}

/// Starts every loop; each ends by itself at `shared.end` (after its round in progress).
pub fn spawn_all(shared: &Arc<Shared>) -> Vec<(&'static str, tokio::task::JoinHandle<()>)> {
    let mut loops = Vec::new();
    let mut start = |name: &'static str, pause: Duration, round: fn(Arc<Shared>, u64) -> Round| {
        let shared = Arc::clone(shared);
        loops.push((name, tokio::spawn(repeat(name, shared, pause, round))));
    };
    start("echo probe", Duration::from_millis(100), |s, _| {
        Box::pin(echo_probe(s))
    });
    start("echo load", Duration::from_millis(250), |s, _| {
        Box::pin(echo_load(s))
    });
    start("slow", Duration::ZERO, |s, _| Box::pin(slow(s)));
    start("broadcast", Duration::from_secs(1), |s, n| {
        Box::pin(broadcast(s, n))
    });
    start("failures", Duration::from_millis(300), |s, n| {
        Box::pin(failures(s, n))
    });
    start("disconnects", Duration::from_millis(200), |s, n| {
        Box::pin(disconnect(s, n))
    });
    start("slow reader", Duration::from_secs(5), |s, _| {
        Box::pin(slow_reader(s))
    });
    start("reloads", Duration::from_secs(15), |s, n| {
        Box::pin(reload(s, n))
    });
    loops
}

type Round = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Runs rounds until the end, with `pause` between them; a failed round is a problem.
async fn repeat(
    name: &'static str,
    shared: Arc<Shared>,
    pause: Duration,
    round: fn(Arc<Shared>, u64) -> Round,
) {
    let mut n = 0;
    while Instant::now() < shared.end {
        if let Err(error) = round(Arc::clone(&shared), n).await {
            shared.problem(format!("{name}, round {n}: {error:#}"));
            // A server in trouble is not hammered.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        n += 1;
        let next = (Instant::now() + pause).min(shared.end);
        tokio::time::sleep_until(next.into()).await;
    }
}

/// A closed-loop round of `task` on a fresh connection.
async fn closed_loop(
    shared: &Shared,
    task: &str,
    input: String,
    limits: Option<&str>,
    in_flight: usize,
    max_tasks: u64,
    expect: Expect,
) -> anyhow::Result<Tally> {
    let client = shared.connect(&[task]).await?;
    let load = Load {
        task: task.to_owned(),
        input,
        limits: limits.map(str::to_owned),
        in_flight,
        max_tasks,
        stop: shared.end,
        cancel_at_stop: false,
        expect,
        deadline: Instant::now() + ROUND_DEADLINE,
    };
    let tally = client.run(&load).await?;
    shared.count(&tally);
    Ok(tally)
}

/// One `echo` at a time, timed: the figure the sampler reports as echo p99.
async fn echo_probe(shared: Arc<Shared>) -> anyhow::Result<()> {
    let tally = closed_loop(&shared, "echo", "1".into(), None, 1, 100, Expect::Finished).await?;
    let mut probe = shared.probe.lock().unwrap_or_else(|e| e.into_inner());
    probe.extend(tally.samples.iter().map(|sample| sample.to_end()));
    Ok(())
}

/// Bursts of `echo` with a 1 KiB input, 16 in flight.
async fn echo_load(shared: Arc<Shared>) -> anyhow::Result<()> {
    let input = serde_json::to_string(&"x".repeat(1024))?;
    closed_loop(&shared, "echo", input, None, 16, 400, Expect::Finished).await?;
    Ok(())
}

/// Twenty `slow` tasks of 2 s asleep at once, the example's job.
async fn slow(shared: Arc<Shared>) -> anyhow::Result<()> {
    let input = r#"{"seconds": 2}"#.to_owned();
    closed_loop(&shared, "slow", input, None, 20, 40, Expect::Finished).await?;
    Ok(())
}

/// Chat lines delivered to every open connection (the other loops' clients skip them).
async fn broadcast(shared: Arc<Shared>, n: u64) -> anyhow::Result<()> {
    let input = format!(r#"{{"user": "soak", "text": "round {n}"}}"#);
    closed_loop(&shared, "broadcast", input, None, 2, 6, Expect::Finished).await?;
    Ok(())
}

/// The failure tasks in turn, each ending by its own code. Limits are lowered so that a hog
/// holds a core for a moment, not for the default 30 s.
async fn failures(shared: Arc<Shared>, n: u64) -> anyhow::Result<()> {
    const TIMEOUT: &[&str] = &["timeout", "fuel_exhausted"];
    const CASES: [(&str, Option<&str>, &[&str]); 6] = [
        ("spin", Some(r#"{"timeout_ms": 200}"#), TIMEOUT),
        (
            "oom",
            Some(r#"{"memory_bytes": 16777216}"#),
            &["memory_limit"],
        ),
        ("panic", None, &["trap"]),
        ("exit", None, &["exit"]),
        ("recurse", None, &["trap"]),
        ("flood", Some(r#"{"timeout_ms": 300}"#), &["timeout"]),
    ];
    let (task, limits, codes) = CASES[(n % CASES.len() as u64) as usize];
    closed_loop(
        &shared,
        task,
        "null".into(),
        limits,
        2,
        4,
        Expect::Failed(codes),
    )
    .await?;
    Ok(())
}

/// A client that sends a few tasks and goes away while they run: half the time by dropping
/// the socket, half the time with a close frame.
async fn disconnect(shared: Arc<Shared>, n: u64) -> anyhow::Result<()> {
    let mut random = Random::new(n);
    let mut client = shared.connect(&["slow", "echo", "spin"]).await?;
    let frames = (0..1 + random.below(8)).map(|i| match random.below(3) {
        0 => format!(r#"{{"type":"task","task":"slow","input":{{"seconds":1}},"ref":{i}}}"#),
        1 => format!(r#"{{"type":"task","task":"echo","input":{i},"ref":{i}}}"#),
        _ => format!(r#"{{"type":"task","task":"spin","limits":{{"timeout_ms":100}},"ref":{i}}}"#),
    });
    let frames: Vec<String> = frames.collect();
    client.send_texts(frames).await?;
    tokio::time::sleep(Duration::from_millis(random.below(300))).await;
    if random.below(2) == 0 {
        drop(client);
    } else {
        client.close().await;
    }
    shared.disconnects.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Echo tasks whose results come to far more than the socket buffers hold.
const SLOW_READER_TASKS: u64 = 200;
const SLOW_READER_INPUT_BYTES: usize = 16 * 1024;
/// How long the slow reader reads nothing.
const SLOW_READER_PAUSE: Duration = Duration::from_secs(3);

/// A client that submits many tasks with large results, stops reading for a while (its
/// socket and then its outbox fill up), then reads: every task must still get its `accepted`
/// and `finished`.
async fn slow_reader(shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut client = shared.connect(&["echo"]).await?;
    let input = serde_json::to_string(&"y".repeat(SLOW_READER_INPUT_BYTES))?;
    let frames = (0..SLOW_READER_TASKS)
        .map(|i| format!(r#"{{"type":"task","task":"echo","input":{input},"ref":{i}}}"#));
    client.send_texts(frames).await?;
    tokio::time::sleep(SLOW_READER_PAUSE).await;
    let (mut accepted, mut finished) = (0, 0);
    let deadline = Instant::now() + ROUND_DEADLINE;
    while finished < SLOW_READER_TASKS {
        let wait = deadline.saturating_duration_since(Instant::now());
        let message = client
            .next_json(wait)
            .await
            .with_context(|| format!("{finished} of {SLOW_READER_TASKS} tasks ended"))?
            .with_context(|| {
                format!(
                    "the server closed the connection after {finished} of {SLOW_READER_TASKS} tasks"
                )
            })?;
        if message["ref"].is_null() {
            continue; // a broadcast or a pushed list
        }
        match message["type"].as_str() {
            Some("accepted") => accepted += 1,
            Some("finished") => finished += 1,
            Some("progress" | "started") => {}
            _ => {
                let mut unexpected = shared.unexpected.lock().unwrap_or_else(|e| e.into_inner());
                let kind = format!("slow reader:{}", message["type"]);
                *unexpected.entry(kind).or_default() += 1;
                finished += 1;
            }
        }
    }
    if accepted != SLOW_READER_TASKS {
        bail!("{accepted} of {SLOW_READER_TASKS} tasks were accepted");
    }
    shared.ended.fetch_add(finished, Ordering::Relaxed);
    shared.slow_reads.fetch_add(1, Ordering::Relaxed);
    client.close().await;
    Ok(())
}

/// The files the reloads rewrite, in turn.
const RELOADED: [&str; 2] = ["echo.wasm", "upper.wat"];

/// Replaces a module in the server's tasks folder as the README says (a temporary name, then a
/// rename) and waits until `list` shows the new version: `echo` (with a custom section that
/// makes each version's bytes new) and `upper.wat` (with a new comment), in turn.
async fn reload(shared: Arc<Shared>, n: u64) -> anyhow::Result<()> {
    let file = RELOADED[(n % RELOADED.len() as u64) as usize];
    let (name, form) = file
        .split_once('.')
        .context("a file name with an extension")?;
    let base = shared.originals.get(file).cloned().unwrap_or_default();
    let contents = if form == "wasm" {
        with_custom_section(base, n)
    } else {
        let mut text = base;
        text.extend_from_slice(format!("\n;; soak reload {n}\n").as_bytes());
        text
    };
    let path = shared.tasks.join(file);
    let mut client = shared.connect(&[name]).await?;
    let before = listed_hash(&mut client, name).await?;
    let temporary = shared.tasks.join(format!("{file}.tmp"));
    std::fs::write(&temporary, &contents)
        .with_context(|| format!("could not write {}", temporary.display()))?;
    std::fs::rename(&temporary, &path)
        .with_context(|| format!("could not rename into {}", path.display()))?;
    let waited = Instant::now();
    loop {
        let now = listed_hash(&mut client, name).await?;
        if now != before {
            break;
        }
        if waited.elapsed() > Duration::from_secs(15) {
            bail!("{file} was replaced, but `list` still showed hash {before:?} after 15 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shared.reloads.fetch_add(1, Ordering::Relaxed);
    client.close().await;
    Ok(())
}

/// `bytes`, a WebAssembly module, with a custom section `soak` holding `n` appended: a new
/// file that means the same module.
fn with_custom_section(mut bytes: Vec<u8>, n: u64) -> Vec<u8> {
    let name = b"soak";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&n.to_le_bytes());
    bytes.push(0); // custom section id
    bytes.push(section.len() as u8); // under 128: one LEB128 byte
    bytes.extend_from_slice(&section);
    bytes
}

/// Task `name`'s `hash` in `list`, asked on `client`.
async fn listed_hash(client: &mut Client, name: &str) -> anyhow::Result<Option<String>> {
    client.send_texts([r#"{"type":"list"}"#.to_owned()]).await?;
    loop {
        let message = client
            .next_json(Duration::from_secs(10))
            .await?
            .context("the server closed the connection before answering list")?;
        if message["type"] != "list" {
            continue; // a broadcast or a pushed tasks_changed
        }
        let tasks = message["tasks"].as_array().context("list without tasks")?;
        let entry = tasks
            .iter()
            .find(|task| task["name"] == name)
            .with_context(|| format!("list does not name {name}"))?;
        return Ok(entry["hash"].as_str().map(str::to_owned));
    }
}

/// A small xorshift generator: the disconnects need variety, not quality.
struct Random(u64);

impl Random {
    fn new(round: u64) -> Random {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        Random((clock ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_custom_section_keeps_the_module_valid_and_changes_its_bytes() {
        let module = b"\0asm\x01\0\0\0".to_vec();
        let changed = with_custom_section(module.clone(), 7);
        assert_ne!(changed, module);
        assert_eq!(&changed[8..10], &[0, 13]);
        assert_eq!(&changed[10..15], b"\x04soak");
    }
}
