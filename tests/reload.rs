//! A living tasks folder against a running server: modules and manifests added, replaced,
//! removed, written slowly or broken; pushed task lists; broadcast delivery; progress; the
//! compile cache across a restart.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Client, TaskFolder, listed, start_server_with, test_config};

/// How soon a change in the folder must be visible to clients.
const RELOAD: Duration = Duration::from_secs(1);

/// Waits for a pushed list in which `name` satisfies `check` (`None`: absent).
async fn pushed(client: &mut Client, name: &str, check: impl Fn(Option<&Value>) -> bool) -> Value {
    client
        .recv_until(RELOAD * 3, "tasks_changed", |list| {
            check(listed(list, name))
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_dropped_in_is_served_without_a_restart() {
    let folder = TaskFolder::with(&["echo.wasm"]);
    let server = start_server_with(folder.config(), taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    let dropped = Instant::now();
    folder.copy_in("fib.wasm", "fib.wasm");
    let list = pushed(&mut client, "fib", |t| {
        t.is_some_and(|t| t["state"] == "ready")
    })
    .await;
    assert!(dropped.elapsed() < RELOAD, "took {:?}", dropped.elapsed());
    let fib = listed(&list, "fib").unwrap();
    assert_eq!(fib["kind"], "module");
    assert_eq!(fib["hash"].as_str().unwrap().len(), 12);
    assert!(fib["loaded_at"].as_str().unwrap().ends_with('Z'));
    let finished = client.run("fib", json!(10)).await;
    assert_eq!(finished["result"], 55);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_module_serves_new_tasks_while_running_ones_finish_on_the_old() {
    let folder = TaskFolder::with(&[]);
    folder.copy_in("slow.wasm", "job.wasm");
    let server = start_server_with(folder.config(), taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    let old = client.submit("job", json!({"seconds": 1.5})).await;
    assert_eq!(old["type"], "accepted");
    tokio::time::sleep(Duration::from_millis(200)).await;

    folder.copy_in("echo.wasm", "job.wasm");
    let old_hash = {
        let list = client.request(json!({"type": "list"})).await;
        listed(&list, "job").unwrap()["hash"].clone()
    };
    pushed(&mut client, "job", |t| {
        t.is_some_and(|t| t["hash"] != old_hash)
    })
    .await;
    let new = client.run("job", json!("new behaviour")).await;
    assert_eq!(
        new["result"], "new behaviour",
        "the new version runs: {new}"
    );

    let old_end = client.recv_for(old["task_id"].as_u64().unwrap()).await;
    assert_eq!(
        old_end["result"], "success",
        "the old version finished its task: {old_end}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_module_is_unknown() {
    let folder = TaskFolder::with(&["echo.wasm", "fib.wasm"]);
    let server = start_server_with(folder.config(), taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    folder.remove("fib.wasm");
    pushed(&mut client, "fib", |t| t.is_none()).await;
    let rejected = client.submit("fib", json!(3)).await;
    assert_eq!(rejected["type"], "rejected");
    assert_eq!(rejected["error"]["code"], "unknown_task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_slowly_is_loaded_once_whole() {
    let folder = TaskFolder::with(&["echo.wasm"]);
    let server = start_server_with(folder.config(), taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    let bytes = std::fs::read(crate::common::tasks_dir().join("fib.wasm")).unwrap();
    let path = folder.path.join("fib.wasm");
    let writer = std::thread::spawn(move || {
        let mut file = std::fs::File::create(&path).unwrap();
        for piece in bytes.chunks(bytes.len() / 4 + 1) {
            file.write_all(piece).unwrap();
            file.flush().unwrap();
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    // Until the writer is done, no list may mention a failed or half-loaded fib.
    let mut pushes = Vec::new();
    while !writer.is_finished() {
        if let Ok(message) = tokio::time::timeout(Duration::from_millis(100), client.recv()).await {
            pushes.push(message);
        }
    }
    writer.join().unwrap();
    let list = pushed(&mut client, "fib", |t| t.is_some()).await;
    pushes.push(list);
    let fib_states: Vec<&Value> = pushes
        .iter()
        .filter_map(|list| listed(list, "fib"))
        .collect();
    assert_eq!(fib_states.len(), 1, "loaded exactly once: {pushes:?}");
    assert_eq!(fib_states[0]["state"], "ready");
    assert!(fib_states[0].get("error").is_none(), "{}", fib_states[0]);
    assert_eq!(client.run("fib", json!(12)).await["result"], 144);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_is_listed_with_its_reason_while_the_old_version_serves() {
    let folder = TaskFolder::with(&["echo.wasm"]);
    let server = start_server_with(folder.config(), taskhost::ProtocolApp).await;
    let mut client = server.client().await;

    for (name, contents, reason) in [
        (
            "echo.wasm",
            b"this is not wasm".to_vec(),
            "not a usable task module",
        ),
        (
            "echo.wasm",
            b"\0asm\x01\0\0\0\x01".to_vec(),
            "not a usable task module",
        ),
        ("echo.wasm", b"(module)".to_vec(), "no `_start`"),
        (
            "echo.wasm",
            b"(module (import \"env\" \"boom\" (func)) (func (export \"_start\")))".to_vec(),
            "imports something",
        ),
        ("echo.toml", b"timeout = 5".to_vec(), "not a valid manifest"),
    ] {
        folder.write(name, &contents);
        let list = pushed(&mut client, "echo", |t| {
            t.and_then(|t| t["error"].as_str())
                .is_some_and(|e| e.contains(reason))
        })
        .await;
        let echo = listed(&list, "echo").unwrap();
        assert_eq!(echo["state"], "ready", "the previous version stays: {echo}");
        let finished = client.run("echo", json!("still served")).await;
        assert_eq!(finished["result"], "still served", "{name}: {finished}");
    }

    // A name whose only version is broken is listed failed, and a task for it says why.
    folder.write("broken.wasm", b"garbage");
    let list = pushed(&mut client, "broken", |t| t.is_some()).await;
    assert_eq!(listed(&list, "broken").unwrap()["state"], "failed");
    let rejected = client.submit("broken", json!(1)).await;
    assert_eq!(rejected["error"]["code"], "unknown_task");
    assert!(
        rejected["error"]["message"]
            .as_str()
            .unwrap()
            .contains("failed to load"),
        "{rejected}"
    );
    assert!(
        !client.hello["tasks"]
            .as_array()
            .unwrap()
            .contains(&json!("broken"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_lower_limits_describe_and_broadcast() {
    let folder = TaskFolder::with(&["echo.wasm"]);
    folder.copy_in("slow.wasm", "nap.wasm");
    folder.write(
        "nap.toml",
        "description = \"a short nap\"\ntimeout_ms = 400\n",
    );
    let server = start_server_with(folder.config(), taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    let list = client.request(json!({"type": "list"})).await;
    let nap = listed(&list, "nap").unwrap();
    assert_eq!(nap["description"], "a short nap");
    assert_eq!(nap["limits"]["timeout_ms"], 400);
    let ended = client.run("nap", json!({"seconds": 2})).await;
    assert_eq!(ended["error"]["code"], "timeout", "{ended}");

    // Editing the manifest reloads it: now results go to everyone.
    let mut bystander = server.client().await;
    folder.write("echo.toml", "deliver = \"broadcast\"\n");
    pushed(&mut client, "echo", |t| {
        t.is_some_and(|t| t["deliver"] == "broadcast")
    })
    .await;
    let accepted = client.submit("echo", json!("to all")).await;
    let broadcast = bystander
        .recv_until(Duration::from_secs(5), "broadcast", |_| true)
        .await;
    assert_eq!(broadcast["task_id"], accepted["task_id"]);
    assert_eq!(broadcast["result"], "to all");
    let finished = client.recv_for(accepted["task_id"].as_u64().unwrap()).await;
    assert_eq!(
        finished["result"], "to all",
        "the submitter still gets finished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_arrives_between_accepted_and_finished() {
    let server = start_server_with(test_config(), taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    client
        .send(json!({"type": "task", "task": "slow", "input": {"seconds": 1}, "ref": "p"}))
        .await;
    let accepted = client.recv().await;
    assert_eq!(accepted["type"], "accepted");
    let mut progress = Vec::new();
    let finished = loop {
        let message = client.recv().await;
        match message["type"].as_str().unwrap() {
            "progress" => progress.push(message),
            "finished" => break message,
            other => panic!("unexpected {other}: {message}"),
        }
    };
    assert_eq!(finished["result"], "success");
    assert!(
        progress.len() >= 3,
        "slow reports as it sleeps: {progress:?}"
    );
    let fractions: Vec<f64> = progress
        .iter()
        .map(|p| p["progress"].as_f64().unwrap())
        .collect();
    assert!(fractions.windows(2).all(|w| w[0] <= w[1]), "{fractions:?}");
    assert!(fractions.iter().all(|f| (0.0..=1.0).contains(f)));
    assert_eq!(
        fractions.last(),
        Some(&1.0),
        "the last report is not lost to the rate limit"
    );
    for report in &progress {
        assert_eq!(report["task_id"], accepted["task_id"]);
        assert_eq!(report["ref"], "p");
        assert!(report["message"].is_string());
    }
}

/// `slow`'s `reports`: none sleeps once and sends no progress (the benchmark's like-for-like
/// sleeper); a few come evenly; too many is refused with a message that says the range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reports_as_often_as_asked() {
    let server = start_server_with(test_config(), taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    for (reports, expected) in [(0, vec![]), (3, vec![1.0 / 3.0, 2.0 / 3.0, 1.0])] {
        let input = json!({"seconds": 0.6, "reports": reports});
        let accepted = client.submit("slow", input).await;
        let task_id = accepted["task_id"].as_u64().unwrap();
        let mut fractions = Vec::new();
        let finished = loop {
            let message = client.recv().await;
            assert_eq!(message["task_id"], task_id, "{message}");
            match message["type"].as_str().unwrap() {
                "progress" => fractions.push(message["progress"].as_f64().unwrap()),
                "finished" => break message,
                other => panic!("unexpected {other}: {message}"),
            }
        };
        assert_eq!(finished["result"], "success", "{finished}");
        assert_eq!(
            fractions.len(),
            expected.len(),
            "reports {reports}: {fractions:?}"
        );
        for (got, want) in fractions.iter().zip(&expected) {
            assert!(
                (got - want).abs() < 1e-9,
                "reports {reports}: {fractions:?}"
            );
        }
    }
    let refused = client
        .run("slow", json!({"seconds": 1, "reports": 101}))
        .await;
    assert_eq!(refused["type"], "failed", "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`reports` must be from 0 to 100") && message.contains("101"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_warm_cache_compiles_nothing() {
    let folder = TaskFolder::with(&["echo.wasm", "fib.wasm", "upper.wat"]);
    let mut config = folder.config();
    config.cache_dir = Some(folder.path.join(".compile-cache"));
    let cold = taskhost::Server::new(config.clone(), taskhost::ProtocolApp).unwrap();
    assert_eq!(
        cold.ctx().compile_cache_counts(),
        Some((0, 5)),
        "a cold cache compiles all: the three tasks and the two pool-warming modules"
    );
    drop(cold);
    let warm = taskhost::Server::new(config, taskhost::ProtocolApp).unwrap();
    assert_eq!(
        warm.ctx().compile_cache_counts(),
        Some((5, 0)),
        "a warm cache compiles none"
    );
    assert_eq!(warm.ctx().task_names(), ["echo", "fib", "upper"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_call_with_a_pointer_outside_memory_traps() {
    let folder = TaskFolder::with(&[]);
    folder.write(
        "reporter.wat",
        r#"(module
             (import "taskhost" "progress" (func $progress (param f64 i32 i32)))
             (memory (export "memory") 1)
             (data (i32.const 0) "half way")
             (func (export "_start")
               (call $progress (f64.const 0.5) (i32.const 0) (i32.const 8))
               (call $progress (f64.const 0.9) (i32.const 65530) (i32.const 100))))"#,
    );
    let server = start_server_with(folder.config(), taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    let accepted = client.submit("reporter", Value::Null).await;
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    let progress = client.recv().await;
    assert_eq!(progress["type"], "progress", "{progress}");
    assert_eq!(progress["progress"], 0.5);
    assert_eq!(progress["message"], "half way");
    let ended = client.recv().await;
    assert_eq!(ended["error"]["code"], "trap", "{ended}");
    assert!(
        ended["error"]["message"]
            .as_str()
            .unwrap()
            .contains("outside"),
        "{ended}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_that_could_never_run_are_refused_at_load() {
    let folder = TaskFolder::with(&["echo.wasm"]);
    folder.write(
        "args.wat",
        r#"(module (func (export "_start") (param i32)))"#,
    );
    // A table larger than a pool slot holds could never be instantiated, nor a memory
    // larger than the server's limit.
    folder.write(
        "bigtable.wat",
        r#"(module (table 200000 funcref) (func (export "_start")))"#,
    );
    folder.write(
        "bigmemory.wat",
        r#"(module (memory 1025) (func (export "_start")))"#,
    );
    let server = start_server_with(folder.config(), taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    let list = client.request(json!({"type": "list"})).await;
    for (name, reason) in [
        ("args", "`_start`"),
        ("bigtable", "its table starts with 200000 elements"),
        ("bigmemory", "more than the server's memory limit"),
    ] {
        let task = listed(&list, name).unwrap();
        assert_eq!(task["state"], "failed", "{task}");
        assert!(task["error"].as_str().unwrap().contains(reason), "{task}");
        let rejected = client.submit(name, Value::Null).await;
        assert_eq!(rejected["error"]["code"], "unknown_task", "{rejected}");
    }
    assert_eq!(client.run("echo", json!(1)).await["result"], 1);
}
