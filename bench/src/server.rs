//! One taskhost server under test, run as a child process on a free loopback port.
//!
//! [`Server::start`] spawns `taskhost --listen 127.0.0.1:PORT --tasks DIR ...`, sends its log to
//! a file, and returns once `GET /healthz` answers `200`; [`Server::stop`] sends SIGTERM and waits.
//! The child is killed if the benchmark drops it without stopping it (an error path), so no
//! server outlives the benchmark.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::procfs;

/// How long a server may take to answer `/healthz` before the benchmark gives up on it.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Between two `/healthz` polls while a server starts; also the resolution of start-up times.
const READY_POLL: Duration = Duration::from_millis(2);

/// Between two `/metrics` polls while a server warms its pool.
const WARM_POLL: Duration = Duration::from_millis(10);

/// How long a server may take to exit after SIGTERM before it is killed. Its own grace period
/// (`--grace-ms`, which the benchmark sets lower) bounds this in practice.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The grace period the benchmark's servers get on SIGTERM: every scenario drains its tasks
/// before stopping a server, so a longer wait would only hide a hang.
const GRACE_MS: &str = "2000";

/// Which tasks run where: in sandboxes, or as the host's native Rust functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Sandbox,
    Native,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sandbox => "sandbox",
            Mode::Native => "native",
        }
    }
}

/// What every server of a run shares: the binary, the tasks and where logs go.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub binary: PathBuf,
    pub tasks: PathBuf,
    pub log_dir: PathBuf,
    /// Flags every server gets (the compile cache's folder, when the server has one).
    pub common_args: Vec<String>,
    /// The compile cache every server shares, if the server has `--cache-dir`: the start-up
    /// scenario empties it for its cold start.
    pub cache_dir: Option<PathBuf>,
    /// Oddities worth reporting that spoil no figure (a server that died of the SIGTERM meant
    /// to stop it cleanly); every server adds to it, the report reads it at the end.
    /// Std mutex: held only to push or take, never across an `.await`.
    pub warnings: Arc<Mutex<Vec<String>>>,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// Killed on drop (`kill_on_drop`) unless [`Server::stop`] reaped it first.
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub label: String,
    /// From just before the spawn to the first `200` from `/healthz`.
    pub ready_after: Duration,
    /// From just before the spawn to the end of its pool warming (`taskhost_pool_warming 0`).
    pub warm_after: Duration,
    log: PathBuf,
    warnings: Arc<Mutex<Vec<String>>>,
    /// Measured as its whole process tree (a peer made of several processes), not one process.
    tree: bool,
    /// A process whose CPU counts as the server's: the broker of a taskhost started with
    /// `--nats`, which does part of each task's work.
    companion: Option<u32>,
}

impl Launcher {
    /// Starts a server in `mode` with extra flags `args`; `label` names its log file.
    pub async fn start(&self, label: &str, mode: Mode, args: &[String]) -> anyhow::Result<Server> {
        self.start_with_tasks(label, mode, &self.tasks, args).await
    }

