//! The server's options: command-line flags (their doc comments are the `--help` text) turned
//! into a validated [`Config`] that the rest of the library reads.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use std::ffi::OsString;

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use serde::{Serialize, Serializer};

use crate::capabilities::http::HttpCaps;
use crate::limits::Limits;
use crate::sandbox::EngineSettings;
pub use crate::secret::Secret;
use crate::secret::without_password;

/// A WebAssembly-sandboxed task runner behind a WebSocket server.
///
/// Clients connect to ws://LISTEN/ and send tasks (docs/PROTOCOL.md); each task runs in a fresh
/// wasmtime sandbox loaded from the tasks folder. The same port serves the page at GET /,
/// /healthz and /metrics.
// Not `Debug`: it holds the token and the URLs with their passwords as they were given
// (`Config` holds them as `Secret`s); `--print-config` shows it without them.
#[derive(Clone, Parser, Serialize)]
#[command(name = "taskhost", version)]
pub struct Options {
    /// A TOML file of options, its keys the long flags (`task-workers = 64`, or
    /// `task_workers`); flags and TASKHOST_* variables override it.
    #[arg(long, value_name = "FILE", env = "TASKHOST_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (file, environment and flags together, the token
    /// redacted) as TOML, and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,

    /// Measure this host (a native micro-benchmark, the sandbox's price per task and the same
    /// micro-benchmark in the sandbox, running the tasks folder's echo.wasm and fib.wasm), print
    /// it as one line of JSON, and exit. `just bench` prints it above its table, so figures from
    /// two hosts can be told apart.
    #[arg(long, hide_short_help = true)]
    #[serde(skip)]
    pub host_index: bool,

    /// Print the shell completion script for SHELL and exit (`taskhost --completions bash >
    /// /etc/bash_completion.d/taskhost`).
    #[arg(long, value_name = "SHELL", value_enum)]
    #[serde(skip)]
    pub completions: Option<clap_complete::Shell>,

    /// Print the man page (roff) and exit (`taskhost --man > taskhost.1`).
    #[arg(long)]
    #[serde(skip)]
    pub man: bool,

    /// Address to listen on (WebSocket, the page, /healthz, /metrics).
    #[arg(long, default_value = "127.0.0.1:9501", env = "TASKHOST_LISTEN")]
    pub listen: SocketAddr,

    /// Folder of task modules: NAME.wasm (or NAME.wat) is served as task NAME.
    #[arg(long, default_value = "tasks", env = "TASKHOST_TASKS")]
    pub tasks: PathBuf,

    /// Tasks running at once (Swoole's task_worker_num). A task asleep in the sandbox holds a
    /// slot but no thread, so this can be high; each slot reserves sandbox memory up front.
    #[arg(long, default_value_t = 1024, env = "TASKHOST_TASK_WORKERS")]
    pub task_workers: usize,

    /// Tasks that may wait for a free worker beyond those running; past it, tasks are
    /// rejected with `queue_full`.
    #[arg(long, default_value_t = 10_000, env = "TASKHOST_QUEUE")]
    pub queue: usize,

    /// Tasks one connection may have queued or running at once; past it, its tasks are
    /// rejected with `queue_full`, so that no client can take the whole server (default:
    /// half of --task-workers plus --queue; 0: no limit).
    #[arg(env = "TASKHOST_MAX_CONNECTION_TASKS", long)]
    pub max_connection_tasks: Option<usize>,

    /// Task run for plain-text frames (the original example sends `666`).
    #[arg(long, default_value = "slow", env = "TASKHOST_DEFAULT_TASK")]
    pub default_task: String,

    /// Wall-clock limit per task in milliseconds (default and maximum; clients may lower it).
    #[arg(long, default_value_t = 30_000, env = "TASKHOST_TIMEOUT_MS")]
    pub timeout_ms: u64,

    /// Fuel (roughly, WebAssembly instructions) per task (default and maximum).
    #[arg(long, default_value_t = 10_000_000_000, env = "TASKHOST_FUEL")]
    pub fuel: u64,

    /// Memory per task in bytes (default and maximum): all its linear memories and tables
    /// together.
    #[arg(long, default_value_t = 64 << 20, env = "TASKHOST_MEMORY")]
    pub memory: u64,

