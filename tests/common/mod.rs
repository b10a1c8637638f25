//! The shared test harness: a real server on `127.0.0.1:0` and a WebSocket client that reads
//! JSON messages with a timeout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use taskhost::{App, Config, ProtocolApp};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a message it expects before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// The `taskhost` binary as the tests run it: with none of the `TASKHOST_*` variables of the
/// environment the tests run in, so that a developer's own settings (a token, say) do not
/// change what the tests see.
pub fn taskhost_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_taskhost"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TASKHOST_") {
            command.env_remove(name);
        }
    }
    command
}

/// The tasks folder `just build-guests` fills.
pub fn tasks_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tasks");
    assert!(
        dir.join("echo.wasm").is_file(),
        "{} has no echo.wasm: run `just build-guests` (or `just test`, which does) first",
        dir.display()
    );
    dir
}

/// The configuration tests start from: the bundled tasks, a pool small enough that many
/// servers can run side by side in one test process, a compile cache shared by the tests,
/// and no folder watching (the reload tests turn it on, on folders of their own).
pub fn test_config() -> Config {
    let mut config = Config::with_tasks_dir(tasks_dir());
    config.task_workers = 256;
    config.queue = 1000;
    config.grace = Duration::from_secs(5);
    config.cache_dir = Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compile-cache"));
    config.watch = false;
    // Warming holds worker permits for a moment after start; tests that count running tasks
    // must not see them. `lifecycle` tests warming on its own.
    config.warm_slots = 0;
    config
}

/// The entry for task `name` in a `list` or `tasks_changed` message.
pub fn listed<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["tasks"]
        .as_array()?
        .iter()
        .find(|task| task["name"] == name)
}

/// A tasks folder of a test's own, removed when dropped.
pub struct TaskFolder {
    pub path: PathBuf,
}

impl TaskFolder {
    /// A new folder holding copies of the given bundled task files (`"echo.wasm"`, ...).
    pub fn with(files: &[&str]) -> TaskFolder {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "tasks-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a tasks folder");
        let folder = TaskFolder { path };
        for file in files {
            folder.copy_in(file, file);
        }
        folder
    }

    /// Copies bundled file `from` in as `to`, the way the README recommends: written under a
    /// temporary name, then renamed into place.
    pub fn copy_in(&self, from: &str, to: &str) {
        let temporary = self.path.join(format!("{to}.tmp"));
        std::fs::copy(tasks_dir().join(from), &temporary)
            .unwrap_or_else(|e| panic!("copy {from}: {e}"));
        std::fs::rename(&temporary, self.path.join(to)).expect("rename into place");
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) {
        let temporary = self.path.join(format!("{name}.tmp"));
        std::fs::write(&temporary, contents).expect("write a file");
        std::fs::rename(&temporary, self.path.join(name)).expect("rename into place");
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.path.join(name)).expect("remove a file");
    }

    /// A configuration serving this folder, watched.
    pub fn config(&self) -> Config {
        let mut config = test_config();
        config.tasks_dir = self.path.clone();
        config.watch = true;
        config
    }
}

impl Drop for TaskFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A server running in this test's runtime; stopped (gracefully) on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// Starts the graceful shutdown and waits for the server to stop.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.handle.take() {
            Some(handle) => handle.await?,
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

pub async fn start_server() -> TestServer {
    start_server_with(test_config(), ProtocolApp).await
}

pub async fn start_server_with(config: Config, app: impl App) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let server = taskhost::Server::new(config, app).expect("the server starts");
    let (shutdown, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(server.serve(listener, stopped));
    TestServer {
        addr,
        shutdown: Some(shutdown),
        handle: Some(handle),
    }
}

/// A WebSocket client speaking the protocol's JSON.
pub struct Client {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The server's `hello`, read on connect.
    pub hello: Value,
    /// Whether `started` messages are read like the others; when `false` (the default) they
    /// are skipped, so that the tests written before `started` existed read what they did.
    pub show_started: bool,
    /// Whether `tasks_changed` pushes are read like the others; when `false` (the default)
    /// they are skipped, since one may come at any moment: a server pushes one when a large
    /// bundled task (`visits_py`, a Python runtime) finishes loading after start.
    pub show_task_lists: bool,
}