    /// Like [`Launcher::start`], serving the modules in `tasks`.
    pub async fn start_with_tasks(
        &self,
        label: &str,
        mode: Mode,
        tasks: &Path,
        args: &[String],
    ) -> anyhow::Result<Server> {
        let addr = free_port()?;
        let log = self.log_dir.join(format!("{label}.log"));
        let mut command = Command::new(&self.binary);
        command
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--tasks")
            .arg(tasks)
            .args(["--grace-ms", GRACE_MS])
            .args(&self.common_args)
            .args(args);
        log_to(&mut command, &log)?;
        if mode == Mode::Native {
            command.arg("--native");
        }
        // Default logging (info, unless RUST_LOG says otherwise), as a user runs it: issue 13's
        // targets hold "with default settings including logging".
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("could not start {}", self.binary.display()))?;
        let pid = child.id().context("the server exited at once")?;
        wait_ready(&mut child, label, &log, started, "/healthz", || {
            healthy(addr)
        })
        .await?;
        let ready_after = started.elapsed();
        // Figures are of a server at rest: wait for its pool warming (--warm-slots) to end.
        while warming(addr).await {
            if started.elapsed() > READY_TIMEOUT {
                bail!("server {label} was still warming its pool after {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(WARM_POLL).await;
        }
        Ok(Server {
            child,
            pid,
            addr,
            label: label.to_owned(),
            ready_after,
            warm_after: started.elapsed(),
            log,
            warnings: Arc::clone(&self.warnings),
            tree: false,
            companion: None,
        })
    }
}

/// The peer users would pick instead of taskhost: Swoole's WebSocket server with task workers,
/// speaking taskhost's protocol for `echo`, `slow` and `fib` (`peers/swoole_server.php`, the
/// original example's shape), run by PHP with the Swoole extension built by `just swoole`.
#[derive(Debug, Clone)]
pub struct SwoolePeer {
    pub php: PathBuf,
    /// `swoole.so`.
    pub extension: PathBuf,
    pub script: PathBuf,
    /// `swoole_version()`, for the report.
    pub version: String,
}

impl SwoolePeer {
    /// The peer, if `extension` exists and PHP loads it; otherwise why not, for the report.
    pub fn find(extension: &Path, script: &Path) -> Result<SwoolePeer, String> {
        if !extension.exists() {
            return Err(format!(
                "no Swoole build at {}: `just swoole SRC_GIT_DIR` builds one (SRC_GIT_DIR: a git \
                 clone of swoole/swoole-src holding tag v6.2.2), or pass --peer-swoole PATH/swoole.so",
                extension.display()
            ));
        }
        let php = PathBuf::from("php");
        let output = std::process::Command::new(&php)
            .arg("-d")
            .arg(format!("extension={}", extension.display()))
            .args(["-r", "echo swoole_version();"])
            .output()
            .map_err(|error| {
                format!("could not run php to load {}: {error}", extension.display())
            })?;
        if !output.status.success() {
            return Err(format!(
                "php could not load {}: {}",
                extension.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(SwoolePeer {
            php,
            extension: extension.to_path_buf(),
            script: script.to_path_buf(),
            version: String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        })
    }

    /// Starts the peer with `env` (`TASK_WORKERS`, `TASK_COROUTINE`, ...; see the script's
    /// header) and returns once it answers a WebSocket with `hello`.
    pub async fn start(
        &self,
        launcher: &Launcher,
        label: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        let addr = free_port()?;
        let log = launcher.log_dir.join(format!("{label}.log"));
        let mut command = Command::new(&self.php);
        command
            .arg("-d")
            .arg(format!("extension={}", self.extension.display()))
            .arg(&self.script)
            .env("LISTEN", addr.to_string())
            .envs(env.iter().copied());
        log_to(&mut command, &log)?;
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("could not start {}", self.php.display()))?;
        let pid = child.id().context("the peer exited at once")?;
        let answers = || async {
            let probe = tokio::time::timeout(
                Duration::from_secs(1),
                crate::client::Client::connect(addr, &[]),
            );
            match probe.await {
                Ok(Ok(client)) => {
                    client.close().await;
                    true
                }
                _ => false,
            }
        };
        wait_ready(
            &mut child,
            label,
            &log,
            started,
            "a WebSocket with hello",
            answers,
        )
        .await?;
        let ready_after = started.elapsed();
        Ok(Server {
            child,
            pid,
            addr,
            label: label.to_owned(),
            ready_after,
            warm_after: ready_after,
            log,
            warnings: Arc::clone(&launcher.warnings),
            tree: true,
            companion: None,
        })
    }
}

impl Server {
    pub fn memory(&self) -> anyhow::Result<procfs::Memory> {
        if self.tree {
            return procfs::tree_memory(self.pid)
                .with_context(|| format!("server {} is gone", self.label));
        }
        procfs::memory(&self.pid.to_string())
            .with_context(|| format!("server {} is gone", self.label))
    }

    /// The server's proportional set size now ([`procfs::pss_bytes`]), over its process tree
    /// for a peer made of several processes.
    pub fn pss_bytes(&self) -> anyhow::Result<u64> {
        (self.pss_reader())()
    }

    /// Reads the server's PSS like [`Server::pss_bytes`], from any thread: a read can take the
    /// kernel a tenth of a second on a server with many mappings, too long to hold a thread
    /// of the load generator's runtime.
    pub fn pss_reader(&self) -> impl Fn() -> anyhow::Result<u64> + Send + 'static {
        let (pid, tree, label) = (self.pid, self.tree, self.label.clone());
        move || {
            let pss = if tree {
                procfs::tree_pss_bytes(pid)
            } else {
                procfs::pss_bytes(&pid.to_string())
            };
            pss.with_context(|| format!("server {label} is gone"))
        }
    }

    /// Counts `broker`'s CPU as this server's from now on (see [`Server::cpu_time`]).
    pub fn with_companion(mut self, broker: &Broker) -> Server {
        self.companion = Some(broker.pid);
        self
    }

    /// CPU time so far: the process's, its tree's for a peer, plus its companion's.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let own = if self.tree {
            procfs::tree_cpu_time(self.pid)
        } else {
            procfs::cpu_time(&self.pid.to_string())
        };
        let own = own.with_context(|| format!("server {} is gone", self.label))?;
        let companion = match self.companion {
            Some(pid) => procfs::cpu_time(&pid.to_string())
                .with_context(|| format!("the broker of server {} is gone", self.label))?,
            None => Duration::ZERO,
        };
        Ok(own + companion)
    }

