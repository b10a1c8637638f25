//! The HTTP side of the port, graceful shutdown, and an application with callbacks of its own.

use crate::common::listening_address;
use std::time::Duration;

use serde_json::{Value, json};
use taskhost::protocol::Reply;
use taskhost::{App, Ctx, Job, Outcome, Report};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::common::{start_server, start_server_with, test_config};

/// One plain HTTP GET; returns the status code and the body.
pub(crate) async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path).await
}

/// One plain HTTP request; returns the status code and the body.
pub async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_port_serves_the_page_health_and_metrics() {
    let server = start_server().await;
    let (status, page) = get(server.addr, "/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<html") && page.contains("ws://127.0.0.1:9501"),
        "the page"
    );

    let (status, body) = get(server.addr, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = http(server.addr, "HEAD", "/healthz").await;
    assert_eq!(
        (status, body.as_str()),
        (200, ""),
        "HEAD is GET without the body"
    );
    let (status, _) = http(server.addr, "POST", "/healthz").await;
    assert_eq!(status, 405);

    let mut client = server.client().await;
    client.run("echo", json!(1)).await;
    client.run("exit", json!(1)).await;
    client.submit("missing", json!(1)).await;
    let (status, metrics) = get(server.addr, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "taskhost_tasks_total{task=\"echo\",outcome=\"finished\"} 1",
        "taskhost_tasks_total{task=\"exit\",outcome=\"exit\"} 1",
        "taskhost_rejected_total{code=\"unknown_task\"} 1",
        "taskhost_connections 1",
        "taskhost_queue_depth 0",
        "taskhost_running_tasks 0",
        "taskhost_task_duration_seconds_count{task=\"echo\"} 1",
        "taskhost_task_duration_seconds_count{task=\"exit\"} 1",
        "taskhost_fuel_used_total ",
    ] {
        assert!(metrics.contains(line), "{line:?} missing from:\n{metrics}");
    }

    let (status, _) = get(server.addr, "/nowhere").await;
    assert_eq!(status, 404);
}