/// Whether `text` is a `tasks_changed` push.
fn is_task_list_push(text: &str) -> bool {
    text.starts_with(r#"{"type":"tasks_changed""#)
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        let mut client = Client {
            socket,
            hello: Value::Null,
            show_started: false,
            show_task_lists: false,
        };
        client.hello = client.recv().await;
        assert_eq!(
            client.hello["type"], "hello",
            "first message: {}",
            client.hello
        );
        client
    }

    pub async fn send(&mut self, message: Value) {
        self.send_text(&message.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.into()))
            .await
            .expect("send a frame");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.socket.send(message).await.expect("send a frame");
    }

    /// Submits a task and returns its `accepted` (or `rejected`) answer. Progress reports
    /// that arrive first are skipped: they are about tasks submitted before, since a task
    /// reports nothing before its `accepted`.
    pub async fn submit(&mut self, task: &str, input: Value) -> Value {
        self.send(json!({"type": "task", "task": task, "input": input}))
            .await;
        loop {
            let answer = self.recv().await;
            if answer["type"] != "progress" {
                return answer;
            }
        }
    }

    /// Submits a task and waits for its terminal message.
    pub async fn run(&mut self, task: &str, input: Value) -> Value {
        let accepted = self.submit(task, input).await;
        assert_eq!(accepted["type"], "accepted", "{accepted}");
        self.recv_for(accepted["task_id"].as_u64().unwrap()).await
    }

    /// The next JSON message; fails the test after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        self.recv_within(WAIT).await
    }

    /// The next JSON message within `wait`, counted across the frames it skips (pings, task
    /// lists, `started`): a server that pings every few seconds must not keep a test that
    /// waits for a message that never comes alive for ever.
    pub async fn recv_within(&mut self, wait: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no message within {wait:?}"))
                .expect("the connection closed")
                .expect("a frame");
            match frame {
                Message::Text(text) if !self.show_task_lists && is_task_list_push(&text) => {
                    continue;
                }
                Message::Text(text) => {
                    let message: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
                    if message["type"] == "started" && !self.show_started {
                        continue;
                    }
                    return message;
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame: {other:?}"),
            }
        }
    }

    /// The next raw frame, or `None` when the connection ends.
    pub async fn next_frame(&mut self) -> Option<Message> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("a frame or the end of the connection")
                .and_then(Result::ok);
            match &frame {
                Some(Message::Text(text)) if !self.show_task_lists && is_task_list_push(text) => {
                    continue;
                }
                _ => return frame,
            }
        }
    }

    /// Reads until a message of type `kind` satisfying `matches`, within `wait`; others
    /// are skipped.
    pub async fn recv_until(
        &mut self,
        wait: Duration,
        kind: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        let show_task_lists = self.show_task_lists;
        self.show_task_lists = show_task_lists || kind == "tasks_changed";
        let found = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = tokio::time::timeout(left, self.recv_within(wait))
                .await
                .unwrap_or_else(|_| panic!("no matching {kind} within {wait:?}"));
            if message["type"] == kind && matches(&message) {
                break message;
            }
        };
        self.show_task_lists = show_task_lists;
        found
    }

    /// Reads the terminal messages of the next `count` tasks to end, skipping `accepted` and
    /// `progress`; any other message fails the test.
    pub async fn ends(&mut self, count: usize) -> Vec<Value> {
        let mut ends = Vec::with_capacity(count);
        while ends.len() < count {
            let message = self.recv().await;
            match message["type"].as_str().unwrap_or_default() {
                "accepted" | "progress" => {}
                "finished" | "failed" => ends.push(message),
                _ => panic!("unexpected while waiting for tasks to end: {message}"),
            }
        }
        ends
    }

    /// Reads until the terminal message (`finished` or `failed`) of `task_id`.
    pub async fn recv_for(&mut self, task_id: u64) -> Value {
        loop {
            let message = self.recv_within(Duration::from_secs(60)).await;
            let terminal = message["type"] == "finished" || message["type"] == "failed";
            if terminal && message["task_id"] == task_id {
                return message;
            }
        }
    }

    /// Sends a request and returns its answer, skipping messages about tasks.
    pub async fn request(&mut self, message: Value) -> Value {
        self.send(message).await;
        loop {
            let reply = self.recv().await;
            // Skip what is about tasks and pushed lists: they are not answers.
            if reply.get("task_id").is_none() && reply["type"] != "tasks_changed" {
                return reply;
            }
        }
    }
}

/// Reads the binary's log until it says where it listens.
pub fn listening_address(child: &mut std::process::Child) -> String {
    use std::io::{BufRead, BufReader};
    let mut log = BufReader::new(child.stderr.take().unwrap());
    loop {
        let mut line = String::new();
        assert!(
            log.read_line(&mut line).unwrap() > 0,
            "taskhost exited before listening"
        );
        if let Some(rest) = line.split("address=").nth(1) {
            let address = rest.split_whitespace().next().unwrap().to_owned();
            std::thread::spawn(move || for _ in log.lines() {});
            return address;
        }
    }
}