    pub fn open_fds(&self) -> anyhow::Result<usize> {
        procfs::open_fds(&self.pid.to_string())
            .with_context(|| format!("server {} is gone", self.label))
    }

    /// How many modules the server compiled rather than loading them from its compile cache:
    /// `taskhost_module_loads_total{from="compiler"}` from `/metrics`, or, from a server older
    /// than that metric (A/B runs against earlier builds), the `compiled=N` of its "tasks
    /// loaded" log line. `None` if neither says.
    pub async fn compiled_modules(&self) -> Option<usize> {
        if let Some(count) = self.metrics().await.as_deref().and_then(compiled_metric) {
            return Some(count);
        }
        compiled_count(&std::fs::read_to_string(&self.log).ok()?)
    }

    /// The server's `/metrics` text now; `None` if it did not answer within a second.
    pub async fn metrics(&self) -> Option<String> {
        get(self.addr, "/metrics").await
    }

    /// SIGTERM, then wait for the exit; an unclean exit is an error naming the log.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            return self.check_exit(status);
        }
        procfs::terminate(self.pid)?;
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => self.check_exit(status?),
            Err(_) => {
                self.child.kill().await?;
                bail!(
                    "server {} did not exit within {STOP_TIMEOUT:?} of SIGTERM and was killed; see {}",
                    self.label,
                    self.log.display()
                )
            }
        }
    }

    fn check_exit(&self, status: ExitStatus) -> anyhow::Result<()> {
        if status.success() {
            return Ok(());
        }
        if status.signal() == Some(libc::SIGTERM) {
            // The default action of SIGTERM: the server answered /healthz before it listened
            // for the signal. Its figures stand; its shutdown was not clean.
            let warning = format!(
                "server {} died of the SIGTERM meant to stop it cleanly, sent once it answered \
                 /healthz ({:?} after its start): it did not handle the signal yet",
                self.label, self.ready_after
            );
            self.warnings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(warning);
            return Ok(());
        }
        bail!(
            "server {} ended with {status}; its log {} ends:\n{}",
            self.label,
            self.log.display(),
            log_tail(&self.log)
        )
    }
}

/// Polls `ready` until it says yes; fails, with the end of `log`, if the child exits first or
/// [`READY_TIMEOUT`] passes. `what` names what was awaited, for the error.
async fn wait_ready<F: std::future::Future<Output = bool>>(
    child: &mut Child,
    label: &str,
    log: &Path,
    started: Instant,
    what: &str,
    ready: impl Fn() -> F,
) -> anyhow::Result<()> {
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "server {label} exited before it was ready ({status}); its log {} ends:\n{}",
                log.display(),
                log_tail(log)
            );
        }
        if ready().await {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!(
                "server {label} did not answer {what} within {READY_TIMEOUT:?}; its log {} ends:\n{}",
                log.display(),
                log_tail(log)
            );
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// A NATS server with JetStream (`nats-server -js`), on a free loopback port with its store in
/// a folder of its own; killed when dropped.
#[derive(Debug)]
pub struct Broker {
    _child: Child,
    pub pid: u32,
    pub url: String,
}

impl Broker {
    /// The `nats-server` to run: from PATH, or Debian's /usr/sbin (not on a user's PATH).
    pub fn binary() -> anyhow::Result<&'static str> {
        ["nats-server", "/usr/sbin/nats-server"]
            .into_iter()
            .find(|candidate| {
                std::process::Command::new(candidate)
                    .arg("--version")
                    .output()
                    .is_ok_and(|output| output.status.success())
            })
            .context("nats-server is not installed (Debian: apt-get install nats-server)")
    }

    /// Starts `nats-server` (from PATH or Debian's /usr/sbin), logging to `log_dir/LABEL.log`;
    /// returns once its port takes connections.
    pub async fn start(log_dir: &Path, label: &str) -> anyhow::Result<Broker> {
        let binary = Broker::binary()?;
        let addr = free_port()?;
        let store = log_dir.join(format!("{label}-store"));
        if store.exists() {
            std::fs::remove_dir_all(&store)
                .with_context(|| format!("could not clear {}", store.display()))?;
        }
        let log = log_dir.join(format!("{label}.log"));
        let mut command = Command::new(binary);
        command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &addr.port().to_string(),
                "-sd",
            ])
            .arg(&store);
        log_to(&mut command, &log)?;
        let started = Instant::now();
        let mut child = command.spawn().context("could not start nats-server")?;
        let pid = child.id().context("nats-server exited at once")?;
        wait_ready(
            &mut child,
            label,
            &log,
            started,
            "its port",
            || async move { TcpStream::connect(addr).await.is_ok() },
        )
        .await?;
        Ok(Broker {
            _child: child,
            pid,
            url: format!("nats://{addr}"),
        })
    }
}

