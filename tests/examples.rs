//! The examples in `host/examples/`, run as a user would drive them: each example's
//! application (the same source file) on a real server, with real clients.

use std::time::Duration;

use serde_json::json;

use crate::common::{start_server_with, test_config};

#[allow(dead_code)] // the examples' `main`s are not called here
#[path = "../host/examples/chat.rs"]
mod chat;

#[allow(dead_code)] // the examples' `main`s are not called here
#[path = "../host/examples/taskwait.rs"]
mod taskwait;

#[allow(dead_code)] // the examples' `main`s are not called here
#[path = "../host/examples/fanout.rs"]
mod fanout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_example_keeps_names_per_connection_and_still_runs_tasks() {
    let server = start_server_with(test_config(), chat::ChatRoom).await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;

    alice
        .send(json!({"type": "say", "text": "too early"}))
        .await;
    let refused = alice.recv().await;
    assert_eq!(refused["error"]["code"], "bad_request", "{refused}");

    alice.send(json!({"type": "join", "name": "alice"})).await;
    bob.send(json!({"type": "join", "name": "bob"})).await;
    let joined = bob
        .recv_until(Duration::from_secs(5), "joined", |m| m["name"] == "bob")
        .await;
    assert_eq!(joined["name"], "bob");

    alice.send(json!({"type": "say", "text": "hi bob"})).await;
    let said = bob
        .recv_until(Duration::from_secs(5), "said", |_| true)
        .await;
    assert_eq!(
        said,
        json!({"type": "said", "from": "alice", "text": "hi bob"})
    );

    // Unknown types still get the protocol's answer, and tasks still run.
    let error = bob.request(json!({"type": "dance"})).await;
    assert_eq!(error["error"]["code"], "bad_request", "{error}");
    let finished = bob.run("fib", json!(10)).await;
    assert_eq!(finished["result"], 55);

    drop(alice);
    let left = bob
        .recv_until(Duration::from_secs(5), "left", |_| true)
        .await;
    assert_eq!(left["name"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_taskwait_example_answers_with_the_result_or_the_timeout() {
    let mut config = test_config();
    // Fuel enough that the example's two-second wait, not the fuel, ends fib(45).
    config.limits.fuel = 1 << 50;
    let server = start_server_with(config, taskwait::FibNow).await;
    let mut client = server.client().await;
    let answer = client.request(json!({"type": "fib_now", "n": 20})).await;
    assert_eq!(
        answer,
        json!({"type": "fib_result", "n": 20, "result": 6765})
    );

    // fib(45) takes far longer than the example's two seconds.
    let started = std::time::Instant::now();
    let answer = client.request(json!({"type": "fib_now", "n": 45})).await;
    assert_eq!(answer["error"]["code"], "timeout", "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    let answer = client.request(json!({"type": "fib_now", "n": "x"})).await;
    assert_eq!(answer["error"]["code"], "exit", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fanout_example_runs_tasks_in_parallel_and_keeps_their_order() {
    let server = start_server_with(test_config(), fanout::FibMany).await;
    let mut client = server.client().await;
    let answer = client
        .request(json!({"type": "fib_many", "ns": [10, 20, 1, "x", 25]}))
        .await;
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 5, "{answer}");
    assert_eq!(results[0], 55);
    assert_eq!(results[1], 6765);
    assert_eq!(results[2], 1);
    assert_eq!(results[3]["error"]["code"], "exit", "{answer}");
    assert_eq!(results[4], 75025);
}