    /// Memory all running tasks may hold at once, in bytes (their memories and tables
    /// together). A task whose growth would pass it fails with `memory_limit`, saying the
    /// server is busy, so that tasks together never take the host's memory (default: half of
    /// this machine's memory, and at least --memory).
    #[arg(env = "TASKHOST_MEMORY_BUDGET", long)]
    pub memory_budget: Option<u64>,

    /// Largest frame a client may send, in bytes; a bigger one closes the connection (1009).
    #[arg(long, default_value_t = 1 << 20, env = "TASKHOST_MAX_FRAME")]
    pub max_frame: usize,

    /// Most output a task may write (stdout and stderr together), in bytes; past it the task
    /// is stopped with `output_too_large`.
    #[arg(long, default_value_t = 1 << 20, env = "TASKHOST_MAX_OUTPUT")]
    pub max_output: usize,

    /// On Ctrl-C or SIGTERM, how long running tasks may take to finish, in milliseconds,
    /// before they are failed with `shutdown`.
    #[arg(long, default_value_t = 10_000, env = "TASKHOST_GRACE_MS")]
    pub grace_ms: u64,

    /// Folder of compiled code, so that a restart does not compile again (default:
    /// $XDG_CACHE_HOME/taskhost or ~/.cache/taskhost).
    #[arg(long, env = "TASKHOST_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Compile every module at every start; keep nothing on disk.
    #[arg(long, conflicts_with = "cache_dir", env = "TASKHOST_NO_CACHE")]
    pub no_cache: bool,

    /// Write /tmp/perf-PID.map, which names the tasks' compiled functions for `perf report`
    /// (a profiler otherwise shows their code as bare addresses). For profiling only: the
    /// file grows with every module loaded, and names what the tasks folder holds.
    #[arg(long, env = "TASKHOST_PERF_MAP")]
    pub perf_map: bool,

    /// Task slots to prepare at start, in the background, while no task needs them (default:
    /// all of --task-workers; none with --native). A prepared slot spares the first task in
    /// it setting up its mappings and fiber stack, for about 10 KiB of memory kept.
    #[arg(env = "TASKHOST_WARM_SLOTS", long)]
    pub warm_slots: Option<usize>,