/// Sends a server's stdout and stderr to `log` (created afresh), closes its stdin, and kills
/// it if the benchmark drops it without stopping it.
fn log_to(command: &mut Command, log: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(log)
        .with_context(|| format!("could not create the server log {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone().context("could not share the log file")?)
        .stderr(file)
        .kill_on_drop(true);
    Ok(())
}

/// A loopback port nobody listens on: bind port 0, note the port, release it.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("could not bind a loopback port to find a free one")?;
    Ok(listener.local_addr()?)
}

/// Whether `GET /healthz` answers `200` now.
async fn healthy(addr: SocketAddr) -> bool {
    get(addr, "/healthz")
        .await
        .is_some_and(|response| response.starts_with("HTTP/1.1 200"))
}

/// Whether `/metrics` says the server is still warming its sandbox pool.
async fn warming(addr: SocketAddr) -> bool {
    get(addr, "/metrics").await.is_some_and(|response| {
        response
            .lines()
            .any(|line| line == "taskhost_pool_warming 1")
    })
}

/// One `GET` on a fresh connection: the whole response, or `None` if there was none
/// within a second.
async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let request = async {
        let mut stream = TcpStream::connect(addr).await?;
        let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        std::io::Result::Ok(response)
    };
    tokio::time::timeout(Duration::from_secs(1), request)
        .await
        .ok()?
        .ok()
}

/// The modules a `/metrics` response says were compiled rather than loaded from the cache.
fn compiled_metric(metrics: &str) -> Option<usize> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(r#"taskhost_module_loads_total{from="compiler"} "#))?
        .trim()
        .parse()
        .ok()
}

/// The `compiled=N` of a server log's "tasks loaded" line.
fn compiled_count(log: &str) -> Option<usize> {
    let line = log.lines().find(|line| line.contains("tasks loaded"))?;
    let count = line.split("compiled=").nth(1)?;
    count
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The last lines of a server log, for an error message.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::{compiled_count, compiled_metric};

    #[test]
    fn the_compiled_count_is_read_from_the_metric() {
        let metrics = "HTTP/1.1 200 OK\r\n\r\n# TYPE taskhost_module_loads counter\n\
                       taskhost_module_loads_total{from=\"cache\"} 24\n\
                       taskhost_module_loads_total{from=\"compiler\"} 2\n";
        assert_eq!(compiled_metric(metrics), Some(2));
        assert_eq!(compiled_metric("taskhost_pool_warming 0\n"), None);
    }

    #[test]
    fn the_compiled_count_is_read_from_the_tasks_loaded_line() {
        let log = "2026-12-01T16:24:56.197616Z  INFO taskhost::registry: task loaded task=echo\n\
                   2026-12-01T16:24:56.212576Z  INFO taskhost::app::context: tasks loaded tasks=23 \
                   large_tasks_loading_after_start=0 from_cache=1 compiled=23 elapsed_ms=1800\n";
        assert_eq!(compiled_count(log), Some(23));
        assert_eq!(
            compiled_count("INFO taskhost::registry: task loaded task=echo"),
            None
        );
    }
}
