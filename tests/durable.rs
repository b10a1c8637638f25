//! Nothing lost (issue 12): `started`, results kept past the connection (`attach`),
//! idempotency keys, retries and dead letters, against real servers and real modules.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Client, start_server, start_server_with, test_config};

/// The messages of one task up to its terminal message, `started` included.
async fn messages_until_end(client: &mut Client, task_id: u64) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let message = client.recv_within(Duration::from_secs(30)).await;
        if message["task_id"] != task_id {
            continue;
        }
        let kind = message["type"].as_str().unwrap_or_default().to_owned();
        seen.push(message);
        if kind == "finished" || kind == "failed" {
            return seen;
        }
    }
}

fn kinds(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["type"].as_str().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_comes_after_the_queue_and_before_progress_and_the_end() {
    let mut config = test_config();
    config.task_workers = 1;
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    client.show_started = true;
    // One worker: the second task waits in the queue while the first runs.
    client
        .send(json!({"type": "task", "task": "slow", "input": {"seconds": 0.6}, "ref": "a"}))
        .await;
    client
        .send(json!({"type": "task", "task": "echo", "input": 1, "ref": "b"}))
        .await;
    // One worker: b starts once a has run its 0.6 s; each is accepted before it starts.
    let sent = std::time::Instant::now();
    let mut b_started_after = Duration::ZERO;
    let mut events: Vec<String> = Vec::new();
    let mut started = Vec::new();
    while events.iter().filter(|e| e.starts_with("finished")).count() < 2 {
        let message = client.recv_within(Duration::from_secs(20)).await;
        let reference = message["ref"].as_str().unwrap_or_default().to_owned();
        let kind = message["type"].as_str().unwrap().to_owned();
        match kind.as_str() {
            "started" => {
                assert_eq!(message["attempt"], 1, "{message}");
                assert!(message["task_id"].is_u64(), "{message}");
                if reference == "b" {
                    b_started_after = sent.elapsed();
                }
                started.push(reference.clone());
            }
            "progress" => {
                assert!(started.contains(&reference), "progress before started");
                continue;
            }
            "accepted" | "finished" => {}
            _ => panic!("unexpected {message}"),
        }
        events.push(format!("{kind} {reference}"));
    }
    let at = |event: &str| {
        events
            .iter()
            .position(|e| e == event)
            .unwrap_or_else(|| panic!("no {event} in {events:?}"))
    };
    assert!(at("accepted a") < at("started a"), "{events:?}");
    assert!(at("started a") < at("finished a"), "{events:?}");
    assert!(at("accepted b") < at("started b"), "{events:?}");
    assert!(at("started a") < at("started b"), "{events:?}");
    assert!(
        b_started_after >= Duration::from_millis(500),
        "b waited for the one worker, yet started after {b_started_after:?}"
    );
    assert!(at("started b") < at("finished b"), "{events:?}");
    // The shape, once more, on a fresh task.
    let accepted = client.submit("echo", json!(2)).await;
    let task_id = accepted["task_id"].as_u64().unwrap();
    let messages = messages_until_end(&mut client, task_id).await;
    assert_eq!(kinds(&messages), ["started", "finished"], "{messages:?}");
    assert_eq!(messages[0]["task"], "echo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_ignore_started_still_read_accepted_then_finished() {
    let server = start_server().await;
    let mut client = server.client().await;
    let finished = client.run("echo", json!({"x": 1})).await;
    assert_eq!(finished["type"], "finished", "{finished}");
}

fn task_id(message: &Value) -> u64 {
    message["task_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no task_id in {message}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_after_the_submitter_left_delivers_the_result() {
    let server = start_server().await;
    let mut submitter = server.client().await;
    submitter
        .send(json!({"type": "task", "task": "slow", "input": {"seconds": 1}, "ref": "mine"}))
        .await;
    let accepted = submitter.recv().await;
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    let id = task_id(&accepted);
    drop(submitter);

    // A new connection attaches while it runs: its state, its progress, its end.
    let mut watcher = server.client().await;
    watcher.show_started = true;
    watcher.send(json!({"type": "attach", "task_id": id})).await;
    let attached = watcher.recv().await;
    assert_eq!(attached["type"], "attached", "{attached}");
    assert_eq!(attached["task_id"], id);
    assert_eq!(attached["task"], "slow");
    assert_eq!(attached["ref"], "mine");
    assert!(
        attached["state"] == "running" || attached["state"] == "queued",
        "{attached}"
    );
    let messages = messages_until_end(&mut watcher, id).await;
    let progress = messages.iter().filter(|m| m["type"] == "progress").count();
    assert!(
        progress >= 1,
        "the attached connection sees progress: {messages:?}"
    );
    let finished = messages.last().unwrap();
    assert_eq!(finished["type"], "finished", "{finished}");
    assert_eq!(finished["result"], "success");
    assert_eq!(
        finished["ref"], "mine",
        "the submitter's message, as it was"
    );
    assert_eq!(finished["attempts"], 1);

    // Once it ended: the same terminal message again, on any connection.
    let mut later = server.client().await;
    later.send(json!({"type": "attach", "task_id": id})).await;
    let attached = later.recv().await;
    assert_eq!(attached["state"], "ended", "{attached}");
    let again = later.recv().await;
    assert_eq!(&again, finished, "the kept message is the same");

    // Unknown ids and bad ones.
    later
        .send(json!({"type": "attach", "task_id": 987_654}))
        .await;
    let error = later.recv().await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["error"]["code"], "not_found", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--result-ttl"),
        "{error}"
    );
    later
        .send(json!({"type": "attach", "task_id": "seven"}))
        .await;
    let error = later.recv().await;
    assert_eq!(error["error"]["code"], "bad_request", "{error}");

    let (_, metrics) = crate::lifecycle::http(server.addr, "GET", "/metrics").await;
    for line in [
        "taskhost_attach_total{outcome=\"ended\"} 1",
        "taskhost_attach_total{outcome=\"not_found\"} 1",
        "taskhost_results_kept 1",
    ] {
        assert!(metrics.contains(line), "{line:?} missing from:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_expire_and_the_oldest_go_past_the_byte_bound() {
    let mut config = test_config();
    config.result_ttl = Duration::from_millis(300);
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    let finished = client.run("echo", json!("soon gone")).await;
    let id = task_id(&finished);
    client.send(json!({"type": "attach", "task_id": id})).await;
    assert_eq!(client.recv().await["state"], "ended");
    assert_eq!(client.recv().await["result"], "soon gone");
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.send(json!({"type": "attach", "task_id": id})).await;
    assert_eq!(client.recv().await["error"]["code"], "not_found");

    // Room for two results of 2 KB and their overhead: the third pushes the first out.
    let mut config = test_config();
    config.result_bytes = 6000;
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(task_id(&client.run("echo", json!("x".repeat(2000))).await));
    }
    client
        .send(json!({"type": "attach", "task_id": ids[0]}))
        .await;
    assert_eq!(client.recv().await["error"]["code"], "not_found");
    client
        .send(json!({"type": "attach", "task_id": ids[2]}))
        .await;
    assert_eq!(client.recv().await["state"], "ended");
    let (_, metrics) = crate::lifecycle::http(server.addr, "GET", "/metrics").await;
    assert!(
        metrics.contains("taskhost_results_evicted_total{reason=\"bytes\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_attaches_to_a_bounded_number_of_running_tasks() {
    let mut config = test_config();
    config.max_attached = 1;
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut submitter = server.client().await;
    let first = task_id(&submitter.submit("slow", json!({"seconds": 1})).await);
    let second = task_id(&submitter.submit("slow", json!({"seconds": 1})).await);
    let mut watcher = server.client().await;
    watcher
        .send(json!({"type": "attach", "task_id": first}))
        .await;
    assert_eq!(watcher.recv().await["type"], "attached");
    // Attaching twice to one task takes no second place.
    watcher
        .send(json!({"type": "attach", "task_id": first}))
        .await;
    assert_eq!(watcher.recv().await["type"], "attached");
    watcher
        .send(json!({"type": "attach", "task_id": second}))
        .await;
    let refused = watcher
        .recv_until(Duration::from_secs(5), "error", |_| true)
        .await;
    assert_eq!(refused["error"]["code"], "attach_limit", "{refused}");
    let ended = watcher.recv_for(first).await;
    assert_eq!(ended["type"], "finished");
    // Its place came back when the task ended.
    watcher
        .send(json!({"type": "attach", "task_id": second}))
        .await;
    let attached = watcher
        .recv_until(Duration::from_secs(5), "attached", |_| true)
        .await;
    assert_eq!(attached["task_id"], second);
    assert_eq!(watcher.recv_for(second).await["type"], "finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_runs_once_and_gives_the_same_task_id_and_outcome() {
    let server = start_server().await;
    let mut ann = server.client().await;
    let mut bob = server.client().await;
    ann.send(
        json!({"type": "task", "task": "slow", "input": {"seconds": 1},
                    "ref": "ann-1", "key": "order-17"}),
    )
    .await;
    let first = ann.recv().await;
    assert_eq!(first["type"], "accepted", "{first}");
    let id = task_id(&first);
    // While it runs, from another connection: the same id, no second run.
    bob.send(
        json!({"type": "task", "task": "slow", "input": {"seconds": 1},
                    "ref": "bob-1", "key": "order-17"}),
    )
    .await;
    let second = bob.recv().await;
    assert_eq!(second["type"], "accepted", "{second}");
    assert_eq!(second["task_id"], id);
    assert_eq!(second["ref"], "bob-1", "accepted answers bob's frame");
    // And from the submitter's own connection: the same id, and still one terminal message.
    ann.send(json!({"type": "task", "task": "slow", "input": {"seconds": 1}, "key": "order-17"}))
        .await;
    let third = ann.recv_until(WAIT_SHORT, "accepted", |_| true).await;
    assert_eq!(third["task_id"], id);
    let ann_end = ann.recv_for(id).await;
    let bob_end = bob.recv_for(id).await;
    assert_eq!(ann_end["result"], "success");
    assert_eq!(ann_end, bob_end, "the same outcome");

    // After its end, within the TTL: the same id and outcome at once.
    let mut carl = server.client().await;
    let late = carl.submit("echo", json!(2)).await;
    let other_id = task_id(&late);
    assert_ne!(other_id, id, "no key: a task of its own");
    carl.send(json!({"type": "task", "task": "slow", "key": "order-17"}))
        .await;
    let accepted = carl.recv_until(WAIT_SHORT, "accepted", |_| true).await;
    assert_eq!(accepted["task_id"], id);
    let end = carl.recv_for(id).await;
    assert_eq!(end, ann_end);

    // Ann got exactly one terminal message for the task: the next thing she hears about
    // anything is her echo's.
    ann.send(json!({"type": "task", "task": "echo", "input": 1, "ref": "echo"}))
        .await;
    loop {
        let message = ann.recv().await;
        assert_ne!(
            message["task_id"], id,
            "a second message about the task: {message}"
        );
        if message["type"] == "finished" && message["ref"] == "echo" {
            break;
        }
    }
    let (_, metrics) = crate::lifecycle::http(server.addr, "GET", "/metrics").await;
    assert!(
        metrics.contains("taskhost_attach_total{outcome=\"same_key\"} 3"),
        "{metrics}"
    );
    // The keyed task ran once, however many asked for it.
    assert!(
        metrics.contains("taskhost_tasks_total{task=\"slow\",outcome=\"finished\"} 1\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_capped_like_refs() {
    let server = start_server().await;
    let mut client = server.client().await;
    client
        .send(json!({"type": "task", "task": "echo", "key": "k".repeat(257), "ref": 1}))
        .await;
    let rejected = client.recv().await;
    assert_eq!(rejected["type"], "rejected", "{rejected}");
    assert_eq!(rejected["error"]["code"], "bad_request");
    assert!(
        rejected["error"]["message"]
            .as_str()
            .unwrap()
            .contains("256"),
        "{rejected}"
    );
    client
        .send(json!({"type": "task", "task": "echo", "key": ""}))
        .await;
    assert_eq!(client.recv().await["type"], "rejected");
    let finished = client.run("echo", json!("still here")).await;
    assert_eq!(finished["result"], "still here");
}

const WAIT_SHORT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_traps_twice_then_succeeds_shows_three_attempts() {
    let server = start_server().await;
    let mut client = server.client().await;
    client.show_started = true;
    let accepted = client.submit("flaky", json!({"fail_attempts": 2})).await;
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    let messages = messages_until_end(&mut client, task_id(&accepted)).await;
    assert_eq!(
        kinds(&messages),
        ["started", "started", "started", "finished"],
        "{messages:?}"
    );
    let attempts: Vec<&Value> = messages[..3].iter().map(|m| &m["attempt"]).collect();
    assert_eq!(attempts, [1, 2, 3], "{messages:?}");
    let finished = &messages[3];
    assert_eq!(finished["attempts"], 3, "{finished}");
    assert_eq!(
        finished["result"]["attempt"], 3,
        "the module saw its attempt"
    );

    // No retries asked for: one attempt, and no dead letter.
    let failed = client.run("panic", Value::Null).await;
    assert_eq!(failed["error"]["code"], "trap");
    assert_eq!(failed["attempts"], 1);
    let dead = client.request(json!({"type": "dead"})).await;
    assert_eq!(
        dead,
        json!({"type": "dead", "tasks": [], "total": 0, "dropped": 0})
    );
    let (_, metrics) = crate::lifecycle::http(server.addr, "GET", "/metrics").await;
    assert!(
        metrics.contains("taskhost_retries_total{code=\"trap\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_fails_every_attempt_is_a_dead_letter() {
    let server = start_server().await;
    let mut client = server.client().await;
    client
        .send(
            json!({"type": "task", "task": "flaky", "input": {"fail_attempts": 10},
                     "ref": "doomed", "key": "dl-1"}),
        )
        .await;
    let accepted = client.recv().await;
    let id = task_id(&accepted);
    let mut watcher = server.client().await;
    let failed = client.recv_for(id).await;
    assert_eq!(failed["type"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "trap");
    assert_eq!(failed["attempts"], 4, "the first run and retries = 3");

    let dead = watcher.request(json!({"type": "dead"})).await;
    assert_eq!(dead["type"], "dead", "{dead}");
    assert_eq!(dead["total"], 1);
    assert_eq!(dead["dropped"], 0);
    let letter = &dead["tasks"][0];
    assert_eq!(letter["task_id"], id);
    assert_eq!(letter["task"], "flaky");
    assert_eq!(letter["ref"], "doomed");
    assert_eq!(letter["key"], "dl-1");
    assert_eq!(letter["attempts"], 4);
    assert_eq!(letter["error"]["code"], "trap");
    assert_eq!(letter["input"], json!({"fail_attempts": 10}));
    assert!(
        letter["failed_at"].as_str().unwrap().ends_with('Z'),
        "{letter}"
    );
    let (_, metrics) = crate::lifecycle::http(server.addr, "GET", "/metrics").await;
    for line in [
        "taskhost_dead_letters_total 1",
        "taskhost_dead_letters_kept 1",
        "taskhost_retries_total{code=\"trap\"} 3",
    ] {
        assert!(metrics.contains(line), "{line:?} missing from:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_between_attempts_ends_the_task() {
    let folder = crate::common::TaskFolder::with(&["flaky.wasm"]);
    folder.write(
        "flaky.toml",
        "retries = 5\nretry_on = [\"trap\"]\nbackoff_ms = 2000\nattempt_envelope = true\n",
    );
    let mut config = folder.config();
    config.watch = false;
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    client.show_started = true;
    let accepted = client.submit("flaky", json!({"fail_attempts": 10})).await;
    let id = task_id(&accepted);
    let started = client.recv().await;
    assert_eq!(started["type"], "started", "{started}");
    // The first attempt traps; the task waits a second or two before the next.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut watcher = server.client().await;
    watcher.send(json!({"type": "attach", "task_id": id})).await;
    let attached = watcher.recv().await;
    assert_eq!(attached["state"], "retrying", "{attached}");
    client.send(json!({"type": "cancel", "task_id": id})).await;
    let ended = client.recv_for(id).await;
    assert_eq!(ended["error"]["code"], "cancelled", "{ended}");
    assert_eq!(ended["attempts"], 1);
    assert_eq!(watcher.recv_for(id).await, ended);
}

#[test]
fn the_durability_options_come_from_flags_the_environment_and_config_files() {
    let folder = crate::common::TaskFolder::with(&[]);
    let file = folder.path.join("taskhost.toml");
    std::fs::write(
        &file,
        "result-ttl = \"2m\"\nresult_bytes = 1000\nmax-attached = 3\ndead-letters = 4\n\
         dead_letter_bytes = 5000\n",
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
    for line in [
        "result_ttl = \"2m\"",
        "result_bytes = 1000",
        "max_attached = 3",
        "dead_letters = 4",
        "dead_letter_bytes = 5000",
    ] {
        assert!(printed.contains(line), "{line:?} missing from:\n{printed}");
    }
    let from_env = print(&[("TASKHOST_RESULT_TTL", "90s")], &[]);
    assert!(from_env.contains("result_ttl = \"1m 30s\""), "{from_env}");
    let from_flag = print(&[("TASKHOST_RESULT_TTL", "90s")], &["--result-ttl", "1h"]);
    assert!(from_flag.contains("result_ttl = \"1h\""), "{from_flag}");
    let output = crate::common::taskhost_command()
        .args(["--result-ttl", "ten minutes", "--print-config"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--result-ttl"), "{stderr}");
}