    /// A web origin whose pages may open WebSocket connections (repeat for more; `*` for
    /// any). Pages served by this server and from a loopback host always may; other sites
    /// may not, so that no web page a user visits can run tasks here. `null` allows pages
    /// opened from a file, and also sandboxed frames of any site.
    #[arg(
        long = "allow-origin",
        value_name = "ORIGIN",
        env = "TASKHOST_ALLOW_ORIGIN",
        value_delimiter = ','
    )]
    #[serde(rename = "allow_origin")]
    pub allow_origins: Vec<String>,

    /// A host name this server is reached by, besides loopback names and the address it
    /// listens on (repeat for more). A browser request naming any other Host is refused
    /// (403), which stops DNS rebinding.
    #[arg(
        long = "allow-host",
        value_name = "HOST",
        env = "TASKHOST_ALLOW_HOST",
        value_delimiter = ','
    )]
    #[serde(rename = "allow_host")]
    pub allow_hosts: Vec<String>,

    /// A secret that clients must present to run tasks and read /metrics: `Authorization:
    /// Bearer TOKEN`, or `?token=TOKEN` in the URL for browsers. /healthz and the page stay
    /// open.
    #[arg(
        long,
        env = "TASKHOST_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    #[serde(serialize_with = "redacted")]
    pub token: Option<String>,

    /// Read the token from this file (its first line), so it does not show in `ps`.
    #[arg(long, value_name = "FILE", env = "TASKHOST_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Serve without a token on an address other machines can reach: anyone who reaches the
    /// port can run tasks.
    #[arg(long, conflicts_with_all = ["token", "token_file"], env = "TASKHOST_NO_TOKEN")]
    pub no_token: bool,

    /// Certificate chain (PEM) to serve wss:// and https:// with; needs --tls-key.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        env = "TASKHOST_TLS_CERT"
    )]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_cert",
        env = "TASKHOST_TLS_KEY"
    )]
    pub tls_key: Option<PathBuf>,

    /// Most connections open at once; past it, new ones are answered 503 and closed
    /// (default: the open-files limit less room for the tasks folder and the cache).
    #[arg(env = "TASKHOST_MAX_CONNECTIONS", long)]
    pub max_connections: Option<usize>,

    /// Most connections open at once from one client address; past it, 429 (default: 256
    /// for addresses off this machine, none for loopback; a value given applies to every
    /// address, loopback included).
    #[arg(env = "TASKHOST_MAX_CONNECTIONS_PER_IP", long)]
    pub max_connections_per_ip: Option<usize>,

    /// The address of a reverse proxy in front of this server (repeat for more): requests
    /// from it name the client in X-Forwarded-For, which the per-address limits then use.
    #[arg(
        long = "trusted-proxy",
        value_name = "ADDR",
        env = "TASKHOST_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    #[serde(rename = "trusted_proxy")]
    pub trusted_proxies: Vec<IpAddr>,

    /// Tasks one client address may have queued or running at once, over all its
    /// connections; past it, `queue_full` (default: --max-connection-tasks for addresses off
    /// this machine, none for loopback; a value given applies to every address).
    #[arg(env = "TASKHOST_MAX_ADDRESS_TASKS", long)]
    pub max_address_tasks: Option<usize>,

    /// Bytes of task inputs the server holds at once, queued or running; past it, new tasks
    /// are rejected with `queue_full`.
    #[arg(long, default_value_t = 256 << 20, env = "TASKHOST_QUEUE_BYTES")]
    pub queue_bytes: u64,

    /// Bytes of messages waiting for one client's socket; past it, messages a later one
    /// supersedes (progress, broadcasts) are dropped for that client and others wait.
    #[arg(long, default_value_t = 8 << 20, env = "TASKHOST_OUTBOX_BYTES")]
    pub outbox_bytes: usize,

    /// How long a client may leave its socket unread (the server's writes blocked) before it
    /// is closed with 1008, in milliseconds.
    #[arg(long, default_value_t = 10_000, env = "TASKHOST_SLOW_CLIENT_MS")]
    pub slow_client_ms: u64,

    /// How often the server pings an idle client, in milliseconds; a client that does not
    /// answer by the next ping is closed.
    #[arg(long, default_value_t = 30_000, env = "TASKHOST_PING_INTERVAL_MS")]
    pub ping_interval_ms: u64,

    /// How long a frame may take to arrive once it has started, in milliseconds; past it the
    /// connection is closed with 1008.
    #[arg(long, default_value_t = 30_000, env = "TASKHOST_FRAME_TIMEOUT_MS")]
    pub frame_timeout_ms: u64,

    /// On Ctrl-C or SIGTERM, how long /healthz answers 503 while tasks are still taken, so a
    /// load balancer can stop sending clients here first, in milliseconds.
    #[arg(long, default_value_t = 0, env = "TASKHOST_DRAIN_MS")]
    pub drain_ms: u64,

    /// Log lines as `text` (for people) or `json` (one object a line, for log collectors).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "TASKHOST_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Do not watch the tasks folder: modules load at start only.
    #[arg(env = "TASKHOST_NO_WATCH", long)]
    pub no_watch: bool,

    /// How long a task's terminal message is kept after it ended, for `attach` and for
    /// repeated idempotency keys: `10m`, `90s`, `1h30m` (0: keep none).
    #[arg(
        long,
        default_value = "10m",
        value_parser = humantime::parse_duration,
        env = "TASKHOST_RESULT_TTL"
    )]
    #[serde(serialize_with = "as_humantime")]
    pub result_ttl: Duration,

    /// Bytes of kept terminal messages; past it the oldest are dropped first (an `attach` to
    /// one of them gets `not_found`).
    #[arg(long, default_value_t = 64 << 20, env = "TASKHOST_RESULT_BYTES")]
    pub result_bytes: u64,

    /// Running tasks one connection may be attached to at once (by `attach` or a repeated
    /// `key`); past it, `attach_limit`.
    #[arg(long, default_value_t = 1000, env = "TASKHOST_MAX_ATTACHED")]
    pub max_attached: usize,

    /// Dead letters kept (tasks that failed every attempt their manifest allowed); past it
    /// the oldest are dropped.
    #[arg(long, default_value_t = 1000, env = "TASKHOST_DEAD_LETTERS")]
    pub dead_letters: usize,

    /// Bytes of dead letters kept (their errors and inputs); past it the oldest are dropped.
    #[arg(long, default_value_t = 16 << 20, env = "TASKHOST_DEAD_LETTER_BYTES")]
    pub dead_letter_bytes: u64,
    /// Folder of the tasks' data: key-value stores (kv/NAME.sqlite) and embedded SQL
    /// databases (sql/NAME.sqlite), kept across restarts.
    #[arg(long, default_value = "data", env = "TASKHOST_DATA_DIR")]
    pub data_dir: PathBuf,

    /// A database tasks may be granted (`sql = "NAME"` in a manifest), as NAME=URL:
    /// postgres://USER:PASSWORD@HOST/DB (pooled in the host) or sqlite://PATH (repeat for
    /// more). A granted name not given here is an embedded SQLite file under --data-dir.
    #[arg(long = "database", value_name = "NAME=URL", env = "TASKHOST_DATABASE")]
    #[serde(rename = "database", serialize_with = "redacted_urls")]
    pub databases: Vec<String>,

    /// The SMTP relay tasks granted `mail = true` send through: smtp://HOST:PORT (add
    /// ?tls=required for STARTTLS), smtps://HOST:PORT for TLS from the start, with
    /// USER:PASSWORD@ to log in. Without it, mail is checked but not sent.
    #[arg(
        long,
        value_name = "URL",
        env = "TASKHOST_SMTP",
        hide_env_values = true
    )]
    #[serde(serialize_with = "redacted_url")]
    pub smtp: Option<String>,

    /// Certificates (a PEM file) to trust for the relay's TLS beside the public roots: a
    /// private relay's CA, or its self-signed certificate. The --smtp URL must ask for TLS.
    #[arg(long, value_name = "FILE", env = "TASKHOST_SMTP_CA")]
    pub smtp_ca: Option<PathBuf>,

    /// The sender of the mail tasks send.
    #[arg(
        long,
        value_name = "ADDRESS",
        default_value = "taskhost@localhost",
        env = "TASKHOST_MAIL_FROM"
    )]
    pub mail_from: String,

    /// Bytes of keys and values one key-value store (`kv = "STORE"`) may hold; a write that
    /// would grow a store past it is refused (`limit_reached`), deletes always go through.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20, env = "TASKHOST_KV_BYTES")]
    pub kv_bytes: u64,

    /// HTTP requests one task may make (`http` grant); each redirect followed counts as one.
    #[arg(
        long,
        value_name = "N",
        default_value_t = HttpCaps::default().max_requests,
        env = "TASKHOST_HTTP_REQUESTS"
    )]
    pub http_requests: u32,

    /// Bytes one HTTP request of a task may send, its headers and body together.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = HttpCaps::default().max_request_bytes,
        env = "TASKHOST_HTTP_REQUEST_BYTES"
    )]
    pub http_request_bytes: u64,

    /// Bytes of HTTP responses one task may receive over all its requests, headers and
    /// bodies; past it the response is cut off and the call fails (`limit_reached`).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = HttpCaps::default().max_response_bytes,
        env = "TASKHOST_HTTP_RESPONSE_BYTES"
    )]
    pub http_response_bytes: u64,

    /// Share tasks with other nodes through a NATS JetStream broker, nats://HOST:PORT
    /// (docs/SCALING.md): tasks go to a work-queue stream that every node pulls from, results
    /// to a key-value bucket. Without it, the queue and the results are this process's own.
    #[arg(
        long,
        value_name = "URL",
        env = "TASKHOST_NATS",
        hide_env_values = true
    )]
    #[serde(serialize_with = "redacted_url")]
    pub nats: Option<String>,

    /// With --nats: the JetStream stream the nodes share (its name prefixes the subjects,
    /// the consumer and the results bucket). Nodes that work together use the same one.
    #[arg(long, default_value = "taskhost", env = "TASKHOST_NATS_STREAM")]
    pub nats_stream: String,

    /// With --nats: how long the broker waits for a node's ack (or heartbeat) before it hands
    /// the task to another node; a node killed mid-task is noticed after this long. Running
    /// tasks send a heartbeat every third of it. Set when the stream's consumer is created.
    #[arg(
        long,
        default_value = "30s",
        value_parser = humantime::parse_duration,
        env = "TASKHOST_NATS_ACK_WAIT"
    )]
    #[serde(serialize_with = "as_humantime")]
    pub nats_ack_wait: Duration,

    /// With --nats: this node's name, unique among the nodes (letters, digits, - and _):
    /// outcomes and progress travel back to the submitter's node by it. Default: the host
    /// name and the process id.
    #[arg(long, value_name = "NAME", env = "TASKHOST_NODE_NAME")]
    pub node_name: Option<String>,

    /// Run echo, fib, slow and spin as plain Rust functions in the host instead of sandboxes:
    /// the benchmark's native baseline, or a fast path for trusted code. No isolation.
    #[arg(env = "TASKHOST_NATIVE", long)]
    pub native: bool,
}