/// Sends a WebSocket upgrade request with `extra` headers; returns the status code.
pub async fn upgrade_status(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut status = [0_u8; 12];
    stream.read_exact(&mut status).await.unwrap();
    std::str::from_utf8(&status[9..12])
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_channel_is_get_slash_from_local_or_allowed_origins() {
    let mut config = test_config();
    config.allowed_origins = vec!["https://app.example".to_owned()];
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let addr = server.addr;
    assert_eq!(
        upgrade_status(addr, "GET", "/", "").await,
        101,
        "no Origin: not a browser"
    );
    assert_eq!(
        upgrade_status(addr, "GET", "/", "Origin: null\r\n").await,
        403,
        "a file or a sandboxed frame, unless --allow-origin null"
    );
    let own = format!("Origin: http://{addr}\r\n");
    assert_eq!(
        upgrade_status(addr, "GET", "/", &own).await,
        101,
        "the served page"
    );
    let allowed = "Origin: https://app.example\r\n";
    assert_eq!(upgrade_status(addr, "GET", "/", allowed).await, 101);
    let foreign = "Origin: https://evil.example\r\n";
    assert_eq!(upgrade_status(addr, "GET", "/", foreign).await, 403);
    assert_eq!(upgrade_status(addr, "GET", "/healthz", "").await, 404);
    assert_eq!(upgrade_status(addr, "POST", "/", "").await, 405);
}

/// Polls `/metrics` until the pool warming is over; returns the metrics then.
async fn metrics_once_warm(addr: std::net::SocketAddr) -> String {
    for _ in 0..500 {
        let (_, metrics) = get(addr, "/metrics").await;
        if metrics.contains("taskhost_pool_warming 0") {
            return metrics;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the pool was still warming after 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_warms_at_start_without_keeping_tasks_waiting() {
    let mut config = test_config();
    config.task_workers = 64;
    config.warm_slots = 64;

    // At rest, every slot is warmed, and none counts as a running task.
    let server = start_server_with(config.clone(), taskhost::ProtocolApp).await;
    let metrics = metrics_once_warm(server.addr).await;
    for line in ["taskhost_pool_warmed_slots 64", "taskhost_running_tasks 0"] {
        assert!(metrics.contains(line), "{line:?} missing from:\n{metrics}");
    }

    // A burst at once, while warming holds slots: every task runs (warming gives its
    // permits back as soon as one waits), more tasks than slots included.
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    for _ in 0..100 {
        client
            .send(json!({"type": "task", "task": "slow", "input": {"seconds": 0.1}}))
            .await;
    }
    let ends = client.ends(100).await;
    assert!(
        ends.iter().all(|end| end["type"] == "finished"),
        "{:?}",
        ends.iter().find(|end| end["type"] != "finished")
    );
    metrics_once_warm(server.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_and_queued_tasks_finish_in_the_grace_period() {
    let mut config = test_config();
    config.task_workers = 1;
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    let running = client.submit("slow", json!({"seconds": 1})).await;
    let queued = client.submit("echo", json!("late")).await;
    let addr = server.addr;
    let stopping = tokio::spawn(server.stop());

    let mut ends = Vec::new();
    let close = loop {
        match client.next_frame().await {
            Some(Message::Text(text)) => ends.push(serde_json::from_str::<Value>(&text).unwrap()),
            Some(Message::Close(frame)) => break frame,
            Some(_) => {}
            None => panic!("closed without a close frame"),
        }
    };
    assert_eq!(close.unwrap().code, CloseCode::Away);
    let end_of = |accepted: &Value| {
        ends.iter()
            .filter(|m| m["type"] == "finished" || m["type"] == "failed")
            .find(|m| m["task_id"] == accepted["task_id"])
            .cloned()
            .unwrap_or_else(|| panic!("no end for {accepted} in {ends:?}"))
    };
    assert_eq!(
        end_of(&running)["type"],
        "finished",
        "the running task finished in the grace period"
    );
    let queued_end = end_of(&queued);
    assert_eq!(
        queued_end["type"], "finished",
        "a queued task runs in the grace period too"
    );
    stopping.await.unwrap().unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_turns_health_503_while_tasks_are_still_taken_then_refuses_them() {
    let mut config = test_config();
    config.drain = Duration::from_millis(1500);
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let addr = server.addr;
    let mut client = server.client().await;
    // A running task keeps the server in its grace period after the drain.
    let long = client.submit("slow", json!({"seconds": 3})).await;
    let mut other = server.client().await;
    let stopping = tokio::spawn(server.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = get(addr, "/healthz").await;
    assert_eq!(status, 503, "a load balancer sees the drain");
    let finished = other.run("echo", json!("during the drain")).await;
    assert_eq!(
        finished["result"], "during the drain",
        "tasks are still taken"
    );
    let mut late = crate::common::Client::connect(&format!("ws://{addr}/")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    late.send(json!({"type": "task", "task": "echo", "input": 1}))
        .await;
    let refused = late.recv().await;
    assert_eq!(refused["type"], "rejected", "{refused}");
    assert_eq!(refused["error"]["code"], "shutdown", "{refused}");
    let ended = client.recv_for(long["task_id"].as_u64().unwrap()).await;
    assert_eq!(ended["type"], "finished", "{ended}");
    stopping.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_grace_period_running_tasks_fail_shutdown() {
    let mut config = test_config();
    config.grace = Duration::from_millis(300);
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    let accepted = client.submit("slow", json!({"seconds": 30})).await;
    let stopping = tokio::spawn(server.stop());
    let ended = client.recv_for(accepted["task_id"].as_u64().unwrap()).await;
    assert_eq!(ended["error"]["code"], "shutdown", "{ended}");
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("the server stops soon after the grace period")
        .unwrap()
        .unwrap();
}

/// An application of its own: a trusted native task beside the sandboxed ones, and results
/// sent to every connection, like a chat room.
struct ChatRoom;

impl App for ChatRoom {
    type Session = ();

    async fn on_task(&self, ctx: &Ctx<Self>, job: &Job) -> Outcome {
        if job.name() == "upper" {
            let text: String = serde_json::from_slice(&job.input).unwrap_or_default();
            return Outcome::finished(&text.to_uppercase());
        }
        ctx.run_in_sandbox(job).await
    }

    async fn on_finish(&self, ctx: &Ctx<Self>, report: Report) {
        if let Outcome::Finished { result, .. } = &report.outcome {
            // A connection that closes meanwhile simply misses the broadcast.
            ctx.broadcast(&Reply::Broadcast {
                task_id: report.job.task_id,
                task: report.job.name(),
                result,
            });
        }
        taskhost::app::protocol_app::deliver(ctx, report).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_supplies_its_own_task_and_finish_callbacks() {
    let server = start_server_with(test_config(), ChatRoom).await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    let accepted = alice.submit("upper", json!("hi bob, fuel: 0")).await;
    let broadcast = bob.recv().await;
    assert_eq!(broadcast["type"], "broadcast");
    assert_eq!(broadcast["task_id"], accepted["task_id"]);
    assert_eq!(broadcast["result"], "HI BOB, FUEL: 0");
    let finished = alice.recv_for(accepted["task_id"].as_u64().unwrap()).await;
    assert_eq!(finished["result"], "HI BOB, FUEL: 0");
    assert_eq!(finished["fuel_used"], 0, "ran natively, not in the sandbox");
    // Sandboxed tasks still run.
    let finished = bob.run("fib", json!(10)).await;
    assert_eq!(finished["result"], 55);
}

#[test]
fn an_impossible_pool_is_refused_at_start_with_what_to_change() {
    let mut config = test_config();
    config.task_workers = 50_000_000;
    let error = taskhost::Server::new(config, taskhost::ProtocolApp)
        .err()
        .expect("fifty million task workers cannot be reserved");
    let message = format!("{error:#}");
    assert!(message.contains("--task-workers"), "{message}");
}

/// The `taskhost` binary itself: started as a user would, stopped with SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_stops_gracefully_on_sigterm() {
    use std::process::Command;

    let help = crate::common::taskhost_command()
        .arg("--help")
        .output()
        .expect("run taskhost --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--task-workers",
        "--queue",
        "--max-frame",
        "[default: 127.0.0.1:9501]",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }

    let mut child = spawn_binary(&["--task-workers", "64", "--grace-ms", "5000"], "info");
    // The log says where it listens: "taskhost listening address=127.0.0.1:PORT".
    let address = listening_address(&mut child);
    let mut client = crate::common::Client::connect(&format!("ws://{address}/")).await;
    let accepted = client.submit("slow", json!({"seconds": 1})).await;
    assert_eq!(accepted["type"], "accepted");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());

    let finished = client.recv_for(accepted["task_id"].as_u64().unwrap()).await;
    assert_eq!(
        finished["result"], "success",
        "the running task finished: {finished}"
    );
    let close = loop {
        match client.next_frame().await {
            Some(Message::Close(frame)) => break frame,
            Some(_) => {}
            None => panic!("closed without a close frame"),
        }
    };
    assert_eq!(close.unwrap().code, CloseCode::Away);
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        exit.success(),
        "taskhost exits 0 after a graceful stop: {exit}"
    );
}

/// An application whose `task` callback never ends on its own.
struct NeverDone;

impl App for NeverDone {
    type Session = ();

    async fn on_task(&self, _: &Ctx<Self>, _: &Job) -> Outcome {
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wall_clock_limit_holds_for_any_task_callback() {
    let server = start_server_with(test_config(), NeverDone).await;
    let mut client = server.client().await;
    client
        .send(json!({"type": "task", "task": "echo", "limits": {"timeout_ms": 300}}))
        .await;
    let accepted = client.recv().await;
    let started = std::time::Instant::now();
    let ended = client.recv_for(accepted["task_id"].as_u64().unwrap()).await;
    assert_eq!(ended["error"]["code"], "timeout", "{ended}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// An application with bugs: its `task` callback panics on the input "boom", its `finish`
/// callback on the input "late boom", and its `message` callback on messages of type "boom".
struct Buggy;

impl App for Buggy {
    type Session = ();

    async fn on_message(
        &self,
        ctx: &Ctx<Self>,
        client: &taskhost::Client<()>,
        request: taskhost::protocol::Request,
    ) {
        if let taskhost::protocol::Request::Custom { kind, .. } = &request {
            assert_ne!(kind, "boom", "a bug in on_message");
        }
        taskhost::app::protocol_app::answer(ctx, client, request).await;
    }

    async fn on_task(&self, ctx: &Ctx<Self>, job: &Job) -> Outcome {
        assert_ne!(&job.input[..], b"\"boom\"", "a bug in on_task");
        ctx.run_in_sandbox(job).await
    }

    async fn on_finish(&self, ctx: &Ctx<Self>, report: Report) {
        assert_ne!(
            &report.job.input[..],
            b"\"late boom\"",
            "a bug in on_finish"
        );
        taskhost::app::protocol_app::deliver(ctx, report).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_callback_fails_its_task_or_message_and_the_server_serves_on() {
    let server = start_server_with(test_config(), Buggy).await;
    let mut client = server.client().await;
    let failed = client.run("echo", json!("boom")).await;
    assert_eq!(failed["type"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "internal", "{failed}");
    let error = client.request(json!({"type": "boom"})).await;
    assert_eq!(error["error"]["code"], "internal", "{error}");
    let finished = client.run("echo", json!("fine")).await;
    assert_eq!(finished["result"], "fine", "the same connection serves on");
    // A panic in the finish callback loses the submitter's terminal message (the callback is
    // what delivers it), and nothing else: the task ran, its result is kept for `attach`, and
    // the connection serves on.
    let accepted = client.submit("echo", json!("late boom")).await;
    let task_id = accepted["task_id"].as_u64().unwrap();
    let finished = client.run("echo", json!("after")).await;
    assert_eq!(finished["result"], "after", "{finished}");
    let mut other = server.client().await;
    other
        .send(json!({"type": "attach", "task_id": task_id}))
        .await;
    let kept = other.recv_for(task_id).await;
    assert_eq!(kept["result"], "late boom", "{kept}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_tasks_clamp_their_inputs_and_leave_the_runtime_free() {
    let server = start_server_with(test_config(), taskhost::NativeTasks).await;
    let mut client = server.client().await;
    client
        .send(
            json!({"type": "task", "task": "slow", "input": {"seconds": 1e300},
                     "limits": {"timeout_ms": 300}}),
        )
        .await;
    let accepted = client.recv().await;
    let ended = client.recv_for(accepted["task_id"].as_u64().unwrap()).await;
    assert_eq!(ended["error"]["code"], "timeout", "{ended}");
    let refused = client.run("fib", json!(93)).await;
    assert_eq!(refused["error"]["code"], "exit", "{refused}");
    // A long native fib runs on a blocking thread: echo on another connection stays quick.
    let mut busy = server.client().await;
    busy.send(json!({"type": "task", "task": "fib", "input": 38}))
        .await;
    let started = std::time::Instant::now();
    let finished = client.run("echo", json!(1)).await;
    assert_eq!(finished["result"], 1);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

/// Starts the `taskhost` binary on a free loopback port with the bundled tasks, the tests'
/// compile cache, `args`, and `RUST_LOG` set to `log_level` (`""`: the default), its stderr
/// piped.
fn spawn_binary(args: &[&str], log_level: &str) -> std::process::Child {
    spawn_binary_with_env(args, log_level, &[])
}

/// [`spawn_binary`] with extra environment variables.
pub(crate) fn spawn_binary_with_env(
    args: &[&str],
    log_level: &str,
    env: &[(&str, &str)],
) -> std::process::Child {
    let cache = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compile-cache");
    let mut command = crate::common::taskhost_command();
    command
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--tasks")
        .arg(crate::common::tasks_dir())
        .arg("--cache-dir")
        .arg(cache)
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::piped());
    if log_level.is_empty() {
        command.env_remove("RUST_LOG");
    } else {
        command.env("RUST_LOG", log_level);
    }
    command.spawn().expect("start taskhost")
}

/// The binary with `--log-format json`: every line is a JSON object, client text in them is
/// cut short, and a task's end is not logged at the default level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_json_clipped_and_quiet_per_task() {
    use std::io::{BufRead, BufReader};
    use std::process::Command;

    let mut child = spawn_binary(&["--task-workers", "8", "--log-format", "json"], "");
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    let address = loop {
        let mut line = String::new();
        assert!(
            log.read_line(&mut line).unwrap() > 0,
            "taskhost exited before listening"
        );
        let entry: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        lines.push(entry.clone());
        if entry["fields"]["message"] == "taskhost listening" {
            break entry["fields"]["address"].as_str().unwrap().to_owned();
        }
    };
    let mut client = crate::common::Client::connect(&format!("ws://{address}/")).await;
    assert_eq!(client.run("echo", json!(1)).await["result"], 1);
    let long_name = "x".repeat(100_000);
    let rejected = client.submit(&long_name, json!(1)).await;
    assert_eq!(rejected["error"]["code"], "unknown_task");
    let message = rejected["error"]["message"].as_str().unwrap();
    assert!(
        message.len() < 2_000,
        "the name is cut short: {} bytes",
        message.len()
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("send SIGTERM");
    let rest = tokio::task::spawn_blocking(move || {
        let rest: Vec<String> = log.lines().map_while(Result::ok).collect();
        child.wait().unwrap();
        rest
    })
    .await
    .unwrap();
    for line in rest {
        let entry: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        lines.push(entry);
    }
    for entry in &lines {
        assert_ne!(
            entry["fields"]["message"], "task ended",
            "per-task lines are at debug"
        );
        assert!(
            entry.to_string().len() < 4_000,
            "a log line stays short: {entry}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|e| e["fields"]["message"] == "task rejected"),
        "the rejection was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_option_can_come_from_the_environment() {
    let env = [
        ("TASKHOST_TASK_WORKERS", "7"),
        ("TASKHOST_MAX_FRAME", "4096"),
        ("TASKHOST_NO_WATCH", "true"),
    ];
    let mut child = spawn_binary_with_env(&[], "info", &env);
    let address = listening_address(&mut child);
    let mut client = crate::common::Client::connect(&format!("ws://{address}/")).await;
    let stats = client.request(json!({"type": "stats"})).await;
    assert_eq!(stats["task_workers"], 7, "{stats}");
    // A frame over the 4,096 bytes TASKHOST_MAX_FRAME allows closes the connection.
    client
        .send(json!({"type": "task", "task": "echo", "input": "x".repeat(5000)}))
        .await;
    assert!(
        matches!(client.next_frame().await, Some(Message::Close(_)) | None),
        "the frame limit came from the environment"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_config_file_is_overridden_by_the_environment_and_flags_and_prints_back() {
    let folder = crate::common::TaskFolder::with(&[]);
    let file = folder.path.join("taskhost.toml");
    std::fs::write(
        &file,
        "task-workers = 5\nallow_origin = [\"null\"]\nno_watch = true\n",
    )
    .unwrap();
    let print = |env: &[(&str, &str)], args: &[&str]| {
        let output = crate::common::taskhost_command()
            .arg("--config")
            .arg(&file)
            .args(args)
            .arg("--print-config")
            .envs(env.iter().copied())
            .output()
            .expect("run taskhost --print-config");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let printed = print(&[], &[]);
    assert!(printed.contains("task_workers = 5\n"), "{printed}");
    assert!(printed.contains("allow_origin = [\"null\"]"), "{printed}");
    assert!(printed.contains("no_watch = true"), "{printed}");
    assert!(print(&[("TASKHOST_TASK_WORKERS", "6")], &[]).contains("task_workers = 6\n"));
    let flagged = print(&[("TASKHOST_TASK_WORKERS", "6")], &["--task-workers", "7"]);
    assert!(flagged.contains("task_workers = 7\n"), "{flagged}");
    let secret = "a token nobody may print";
    let with_token = print(&[], &["--token", secret]);
    assert!(!with_token.contains(secret), "{with_token}");
    assert!(with_token.contains("# token: set"), "{with_token}");

    // What it prints, it takes back.
    let again = folder.path.join("printed.toml");
    std::fs::write(&again, &printed).unwrap();
    let output = crate::common::taskhost_command()
        .arg("--config")
        .arg(&again)
        .arg("--print-config")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap(), printed);

    std::fs::write(&file, "task_wokers = 5\n").unwrap();
    let output = crate::common::taskhost_command()
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no option \"task_wokers\""), "{stderr}");
}

/// `--host-index` (what `just bench` prints above its table) runs the real echo module through
/// the sandbox and a native micro-benchmark, and prints both as one line of JSON; without an
/// echo module it says where it looked.
#[test]
fn the_host_index_measures_the_sandbox_and_the_host() {
    let output = crate::common::taskhost_command()
        .arg("--host-index")
        .arg("--tasks")
        .arg(crate::common::tasks_dir())
        .arg("--no-cache")
        .output()
        .expect("run taskhost --host-index");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let index: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for figure in [
        "native_fib_ms",
        "sandbox_echo_us",
        "sandbox_echo_idle_us",
        "sandbox_echo_idle_reset_us",
        "sandbox_fib_ms",
    ] {
        let value = index[figure].as_f64().unwrap_or(0.0);
        assert!(value > 0.0 && value.is_finite(), "{figure}: {index}");
    }

    let empty = crate::common::TaskFolder::with(&[]);
    let output = crate::common::taskhost_command()
        .arg("--host-index")
        .arg("--tasks")
        .arg(&empty.path)
        .arg("--no-cache")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("echo.wasm") && stderr.contains("just build-guests"),
        "{stderr}"
    );
}
