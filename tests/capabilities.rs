//! Capabilities granted per module: key-value stores, publish/subscribe, SQL (SQLite and a
//! real PostgreSQL 15 started here in a temporary folder) and mail (a real SMTP sink,
//! Debian's python3-aiosmtpd), through the bundled tasks `counter`, `chat`, `notes`,
//! `query` and `send_mail`; every refusal path; and the binary keeping a store across a
//! restart.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use taskhost::Config;

use crate::common::{Client, TaskFolder, start_server_with, test_config};

/// A temporary folder of a test's own (a data dir, a database cluster), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    /// Under the system's temporary folder, which any user can reach (PostgreSQL runs
    /// as its own user when the tests run as root).
    fn new(what: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "taskhost-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temporary folder");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The tests' configuration with its own data folder.
fn config_with_data(data: &Path) -> Config {
    let mut config = test_config();
    config.capabilities.data_dir = data.to_owned();
    config
}

/// The `failed` message's error text.
fn failure(ended: &Value) -> String {
    assert_eq!(ended["type"], "failed", "{ended}");
    ended["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A request answered now: the next message is its answer, so nothing (a `published`,
/// say) was queued before it.
async fn nothing_queued(client: &mut Client) {
    client.send(json!({"type": "stats"})).await;
    let next = client.recv().await;
    assert_eq!(next["type"], "stats", "something came first: {next}");
}

async fn metrics(addr: SocketAddr) -> String {
    crate::lifecycle::http(addr, "GET", "/metrics").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_counts_and_a_copy_without_its_grant_is_refused() {
    let data = TempDir::new("data");
    let folder = TaskFolder::with(&["counter.wasm", "counter.toml"]);
    folder.copy_in("counter.wasm", "ungranted.wasm");
    let mut config = folder.config();
    config.capabilities.data_dir = data.0.clone();
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut client = server.client().await;

    let list = client.request(json!({"type": "list"})).await;
    let counter = crate::common::listed(&list, "counter").unwrap();
    assert_eq!(counter["capabilities"]["kv"], "counters", "{counter}");
    assert_eq!(counter["capabilities"]["mail"], false, "{counter}");
    let ungranted = crate::common::listed(&list, "ungranted").unwrap();
    assert_eq!(ungranted["capabilities"]["kv"], Value::Null, "{ungranted}");

    for expected in 1..=3 {
        let ended = client.run("counter", json!({"key": "visits"})).await;
        assert_eq!(ended["result"], expected, "{ended}");
    }
    assert_eq!(
        client.run("counter", json!({"key": "other"})).await["result"],
        1
    );

    let refused = client.run("ungranted", json!({"key": "visits"})).await;
    let message = failure(&refused);
    assert!(message.contains("not allowed"), "{message}");
    assert!(
        message.contains("key-value"),
        "names what was refused: {message}"
    );
    assert!(
        message.contains("[capabilities] kv"),
        "says how to grant it: {message}"
    );
    let metrics = metrics(server.addr).await;
    assert!(
        metrics.contains("taskhost_capability_refused_total{capability=\"kv\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("taskhost_capability_calls_total{capability=\"kv\",outcome=\"ok\"} 4"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_holds_at_most_kv_bytes_and_refuses_past_it() {
    let data = TempDir::new("data");
    let folder = TaskFolder::with(&["counter.wasm", "counter.toml"]);
    let mut config = folder.config();
    config.watch = false;
    config.capabilities.data_dir = data.0.clone();
    // --kv-bytes 100: `counter` keeps "count:KEY" = N, so one 60-byte key fits and a second
    // does not.
    config.capabilities.kv_bytes = 100;
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    let first = "a".repeat(60);
    let second = "b".repeat(60);

    assert_eq!(
        client.run("counter", json!({"key": first})).await["result"],
        1
    );
    let refused = client.run("counter", json!({"key": second})).await;
    let message = failure(&refused);
    assert!(message.contains("is full"), "{message}");
    assert!(
        message.contains("--kv-bytes"),
        "says which setting: {message}"
    );
    // A write that does not grow the store still goes through.
    assert_eq!(
        client.run("counter", json!({"key": first})).await["result"],
        2
    );
    let metrics = metrics(server.addr).await;
    assert!(
        metrics.contains(
            "taskhost_capability_calls_total{capability=\"kv\",outcome=\"limit_reached\"} 1"
        ),
        "{metrics}"
    );
    server.stop().await.unwrap();

    // The size is counted again from the file when the store opens after a restart.
    let mut config = folder.config();
    config.watch = false;
    config.capabilities.data_dir = data.0.clone();
    config.capabilities.kv_bytes = 100;
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    let refused = client.run("counter", json!({"key": second})).await;
    assert!(failure(&refused).contains("is full"), "{refused}");
    assert_eq!(
        client.run("counter", json!({"key": first})).await["result"],
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_store_cannot_see_another_s_keys() {
    let data = TempDir::new("data");
    let folder = TaskFolder::with(&[]);
    for (task, store) in [("in_a", "a"), ("in_b", "b"), ("also_a", "a")] {
        folder.copy_in("counter.wasm", &format!("{task}.wasm"));
        folder.write(
            &format!("{task}.toml"),
            format!("[capabilities]\nkv = \"{store}\"\n"),
        );
    }
    let mut config = folder.config();
    config.capabilities.data_dir = data.0.clone();
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    let key = json!({"key": "k"});
    assert_eq!(client.run("in_a", key.clone()).await["result"], 1);
    assert_eq!(client.run("in_a", key.clone()).await["result"], 2);
    assert_eq!(
        client.run("in_b", key.clone()).await["result"],
        1,
        "b has its own k"
    );
    assert_eq!(
        client.run("also_a", key.clone()).await["result"],
        3,
        "the same store a"
    );
    assert!(data.0.join("kv/a.sqlite").is_file());
    assert!(data.0.join("kv/b.sqlite").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_hear_published_messages_and_others_do_not() {
    let data = TempDir::new("data");
    let server = start_server_with(config_with_data(&data.0), taskhost::ProtocolApp).await;
    let mut listener = server.client().await;
    let mut bystander = server.client().await;
    let mut speaker = server.client().await;

    let list = listener.request(json!({"type": "list"})).await;
    let chat = crate::common::listed(&list, "chat").unwrap();
    assert_eq!(chat["capabilities"]["publish"], json!(["room:*"]), "{chat}");

    let subscribed = listener
        .request(json!({"type": "subscribe", "topic": "room:lobby"}))
        .await;
    assert_eq!(
        subscribed,
        json!({"type": "subscribed", "topic": "room:lobby"})
    );
    let other = bystander
        .request(json!({"type": "subscribe", "topic": "room:kitchen"}))
        .await;
    assert_eq!(other["type"], "subscribed");

    let said = json!({"room": "lobby", "user": "ann", "text": "hi"});
    let ended = speaker.run("chat", said).await;
    assert_eq!(ended["type"], "finished", "{ended}");
    assert_eq!(ended["result"]["text"], "hi");
    assert_eq!(ended["result"]["delivered"], 1, "one subscriber: {ended}");

    let heard = listener.recv().await;
    assert_eq!(heard["type"], "published", "{heard}");
    assert_eq!(heard["topic"], "room:lobby");
    assert_eq!(heard["data"]["user"], "ann");
    assert_eq!(heard["data"]["text"], "hi");
    nothing_queued(&mut bystander).await;
    nothing_queued(&mut speaker).await;

    let unsubscribed = listener
        .request(json!({"type": "unsubscribe", "topic": "room:lobby"}))
        .await;
    assert_eq!(
        unsubscribed,
        json!({"type": "unsubscribed", "topic": "room:lobby"})
    );
    let ended = speaker
        .run(
            "chat",
            json!({"room": "lobby", "user": "ann", "text": "anyone?"}),
        )
        .await;
    assert_eq!(ended["result"]["delivered"], 0, "{ended}");
    nothing_queued(&mut listener).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_capped_and_topics_checked() {
    let server = start_server_with(test_config(), taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    let bad = client
        .request(json!({"type": "subscribe", "topic": "room lobby"}))
        .await;
    assert_eq!(bad["type"], "error", "{bad}");
    assert_eq!(bad["error"]["code"], "bad_request");
    let long = client
        .request(json!({"type": "subscribe", "topic": "x".repeat(129)}))
        .await;
    assert_eq!(long["type"], "error", "{long}");
    for i in 0..taskhost::app::MAX_TOPICS_PER_CONNECTION {
        let ok = client
            .request(json!({"type": "subscribe", "topic": format!("t{i}")}))
            .await;
        assert_eq!(ok["type"], "subscribed", "{ok}");
    }
    let again = client
        .request(json!({"type": "subscribe", "topic": "t0"}))
        .await;
    assert_eq!(
        again["type"], "subscribed",
        "subscribing again is no change: {again}"
    );
    let over = client
        .request(json!({"type": "subscribe", "topic": "one-more"}))
        .await;
    assert_eq!(over["type"], "error", "{over}");
    assert!(
        over["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 64"),
        "{over}"
    );
    let metrics = metrics(server.addr).await;
    assert!(
        metrics.contains("taskhost_subscribe_refused_total{reason=\"too_many_topics\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_outside_the_grant_is_refused() {
    let folder = TaskFolder::with(&[]);
    folder.copy_in("chat.wasm", "news_only.wasm");
    folder.write("news_only.toml", "[capabilities]\npublish = [\"news\"]\n");
    let server = start_server_with(folder.config(), taskhost::ProtocolApp).await;
    let mut listener = server.client().await;
    let subscribed = listener
        .request(json!({"type": "subscribe", "topic": "room:lobby"}))
        .await;
    assert_eq!(subscribed["type"], "subscribed");
    let mut client = server.client().await;
    let refused = client
        .run(
            "news_only",
            json!({"room": "lobby", "user": "ann", "text": "hi"}),
        )
        .await;
    let message = failure(&refused);
    assert!(message.contains("not allowed"), "{message}");
    assert!(message.contains("room:lobby"), "names the topic: {message}");
    nothing_queued(&mut listener).await;
    let metrics = metrics(server.addr).await;
    assert!(
        metrics.contains("taskhost_capability_refused_total{capability=\"publish\"} 1"),
        "{metrics}"
    );
}

/// The SQL tests' shared checks, for any database the task `notes` and `query` use.
async fn notes_keep_sql_as_data(client: &mut Client) {
    let added = client.run("notes", json!({"add": "first"})).await;
    assert_eq!(added["type"], "finished", "{added}");
    assert_eq!(added["result"]["text"], "first");
    let sneaky = "x'); DROP TABLE notes; --";
    let added = client.run("notes", json!({"add": sneaky})).await;
    assert_eq!(added["result"]["text"], sneaky, "{added}");
    let listed = client.run("notes", json!({"list": true})).await;
    let notes = listed["result"]["notes"]
        .as_array()
        .expect("a list of notes");
    assert_eq!(
        notes.len(),
        2,
        "the table is still there, with both: {listed}"
    );
    assert_eq!(notes[0]["text"], sneaky, "newest first: {listed}");
    assert_eq!(notes[1]["text"], "first");
    let bad = client.run("notes", json!({"remove": 1})).await;
    assert_eq!(bad["type"], "failed", "{bad}");

    // Notes added at once each get an id of their own (they may choose the same one first).
    for n in 0..12 {
        client
            .send(
                json!({"type": "task", "task": "notes", "input": {"add": format!("at once {n}")}}),
            )
            .await;
    }
    let ends = client.ends(12).await;
    let mut ids: Vec<u64> = ends
        .iter()
        .map(|end| {
            assert_eq!(end["type"], "finished", "{end}");
            end["result"]["id"].as_u64().unwrap()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 12, "distinct ids: {ends:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_in_sqlite_keep_injected_sql_as_data() {
    let data = TempDir::new("data");
    let server = start_server_with(config_with_data(&data.0), taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    notes_keep_sql_as_data(&mut client).await;
    assert!(data.0.join("sql/notes.sqlite").is_file());
    let echoed = client
        .run(
            "query",
            json!({"sql": "SELECT ?1 AS said", "params": ["1; DROP TABLE x"]}),
        )
        .await;
    assert_eq!(
        echoed["result"]["rows"],
        json!([{"said": "1; DROP TABLE x"}]),
        "{echoed}"
    );
    // A response larger than the guest's first buffer (4 KiB) is kept by the host and
    // fetched whole: `taskhost.call` answers 2, then `response`.
    let long = "x".repeat(100_000);
    let echoed = client
        .run(
            "query",
            json!({"sql": "SELECT ?1 AS long", "params": [long]}),
        )
        .await;
    assert_eq!(echoed["result"]["rows"][0]["long"], long.as_str());
    let broken = client.run("query", json!({"sql": "SELEKT 1"})).await;
    let message = failure(&broken);
    assert!(message.contains("scratch"), "names the database: {message}");

    // A task without the grant is refused.
    let folder = TaskFolder::with(&[]);
    folder.copy_in("query.wasm", "query.wasm");
    let bare = start_server_with(folder.config(), taskhost::ProtocolApp).await;
    let mut client = bare.client().await;
    let refused = client.run("query", json!({"sql": "SELECT 1"})).await;
    let message = failure(&refused);
    assert!(
        message.contains("not allowed") && message.contains("SQL"),
        "{message}"
    );
}

/// A PostgreSQL 15 cluster in a temporary folder, stopped and removed on drop. Run as
/// the `postgres` user when the tests run as root (PostgreSQL refuses root).
struct Postgres {
    dir: TempDir,
    port: u16,
}

impl Postgres {
    const BIN: &'static str = "/usr/lib/postgresql/15/bin";

    fn start() -> Postgres {
        assert!(
            Path::new(Self::BIN).join("initdb").is_file(),
            "PostgreSQL 15 is not installed ({}/initdb): apt-get install postgresql \
             (.ci/run does)",
            Self::BIN
        );
        let dir = TempDir::new("pg");
        let cluster = dir.0.join("cluster");
        let as_root = unsafe_is_root();
        if as_root {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir.0)
                .status()
                .expect("chown");
            assert!(status.success(), "chown the cluster folder to postgres");
        }
        let port = free_port();
        let run = |program: &str, args: &[&str]| {
            let mut command = if as_root {
                let mut command = Command::new("runuser");
                command
                    .args(["-u", "postgres", "--"])
                    .arg(Path::new(Self::BIN).join(program));
                command
            } else {
                Command::new(Path::new(Self::BIN).join(program))
            };
            let output = command.args(args).output().expect("run a PostgreSQL tool");
            assert!(
                output.status.success(),
                "{program} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let cluster_arg = cluster.to_str().unwrap();
        run(
            "initdb",
            &[
                "-D",
                cluster_arg,
                "-U",
                "taskhost",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let options =
            format!("-p {port} -k {cluster_arg} -c listen_addresses=127.0.0.1 -c fsync=off");
        let log = dir.0.join("log");
        run(
            "pg_ctl",
            &[
                "-D",
                cluster_arg,
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        Postgres { dir, port }
    }

    fn url(&self) -> String {
        format!("postgres://taskhost@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let cluster = self.dir.0.join("cluster");
        let mut command = if unsafe_is_root() {
            let mut command = Command::new("runuser");
            command
                .args(["-u", "postgres", "--"])
                .arg(Path::new(Self::BIN).join("pg_ctl"));
            command
        } else {
            Command::new(Path::new(Self::BIN).join("pg_ctl"))
        };
        let _ = command
            .args(["-D", cluster.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
}

/// Whether this process runs as root.
fn unsafe_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("its address")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notes_injection_cancel_and_timeout() {
    let postgres = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let data = TempDir::new("data");
    let folder = TaskFolder::with(&["notes.wasm", "notes.toml"]);
    folder.copy_in("query.wasm", "query.wasm");
    folder.write("query.toml", "[capabilities]\nsql = \"notes\"\n");
    let mut config = folder.config();
    config.capabilities.data_dir = data.0.clone();
    config.capabilities.databases = vec![(
        "notes".to_owned(),
        taskhost::config::Secret::url(postgres.url()),
    )];
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    notes_keep_sql_as_data(&mut client).await;
    assert!(
        !data.0.join("sql/notes.sqlite").exists(),
        "notes went to PostgreSQL"
    );
    let server_version = client
        .run(
            "query",
            json!({"sql": "SELECT current_setting('server_version') AS v"}),
        )
        .await;
    assert!(
        server_version["result"]["rows"][0]["v"]
            .as_str()
            .unwrap()
            .starts_with("15"),
        "{server_version}"
    );
    let echoed = client
        .run(
            "query",
            json!({"sql": "SELECT $1::text AS said", "params": ["'; DROP TABLE notes; --"]}),
        )
        .await;
    assert_eq!(
        echoed["result"]["rows"][0]["said"],
        "'; DROP TABLE notes; --"
    );

    // A cancel arrives promptly during a slow query.
    let accepted = client
        .submit("query", json!({"sql": "SELECT pg_sleep(30)"}))
        .await;
    let task_id = accepted["task_id"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled_at = Instant::now();
    client
        .send(json!({"type": "cancel", "task_id": task_id}))
        .await;
    let ended = client.recv_for(task_id).await;
    assert_eq!(ended["error"]["code"], "cancelled", "{ended}");
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        cancelled_at.elapsed()
    );

    // The task's wall clock bounds a slow query.
    client
        .send(
            json!({"type": "task", "task": "query", "input": {"sql": "SELECT pg_sleep(30)"},
                     "limits": {"timeout_ms": 500}}),
        )
        .await;
    let started = Instant::now();
    let accepted = client.recv().await;
    let ended = client.recv_for(accepted["task_id"].as_u64().unwrap()).await;
    assert_eq!(ended["error"]["code"], "timeout", "{ended}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // And the database stops them too: no pg_sleep is left running for long.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let running = client
            .run(
                "query",
                json!({"sql": "SELECT count(*)::int8 AS n FROM pg_stat_activity \
                               WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'"}),
            )
            .await;
        if running["result"]["rows"][0]["n"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a pg_sleep is still running: {running}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An SMTP sink (Debian's python3-aiosmtpd) that stores each mail it takes as a file.
struct SmtpSink {
    child: Child,
    port: u16,
    mails: TempDir,
}

impl SmtpSink {
    const SCRIPT: &'static str = r#"
import asyncio, os, ssl, sys
from aiosmtpd.controller import Controller

# TLS: "plain", "starttls" (required before MAIL) or "smtps" (TLS from the start).
out, tls = sys.argv[1], sys.argv[2]

class Store:
    async def handle_DATA(self, server, session, envelope):
        n = len(os.listdir(out))
        path = os.path.join(out, f"{n}.eml")
        with open(path + ".tmp", "wb") as f:
            f.write(("X-Envelope-To: " + ",".join(envelope.rcpt_tos) + "\r\n").encode())
            f.write(envelope.original_content or envelope.content)
        os.rename(path + ".tmp", path)
        return "250 Message accepted for delivery"

options = {}
if tls != "plain":
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[3], sys.argv[4])
    if tls == "starttls":
        options = {"tls_context": context, "require_starttls": True}
    else:
        options = {"ssl_context": context}
class OnPickedPort(Controller):
    """Listens on a port the kernel picks (port 0); the controller's own first connection
    goes to that port, read from the socket."""
    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()

controller = OnPickedPort(Store(), hostname="127.0.0.1", port=0, **options)
controller.start()
print("ready", controller.port, flush=True)
sys.stdin.read()
controller.stop()
"#;

    fn start() -> SmtpSink {
        SmtpSink::start_with("plain", &[])
    }

    /// A sink that speaks TLS (`tls`: "starttls" or "smtps") with the certificate and key
    /// files `cert_and_key`.
    fn start_with(tls: &str, cert_and_key: &[&Path]) -> SmtpSink {
        let mails = TempDir::new("mails");
        let script = mails.0.with_extension("py");
        std::fs::write(&script, Self::SCRIPT).unwrap();
        // The sink listens on a port the kernel picks and says which: a port picked here
        // and passed on could be taken meanwhile by another test's connection.
        let mut child = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(&mails.0)
            .arg(tls)
            .args(cert_and_key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the SMTP sink (apt-get install python3-aiosmtpd)");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        let port = ready
            .trim()
            .strip_prefix("ready ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| {
                panic!("the SMTP sink did not start (python3-aiosmtpd?): it said {ready:?}")
            });
        SmtpSink { child, port, mails }
    }

    /// The mails taken so far, as text.
    fn mails(&self) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(&self.mails.0)
            .unwrap()
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|e| e == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|path| std::fs::read_to_string(path).unwrap())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.mails.0.with_extension("py"));
    }
}

/// The `taskhost` binary on a free port with the bundled tasks and `args`; killed on drop.
struct Binary {
    child: Child,
    addr: String,
}

impl Binary {
    fn start(args: &[&str]) -> Binary {
        Binary::start_in(&crate::common::tasks_dir(), args)
    }

    /// The binary serving the tasks folder `tasks`.
    fn start_in(tasks: &Path, args: &[&str]) -> Binary {
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compile-cache");
        let mut child = crate::common::taskhost_command()
            .args(["--listen", "127.0.0.1:0", "--no-watch", "--warm-slots", "0"])
            .args(args)
            .arg("--tasks")
            .arg(tasks)
            .arg("--cache-dir")
            .arg(cache)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start taskhost");
        let addr = crate::common::listening_address(&mut child);
        Binary { child, addr }
    }

    async fn client(&self) -> Client {
        Client::connect(&format!("ws://{}/", self.addr)).await
    }

    /// SIGTERM, then waits for the process to end.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_keeps_counting_across_a_restart() {
    let data = TempDir::new("data");
    let data_arg = data.0.to_str().unwrap().to_owned();
    let server = tokio::task::spawn_blocking(move || Binary::start(&["--data-dir", &data_arg]))
        .await
        .unwrap();
    let mut client = server.client().await;
    assert_eq!(
        client.run("counter", json!({"key": "k"})).await["result"],
        1
    );
    assert_eq!(
        client.run("counter", json!({"key": "k"})).await["result"],
        2
    );
    drop(client);
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
    let data_arg = data.0.to_str().unwrap().to_owned();
    let server = tokio::task::spawn_blocking(move || Binary::start(&["--data-dir", &data_arg]))
        .await
        .unwrap();
    let mut client = server.client().await;
    let third = client.run("counter", json!({"key": "k"})).await;
    assert_eq!(third["result"], 3, "kept across the restart: {third}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_sends_mail_through_a_real_relay_and_simulates_without_one() {
    let sink = tokio::task::spawn_blocking(SmtpSink::start).await.unwrap();
    let smtp = format!("smtp://127.0.0.1:{}", sink.port);
    let server = tokio::task::spawn_blocking(move || {
        Binary::start(&["--smtp", &smtp, "--mail-from", "robot@taskhost.test"])
    })
    .await
    .unwrap();
    let mut client = server.client().await;
    let mail = json!({"to": ["ann@example.com", "bob@example.org"], "template": "welcome",
                      "vars": {"name": "Ann"}});
    let ended = client.run("send_mail", mail.clone()).await;
    assert_eq!(ended["type"], "finished", "{ended}");
    assert_eq!(ended["result"]["delivered"], true, "{ended}");
    assert_eq!(ended["result"]["simulated"], false, "{ended}");
    let message_id = ended["result"]["message_id"].as_str().unwrap().to_owned();
    assert!(message_id.ends_with("@taskhost"), "{message_id}");
    let mails = sink.mails();
    assert_eq!(mails.len(), 1, "one mail reached the sink: {mails:?}");
    let taken = &mails[0];
    assert!(
        taken.contains("X-Envelope-To: ann@example.com,bob@example.org"),
        "{taken}"
    );
    assert!(taken.contains("Subject: Welcome, Ann!"), "{taken}");
    assert!(taken.contains("From: robot@taskhost.test"), "{taken}");
    assert!(taken.contains(&format!("<{message_id}>")), "{taken}");
    assert!(taken.contains("Hello Ann"), "{taken}");
    server.stop();

    // Without --smtp nothing is sent.
    let server = tokio::task::spawn_blocking(|| Binary::start(&[]))
        .await
        .unwrap();
    let mut client = server.client().await;
    let ended = client.run("send_mail", mail).await;
    assert_eq!(ended["result"]["delivered"], false, "{ended}");
    assert_eq!(ended["result"]["simulated"], true, "{ended}");
    assert_eq!(sink.mails().len(), 1, "the sink got nothing more");
}

/// A relay that requires STARTTLS, and one that speaks TLS from the start, each with a
/// self-signed certificate that `--smtp-ca` trusts; without it the certificate is refused
/// and the task says the mail was not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_sends_mail_over_starttls_and_smtps_to_a_relay_it_trusts() {
    let keys = TempDir::new("smtp-tls");
    std::fs::create_dir_all(&keys.0).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = keys.0.join("relay.pem");
    let key = keys.0.join("relay.key");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let mail = json!({"to": ["ann@example.com"], "template": "welcome", "vars": {"name": "Ann"}});

    for (tls, url) in [
        ("starttls", "smtp://127.0.0.1:{}?tls=required"),
        ("smtps", "smtps://127.0.0.1:{}"),
    ] {
        let sink = {
            let (cert, key) = (cert.clone(), key.clone());
            tokio::task::spawn_blocking(move || SmtpSink::start_with(tls, &[&cert, &key]))
                .await
                .unwrap()
        };
        let smtp = url.replace("{}", &sink.port.to_string());
        let ca = cert.to_str().unwrap().to_owned();
        let server = tokio::task::spawn_blocking(move || {
            Binary::start(&["--smtp", &smtp, "--smtp-ca", &ca])
        })
        .await
        .unwrap();
        let ended = server.client().await.run("send_mail", mail.clone()).await;
        assert_eq!(ended["result"]["delivered"], true, "{tls}: {ended}");
        let mails = sink.mails();
        assert_eq!(mails.len(), 1, "{tls}: {mails:?}");
        assert!(
            mails[0].contains("Subject: Welcome, Ann!"),
            "{tls}: {}",
            mails[0]
        );
        server.stop();

        // Without --smtp-ca the self-signed certificate is not trusted: nothing is sent.
        let smtp = url.replace("{}", &sink.port.to_string());
        let server = tokio::task::spawn_blocking(move || Binary::start(&["--smtp", &smtp]))
            .await
            .unwrap();
        let ended = server.client().await.run("send_mail", mail.clone()).await;
        assert_eq!(ended["type"], "failed", "{tls}: {ended}");
        assert!(ended.to_string().contains("--smtp-ca"), "{tls}: {ended}");
        assert_eq!(sink.mails().len(), 1, "{tls}: the sink got nothing more");
        server.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_delivers_chat_to_subscribers_only_and_refuses_ungranted_copies() {
    let data = TempDir::new("data");
    let folder = TaskFolder::with(&["chat.wasm", "chat.toml", "counter.wasm"]);
    let data_arg = data.0.to_str().unwrap().to_owned();
    let tasks = folder.path.clone();
    let server =
        tokio::task::spawn_blocking(move || Binary::start_in(&tasks, &["--data-dir", &data_arg]))
            .await
            .unwrap();
    let mut listener = server.client().await;
    let mut bystander = server.client().await;
    let subscribed = listener
        .request(json!({"type": "subscribe", "topic": "room:lobby"}))
        .await;
    assert_eq!(subscribed["type"], "subscribed");
    let mut speaker = server.client().await;
    let ended = speaker
        .run(
            "chat",
            json!({"room": "lobby", "user": "bob", "text": "hello"}),
        )
        .await;
    assert_eq!(ended["result"]["delivered"], 1, "{ended}");
    let heard = listener.recv().await;
    assert_eq!(heard["type"], "published");
    assert_eq!(heard["data"]["text"], "hello");
    nothing_queued(&mut bystander).await;
    let refused = speaker.run("counter", json!({"key": "k"})).await;
    assert!(failure(&refused).contains("not allowed"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_reaches_the_same_store_through_the_wit_interfaces() {
    let data = TempDir::new("data");
    let server = start_server_with(config_with_data(&data.0), taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    let list = client.request(json!({"type": "list"})).await;
    let component = crate::common::listed(&list, "counter_component").unwrap();
    assert_eq!(component["kind"], "component", "{component}");
    assert_eq!(
        client.run("counter", json!({"key": "k"})).await["result"],
        1
    );
    let ended = client.run("counter_component", json!({"key": "k"})).await;
    assert_eq!(
        ended["result"], 2,
        "the component counts in the same store: {ended}"
    );
    assert_eq!(
        client.run("counter", json!({"key": "k"})).await["result"],
        3
    );

    // Without the grant, the component is refused the same way.
    let folder = TaskFolder::with(&[]);
    folder.copy_in("counter_component.wasm", "bare.wasm");
    let bare = start_server_with(folder.config(), taskhost::ProtocolApp).await;
    let mut client = bare.client().await;
    let refused = client.run("bare", json!({"key": "k"})).await;
    assert!(failure(&refused).contains("not allowed"), "{refused}");
}