/// The validated settings the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub tasks_dir: PathBuf,
    /// Tasks running at once; also the size of the sandbox instance pool.
    pub task_workers: usize,
    /// Tasks that may wait beyond `task_workers` before new ones are rejected `queue_full`.
    pub queue: usize,
    /// Tasks one connection may have queued or running (0: no limit).
    pub max_connection_tasks: usize,
    pub default_task: String,
    /// Limits a task gets when neither its manifest nor its client lowers them; also maxima.
    pub limits: Limits,
    /// Bytes of memories and tables all running tasks may hold together (`--memory-budget`).
    pub memory_budget: u64,
    pub max_frame: usize,
    pub max_output: usize,
    /// How long running tasks may go on after a shutdown signal.
    pub grace: Duration,
    /// Where compiled code is cached; `None` compiles at every start.
    pub cache_dir: Option<PathBuf>,
    /// Whether changes in the tasks folder are picked up while running.
    pub watch: bool,
    /// Whether the tasks' compiled functions are named in /tmp/perf-PID.map (`--perf-map`).
    pub perf_map: bool,
    /// Slots of the sandbox pool warmed at start (at most `task_workers`).
    pub warm_slots: usize,
    /// Web origins allowed to open WebSocket connections beyond the local ones (`*`: any,
    /// `null`: pages from files and sandboxed frames).
    pub allowed_origins: Vec<String>,
    /// Host names the server answers to beyond loopback names and its listening address.
    pub allowed_hosts: Vec<String>,
    /// The secret clients must present for the task channel and /metrics, if any.
    pub token: Option<Secret>,
    /// Certificate and key files, when the port serves TLS.
    pub tls: Option<TlsFiles>,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections from one address; `None` is the default rule (256 for other
    /// machines, no cap for loopback).
    pub max_connections_per_ip: Option<usize>,
    /// Reverse proxies whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// Tasks one address may have queued or running; `None` is the default rule (the
    /// per-connection cap for other machines, no cap for loopback).
    pub max_address_tasks: Option<usize>,
    /// Bytes of task inputs held at once.
    pub queue_bytes: u64,
    /// Bytes each connection's outbox holds.
    pub outbox_bytes: usize,
    /// How long a client's socket may stay unwritable before it is closed.
    pub slow_client: Duration,
    /// How often an idle client is pinged, and how long it has to answer.
    pub ping_interval: Duration,
    /// How long a frame may take to arrive once started.
    pub frame_timeout: Duration,
    /// How long /healthz answers 503 before a shutdown stops taking tasks.
    pub drain: Duration,
    /// How long terminal messages are kept (`--result-ttl`).
    pub result_ttl: Duration,
    /// Bytes of kept terminal messages (`--result-bytes`).
    pub result_bytes: u64,
    /// Running tasks one connection may be attached to (`--max-attached`).
    pub max_attached: usize,
    /// Dead letters kept, by count and bytes.
    pub dead_letters: usize,
    pub dead_letter_bytes: u64,
    /// Where the capabilities keep their data, and the operator's databases and relay.
    pub capabilities: crate::capabilities::Settings,
    /// The broker the nodes share (`--nats`), if any.
    pub nats: Option<NatsSettings>,
}

