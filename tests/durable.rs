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
