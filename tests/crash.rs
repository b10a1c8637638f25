//! A crash: the `taskhost` binary killed with SIGKILL in the middle of its work, then started
//! again on the same port and tasks folder. Every client must see its connection end at once,
//! and the new process must serve with nothing of the old one's tasks: queued and running tasks
//! and their results are lost, task ids start again (docs/RELIABILITY.md).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Client, TaskFolder};

/// How soon after the kill every client must see its connection end.
const END_WITHIN: Duration = Duration::from_secs(5);

/// Connections under load when the server dies, and what each has in flight.
const CLIENTS: usize = 16;
const SLOW_PER_CLIENT: usize = 10;
const ECHO_PER_CLIENT: usize = 50;

/// A `taskhost` process, killed when dropped so that a failing test leaves none behind.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        // Already gone after the kill below, or after a failure: either is fine here.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary on `address` serving `tasks`, and returns once it says it is listening.
fn start(address: &str, tasks: &Path, cache: &Path) -> Process {
    let mut child = crate::common::taskhost_command()
        .args(["--listen", address, "--task-workers", "512"])
        .arg("--tasks")
        .arg(tasks)
        .arg("--cache-dir")
        .arg(cache)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start taskhost");
    // The log says where it listens: "taskhost listening address=127.0.0.1:PORT".
    let mut log = BufReader::new(child.stderr.take().expect("the log"));
    let started = Instant::now();
    loop {
        let mut line = String::new();
        let read = log.read_line(&mut line).expect("read the log");
        assert!(read > 0, "taskhost exited before listening on {address}");
        if line.contains("taskhost listening") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "taskhost did not listen within 60 s"
        );
    }
    std::thread::spawn(move || for _ in log.lines() {});
    Process(child)
}

/// A loopback address nobody listens on now.
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("its address").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_ends_every_connection_and_a_restart_starts_afresh() {
    let folder = TaskFolder::with(&["echo.wasm", "slow.wasm", "slow.toml"]);
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compile-cache");
    let address = free_address();
    let url = format!("ws://{address}/");
    let mut server = {
        let (address, tasks, cache) = (address.clone(), folder.path.clone(), cache.clone());
        tokio::task::spawn_blocking(move || start(&address, &tasks, &cache))
            .await
            .unwrap()
    };

    // Load: every client has slow tasks running and a burst of echo tasks sent but unread.
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut client = Client::connect(&url).await;
        for _ in 0..SLOW_PER_CLIENT {
            let accepted = client.submit("slow", json!({"seconds": 30})).await;
            assert_eq!(accepted["type"], "accepted", "{accepted}");
        }
        clients.push(client);
    }
    for client in &mut clients {
        for i in 0..ECHO_PER_CLIENT {
            client
                .send(json!({"type": "task", "task": "echo", "input": i}))
                .await;
        }
    }
    server.0.kill().expect("SIGKILL the server");

    // Every connection ends (a close or an error) within seconds; no slow task finished.
    let readers = clients.into_iter().map(|mut client| {
        tokio::spawn(async move {
            let mut slow_finished = 0;
            let ended = tokio::time::timeout(END_WITHIN, async {
                while let Some(frame) = client.next_frame().await {
                    if frame
                        .to_text()
                        .is_ok_and(|t| t.contains(r#""task":"slow""#))
                        && frame.to_text().is_ok_and(|t| t.contains(r#""finished""#))
                    {
                        slow_finished += 1;
                    }
                }
            })
            .await;
            (ended.is_ok(), slow_finished)
        })
    });
    for reader in futures_util::future::join_all(readers).await {
        let (ended, slow_finished) = reader.expect("a reader");
        assert!(
            ended,
            "a connection was still open {END_WITHIN:?} after the server was killed"
        );
        assert_eq!(slow_finished, 0, "a 30 s task cannot have finished");
    }
    let status = server.0.wait().expect("reap the server");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status}"
    );

    // The same port and folder serve again at once, with nothing of the old run's tasks.
    let _server = {
        let (address, tasks, cache) = (address.clone(), folder.path.clone(), cache.clone());
        tokio::task::spawn_blocking(move || start(&address, &tasks, &cache))
            .await
            .unwrap()
    };
    let mut client = Client::connect(&url).await;
    let stats = client.request(json!({"type": "stats"})).await;
    assert_eq!(
        (&stats["queued"], &stats["running"], &stats["completed"]),
        (&json!(0), &json!(0), &json!(0)),
        "no task of the killed process is kept: {stats}"
    );
    let accepted = client.submit("echo", json!({"after": "the crash"})).await;
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    assert_eq!(accepted["task_id"], 1, "task ids start again: {accepted}");
    let finished = client.recv_for(1).await;
    assert_eq!(
        finished["result"],
        json!({"after": "the crash"}),
        "{finished}"
    );
}