/// How this node joins the others through NATS JetStream (`--nats` and its companions).
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// The broker's URL; `url.shown()` is the one for logs and clients' messages, without its
    /// password.
    pub url: Secret,
    /// The stream's name: also the prefix of every subject, the consumer and the bucket.
    pub stream: String,
    pub ack_wait: Duration,
    /// A subject token: letters, digits, `-` and `_`.
    pub node: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The PEM files of a TLS certificate chain and its key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Connections from one address off this machine, by default (`--max-connections-per-ip`).
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;

/// Open files kept for other uses than connections (module files, the cache, the log) when
/// `--max-connections` is derived from the open-files limit.
const RESERVED_FILES: u64 = 128;

/// A duration as `--result-ttl` takes it (`10m`), for `--print-config`.
fn as_humantime<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&humantime::format_duration(*duration).to_string())
}

/// A secret, left out of `--print-config`'s output (which says in a comment that it is set).
fn redacted<S: Serializer>(_: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_none()
}

impl Options {
    /// `--nats` and its companions, checked: names that must be subject tokens are.
    fn nats_settings(&self) -> anyhow::Result<Option<NatsSettings>> {
        let Some(url) = &self.nats else {
            return Ok(None);
        };
        let token = |text: &str| {
            !text.is_empty()
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !token(&self.nats_stream) {
            bail!(
                "--nats-stream {:?}: use letters, digits, - and _ only (it names a stream and \
                 prefixes subjects)",
                self.nats_stream
            );
        }
        let node = match &self.node_name {
            Some(name) if token(name) => name.clone(),
            Some(name) => bail!(
                "--node-name {name:?}: use letters, digits, - and _ only (it is a subject token)"
            ),
            None => default_node_name(),
        };
        if self.nats_ack_wait < Duration::from_millis(300) {
            bail!(
                "--nats-ack-wait {} is too short for a heartbeat every third of it: use 300ms or more",
                humantime::format_duration(self.nats_ack_wait)
            );
        }
        Ok(Some(NatsSettings {
            url: Secret::url(url),
            stream: self.nats_stream.clone(),
            ack_wait: self.nats_ack_wait,
            node,
        }))
    }

    /// The options from the process's arguments, its TASKHOST_* variables and the `--config`
    /// file, in that order of precedence. Exits with clap's message on bad flags or `--help`.
    pub fn load() -> anyhow::Result<Options> {
        Options::load_from(std::env::args_os().collect())
    }

    /// [`Options::load`] with these arguments (the program's name first).
    pub fn load_from(mut args: Vec<OsString>) -> anyhow::Result<Options> {
        let command = Options::command();
        let matches = command.clone().get_matches_from(args.clone());
        if let Some(path) = matches.get_one::<PathBuf>("config") {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("could not read --config {}", path.display()))?;
            let table: toml::Table = toml::from_str(&text).map_err(|error| {
                anyhow::anyhow!(
                    "--config {} is not TOML: {}",
                    path.display(),
                    error.message()
                )
            })?;
            for (key, value) in table {
                let long = key.replace('_', "-");
                // Actions, not settings: a file that asked for them would stop the server
                // from serving.
                if matches!(long.as_str(), "completions" | "man") {
                    bail!(
                        "--config {}: {key:?} prints and exits, it is not a setting; pass \
                         --{long} on the command line",
                        path.display()
                    );
                }
                let Some(arg) = command
                    .get_arguments()
                    .find(|arg| arg.get_long() == Some(long.as_str()))
                else {
                    bail!(
                        "--config {}: there is no option {key:?}; the keys are the long flags \
                         of `taskhost --help`, without their dashes",
                        path.display()
                    );
                };
                // Flags and the environment win over the file.
                if matches!(
                    matches.value_source(arg.get_id().as_str()),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                ) {
                    continue;
                }
                let flag = format!("--{long}");
                let items = match value {
                    toml::Value::Array(items) => items,
                    value => vec![value],
                };
                for item in items {
                    match item {
                        toml::Value::Boolean(true) => args.push(flag.clone().into()),
                        toml::Value::Boolean(false) => {}
                        toml::Value::String(text) => args.push(format!("{flag}={text}").into()),
                        other => args.push(format!("{flag}={other}").into()),
                    }
                }
            }
            let matches = command.get_matches_from(args);
            return Ok(Options::from_arg_matches(&matches)?);
        }
        Ok(Options::from_arg_matches(&matches)?)
    }

    /// The options as TOML, for `--print-config`: a file `--config` takes back. The token is
    /// never printed; a comment says when one is set.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        let mut text = toml::to_string(self).context("could not print the configuration")?;
        if self.token.is_some() {
            text.push_str("# token: set (not printed)\n");
        }
        Ok(text)
    }

    /// Checks the options and turns them into a [`Config`].
    pub fn validate(&self) -> anyhow::Result<Config> {
        if self.task_workers == 0 {
            bail!("--task-workers must be at least 1");
        }
        if self.timeout_ms == 0 {
            bail!("--timeout-ms must be at least 1");
        }
        if self.memory < 64 * 1024 {
            bail!(
                "--memory {} is below one WebAssembly page (65536 bytes): no module could start",
                self.memory
            );
        }
        if let Some(budget) = self.memory_budget
            && budget < self.memory
        {
            bail!(
                "--memory-budget {budget} is below --memory {}: a task could never use its \
                 whole limit; raise --memory-budget or lower --memory",
                self.memory
            );
        }
        if self.max_frame < 1024 {
            bail!(
                "--max-frame {} is too small to carry a task message",
                self.max_frame
            );
        }
        if crate::registry::task_name(std::path::Path::new(&format!("{}.wasm", self.default_task)))
            .is_none()
        {
            bail!(
                "--default-task {:?} is not a task name (a-z, 0-9, _ and -)",
                self.default_task
            );
        }
        let token = self.read_token()?;
        if token.is_none() && !self.no_token && !self.listen.ip().is_loopback() {
            bail!(
                "refusing to listen on {} without a token: other machines can reach it, and \
                 anyone who does could run tasks. Pass --token TOKEN (or TASKHOST_TOKEN, or \
                 --token-file FILE) and give clients the token, or --no-token to serve \
                 anyone who reaches the port",
                self.listen
            );
        }
        Ok(Config {
            tasks_dir: self.tasks.clone(),
            task_workers: self.task_workers,
            queue: self.queue,
            max_connection_tasks: self
                .max_connection_tasks
                .unwrap_or_else(|| (self.task_workers.saturating_add(self.queue) / 2).max(1)),
            default_task: self.default_task.clone(),
            limits: Limits {
                timeout_ms: self.timeout_ms,
                fuel: self.fuel,
                memory_bytes: self.memory,
            },
            memory_budget: self
                .memory_budget
                .unwrap_or_else(|| default_memory_budget(self.memory)),
            max_frame: self.max_frame,
            max_output: self.max_output,
            grace: Duration::from_millis(self.grace_ms),
            cache_dir: if self.no_cache {
                None
            } else {
                self.cache_dir.clone().or_else(default_cache_dir)
            },
            watch: !self.no_watch,
            perf_map: self.perf_map,
            warm_slots: match self.warm_slots {
                Some(slots) => slots.min(self.task_workers),
                None if self.native => 0,
                None => self.task_workers,
            },
            allowed_origins: self.allow_origins.clone(),
            allowed_hosts: self.allow_hosts.clone(),
            token,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            max_connections: self
                .max_connections
                .unwrap_or_else(|| default_max_connections(open_files_limit())),
            max_connections_per_ip: self.max_connections_per_ip,
            trusted_proxies: self.trusted_proxies.clone(),
            max_address_tasks: self.max_address_tasks,
            queue_bytes: self.queue_bytes,
            outbox_bytes: self.outbox_bytes,
            slow_client: Duration::from_millis(self.slow_client_ms.max(1)),
            ping_interval: Duration::from_millis(self.ping_interval_ms.max(1)),
            frame_timeout: Duration::from_millis(self.frame_timeout_ms.max(1)),
            drain: Duration::from_millis(self.drain_ms),
            result_ttl: self.result_ttl,
            result_bytes: self.result_bytes,
            max_attached: self.max_attached,
            dead_letters: self.dead_letters,
            dead_letter_bytes: self.dead_letter_bytes,
            nats: self.nats_settings()?,
            capabilities: crate::capabilities::Settings {
                data_dir: self.data_dir.clone(),
                databases: parse_databases(&self.databases)?,
                smtp: self.smtp.as_deref().map(Secret::url),
                smtp_ca: self.smtp_ca.clone(),
                mail_from: self.mail_from.clone(),
                kv_bytes: self.kv_bytes,
                http: HttpCaps {
                    max_requests: self.http_requests,
                    max_request_bytes: self.http_request_bytes,
                    max_response_bytes: self.http_response_bytes,
                    ..HttpCaps::default()
                },
            },
        })
    }

    /// The token from --token, TASKHOST_TOKEN or --token-file.
    fn read_token(&self) -> anyhow::Result<Option<Secret>> {
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => token.clone(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .with_context(|| format!("could not read --token-file {}", file.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            (None, None) => return Ok(None),
        };
        let token = token.trim();
        if token.is_empty() {
            bail!("the token is empty: give a secret of at least 16 characters, or no --token");
        }
        if token.len() < 16 {
            bail!("the token is shorter than 16 characters: too easy to guess");
        }
        Ok(Some(Secret::token(token)))
    }
}

/// The soft limit on open files, after [`raise_open_files_limit`].
fn open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    }
}

/// Connections a server may hold with `open_files` file descriptors.
fn default_max_connections(open_files: u64) -> usize {
    usize::try_from(open_files.saturating_sub(RESERVED_FILES).max(16)).unwrap_or(usize::MAX)
}

/// Raises the soft limit on open files to the hard limit, so that connections are bounded by
/// --max-connections rather than by a low default soft limit (often 1024). Returns the soft
/// limit now in force.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

fn redacted_url<S: Serializer>(url: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => serializer.serialize_str(&without_password(url)),
        None => serializer.serialize_none(),
    }
}

fn redacted_urls<S: Serializer>(urls: &[String], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(urls.iter().map(|url| without_password(url)))
}

/// `--database NAME=URL` values as pairs.
fn parse_databases(databases: &[String]) -> anyhow::Result<Vec<(String, Secret)>> {
    databases
        .iter()
        .map(|entry| match entry.split_once('=') {
            Some((name, url)) if !name.is_empty() && !url.is_empty() => {
                Ok((name.to_owned(), Secret::url(url)))
            }
            _ => bail!(
                "--database {:?} is not NAME=URL (e.g. notes=postgres://app@localhost/notes)",
                without_password(entry)
            ),
        })
        .collect()
}

/// Half of this machine's memory, and at least `memory` (one task's limit); no budget when
/// the machine's memory is unknown.
fn default_memory_budget(memory: u64) -> u64 {
    crate::sandbox::physical_memory().map_or(u64::MAX, |total| (total / 2).max(memory))
}

/// `$XDG_CACHE_HOME/taskhost`, else `$HOME/.cache/taskhost`, else none.
fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("taskhost"))
}

impl Config {
    /// What the sandbox's engine is built with, for a pool of `instances` running tasks: the
    /// server's and the host index's engine alike.
    pub(crate) fn engine_settings(&self, instances: usize) -> EngineSettings {
        EngineSettings {
            instances,
            max_memory_bytes: self.limits.memory_bytes,
            memory_budget_bytes: self.memory_budget,
            cache_dir: self.cache_dir.clone(),
            perf_map: self.perf_map,
        }
    }

    /// The defaults of every flag, with the given tasks folder: what tests and embedders start from.
    /// The process's TASKHOST_* variables are not read: defaults are defaults.
    pub fn with_tasks_dir(tasks_dir: impl Into<PathBuf>) -> Config {
        let command = Options::command().mut_args(|arg| arg.env(None));
        let matches = command.get_matches_from(["taskhost"]);
        let mut options = Options::from_arg_matches(&matches).expect("the defaults parse");
        options.tasks = tasks_dir.into();
        options.validate().expect("the default options are valid")
    }
}

/// The host name (as a subject token) and the process id: unique on a network of hosts with
/// distinct names, and across restarts of one.
fn default_node_name() -> String {
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "node".to_owned());
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings print without their secrets, however they are printed: a log line with
    /// `?config`, a failed assertion.
    #[test]
    fn the_settings_debug_output_holds_no_secret() {
        let args = [
            "taskhost",
            "--token",
            "0123456789abcdef-token",
            "--database",
            "notes=postgres://app:hunter2@db.example/notes",
            "--smtp",
            "smtp://me:relay-password@relay.example:25",
            "--nats",
            "nats://node:nats-password@broker.example:4222",
        ];
        let options = Options::load_from(args.map(OsString::from).to_vec()).unwrap();
        let config = options.validate().unwrap();
        let shown = format!("{config:?}");
        for secret in [
            "0123456789abcdef-token",
            "hunter2",
            "relay-password",
            "nats-password",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("postgres://app:REDACTED@db.example/notes"),
            "{shown}"
        );
        assert_eq!(
            config.token.as_ref().map(Secret::expose),
            Some("0123456789abcdef-token")
        );
    }
}
