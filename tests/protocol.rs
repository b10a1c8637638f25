//! Every message type and error code of docs/PROTOCOL.md over real connections, bad frames
//! (each followed by a check that the connection still works), and the ordering guarantees.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

use crate::common::{Client, listed, start_server, start_server_with, test_config};

/// Checks the connection still answers: an echo round trip.
async fn assert_still_works(client: &mut Client) {
    let finished = client.run("echo", json!({"still": "here"})).await;
    assert_eq!(finished["type"], "finished", "{finished}");
    assert_eq!(finished["result"], json!({"still": "here"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_list_and_stats_describe_the_server() {
    let server = start_server().await;
    let mut client = server.client().await;
    let hello = &client.hello;
    assert!(hello["connection_id"].is_u64(), "{hello}");
    assert_eq!(hello["version"], 1);
    let names: Vec<&str> = hello["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    for bundled in [
        "slow", "echo", "fib", "spin", "oom", "panic", "exit", "recurse", "snoop", "upper",
    ] {
        assert!(
            names.contains(&bundled),
            "{bundled} missing from hello: {names:?}"
        );
    }

    let list = client.request(json!({"type": "list"})).await;
    assert_eq!(list["type"], "list");
    let echo = listed(&list, "echo").expect("echo is listed");
    assert_eq!(echo["state"], "ready");
    assert_eq!(echo["deliver"], "origin");
    assert_eq!(echo["limits"]["timeout_ms"], 30_000);
    assert_eq!(echo["limits"]["memory_bytes"], 64 << 20);

    client.run("echo", json!(1)).await;
    let stats = client.request(json!({"type": "stats"})).await;
    assert_eq!(stats["type"], "stats");
    assert_eq!(stats["connections"], 1);
    assert_eq!(stats["completed"], 1);
    assert_eq!(stats["task_workers"], 256);
    for field in ["queued", "running", "failed", "rejected", "uptime_ms"] {
        assert!(stats[field].is_u64(), "{field} in {stats}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_accepted_then_finished_with_its_ref_and_limits() {
    let server = start_server().await;
    let mut client = server.client().await;
    let input = json!({"nested": {"list": [1, 2.5, "three", null, true]}});
    client
        .send(
            json!({"type": "task", "task": "echo", "input": input, "ref": "r-1",
                     "limits": {"timeout_ms": 5000, "fuel": 999_999_999_999_u64}}),
        )
        .await;
    let accepted = client.recv().await;
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    assert_eq!(accepted["task"], "echo");
    assert_eq!(accepted["ref"], "r-1");
    assert_eq!(accepted["limits"]["timeout_ms"], 5000, "lowered");
    assert_eq!(
        accepted["limits"]["fuel"], 10_000_000_000_u64,
        "clamped to the maximum"
    );
    let finished = client.recv().await;
    assert_eq!(finished["type"], "finished", "{finished}");
    assert_eq!(finished["task_id"], accepted["task_id"]);
    assert_eq!(finished["ref"], "r-1");
    assert_eq!(finished["result"], input);
    assert!(finished["elapsed_ms"].is_u64());
    assert!(finished["fuel_used"].as_u64().unwrap() > 0);

    // A numeric ref comes back as a number.
    client
        .send(json!({"type": "task", "task": "fib", "input": {"n": 20}, "ref": 42}))
        .await;
    let accepted = client.recv().await;
    assert_eq!(accepted["ref"], 42);
    let finished = client.recv().await;
    assert_eq!(finished["result"], 6765);
    assert_eq!(finished["ref"], 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_runs_the_default_task_like_the_original_example() {
    let server = start_server().await;
    let mut client = server.client().await;
    let sent = Instant::now();
    client.send_text("666").await;
    let accepted = client.recv().await;
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    assert_eq!(accepted["task"], "slow");
    assert!(sent.elapsed() < Duration::from_secs(1), "accepted at once");
    let finished = client.recv_for(accepted["task_id"].as_u64().unwrap()).await;
    assert_eq!(finished["type"], "finished", "{finished}");
    assert_eq!(finished["result"], "success");
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(8),
        "the example's job takes five seconds, took {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_goes_to_the_configured_default_task() {
    let mut config = test_config();
    config.default_task = "upper".into();
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    client.send_text("hello [1,2]").await;
    let accepted = client.recv().await;
    assert_eq!(accepted["task"], "upper");
    let finished = client.recv().await;
    assert_eq!(finished["result"], "HELLO [1,2]", "{finished}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_for_a_missing_default_task_says_which_option() {
    let mut config = test_config();
    config.default_task = "nosuch".into();
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    client.send_text("666").await;
    let rejected = client.recv().await;
    assert_eq!(rejected["type"], "rejected", "{rejected}");
    assert_eq!(rejected["error"]["code"], "unknown_task");
    let message = rejected["error"]["message"].as_str().unwrap();
    assert!(message.contains("--default-task"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_an_error_and_the_connection_goes_on() {
    let server = start_server().await;
    let mut client = server.client().await;
    let frames = [
        ("{\"type\": \"task\",\n \"task\": ", "line 2"),
        ("{\"type\": 7}", "type"),
        ("{\"task\": \"echo\"}", "type"),
        ("{\"type\": \"dance\"}", "unknown message type"),
        ("{\"type\": \"cancel\"}", "task_id"),
        (
            "{\"type\": \"cancel\", \"task_id\": \"seven\"}",
            "the id `accepted` gave",
        ),
        ("   {\"type\": \"list\", ", "EOF"),
    ];
    for (frame, hint) in frames {
        client.send_text(frame).await;
        let reply = client.recv().await;
        assert_eq!(reply["type"], "error", "{frame} -> {reply}");
        assert_eq!(reply["error"]["code"], "bad_request", "{frame}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(hint),
            "{frame}: {message:?} should mention {hint:?}"
        );
        assert_still_works(&mut client).await;
    }

    client.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    let reply = client.recv().await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["error"]["code"], "bad_request");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("text frame")
    );
    assert_still_works(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_task_frames_are_rejected_with_their_ref() {
    let server = start_server().await;
    let mut client = server.client().await;
    // Every task frame gets `rejected`, not `error`, carrying its ref when it has a valid one.
    let cases = [
        (
            json!({"type": "task", "ref": "a"}),
            "bad_request",
            json!("a"),
        ),
        (
            json!({"type": "task", "task": 5, "ref": 2}),
            "bad_request",
            json!(2),
        ),
        (
            json!({"type": "task", "task": "echo", "ref": ["x"]}),
            "bad_request",
            Value::Null,
        ),
        (
            json!({"type": "task", "task": "echo", "limits": {"timeout": 1}, "ref": "d"}),
            "bad_request",
            json!("d"),
        ),
        (
            json!({"type": "task", "task": "echo", "limits": {"fuel": -1}}),
            "bad_request",
            Value::Null,
        ),
        (
            json!({"type": "task", "task": "nope", "ref": "c"}),
            "unknown_task",
            json!("c"),
        ),
    ];
    for (frame, code, reference) in cases {
        client.send(frame.clone()).await;
        let reply = client.recv().await;
        assert_eq!(reply["type"], "rejected", "{frame} -> {reply}");
        assert_eq!(reply["error"]["code"], code, "{frame} -> {reply}");
        assert_eq!(reply["ref"], reference, "{frame} -> {reply}");
        if code == "unknown_task" {
            let message = reply["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("echo") && message.contains("slow"),
                "names the tasks: {message}"
            );
        }
        assert_still_works(&mut client).await;
    }
    let stats = client.request(json!({"type": "stats"})).await;
    assert_eq!(stats["rejected"], 6, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_with_1009_and_others_are_unaffected() {
    let mut config = test_config();
    config.max_frame = 64 * 1024;
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut bystander = server.client().await;
    let mut client = server.client().await;
    let big = "x".repeat(100 * 1024);
    client
        .send(json!({"type": "task", "task": "echo", "input": big}))
        .await;
    assert_eq!(close_code(&mut client).await, CloseCode::Size);
    assert_still_works(&mut bystander).await;
    let mut again = server.client().await;
    assert_still_works(&mut again).await;
}

/// The code of the close frame the server ends the connection with.
async fn close_code(client: &mut Client) -> CloseCode {
    loop {
        match client.next_frame().await {
            Some(Message::Close(frame)) => return frame.expect("a close frame with a code").code,
            Some(Message::Text(text)) => panic!("expected a close, got {text}"),
            Some(_) => continue,
            None => panic!("closed without a close frame"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_are_answered_and_broken_frames_close_with_their_code() {
    let server = start_server().await;
    let mut bystander = server.client().await;

    // RFC 6455: a close is answered with a close, so the client sees a clean end.
    let mut client = server.client().await;
    client
        .send_raw(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await;
    assert_eq!(close_code(&mut client).await, CloseCode::Normal);

    // Text that is not UTF-8 cannot be read at all: 1007, not a silent drop.
    let mut client = server.client().await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    client.send_raw(Message::Frame(frame)).await;
    assert_eq!(close_code(&mut client).await, CloseCode::Invalid);

    assert_still_works(&mut bystander).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_unknown_foreign_or_ended_tasks_is_not_found() {
    let server = start_server().await;
    let mut owner = server.client().await;
    let mut other = server.client().await;

    let reply = owner
        .request(json!({"type": "cancel", "task_id": 999_999}))
        .await;
    assert_eq!(reply["error"]["code"], "not_found", "{reply}");

    let accepted = owner.submit("slow", json!({"seconds": 2})).await;
    let task_id = accepted["task_id"].as_u64().unwrap();
    let reply = other
        .request(json!({"type": "cancel", "task_id": task_id}))
        .await;
    assert_eq!(reply["type"], "error");
    assert_eq!(
        reply["error"]["code"], "not_found",
        "a foreign task: {reply}"
    );
    let finished = owner.recv_for(task_id).await;
    assert_eq!(
        finished["type"], "finished",
        "the foreign cancel did nothing: {finished}"
    );

    let reply = owner
        .request(json!({"type": "cancel", "task_id": task_id}))
        .await;
    assert_eq!(
        reply["error"]["code"], "not_found",
        "an ended task: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_queue_tasks_are_rejected_queue_full() {
    let mut config = test_config();
    config.task_workers = 1;
    config.queue = 1;
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut client = server.client().await;
    let first = client.submit("slow", json!({"seconds": 1})).await;
    let second = client.submit("slow", json!({"seconds": 1})).await;
    assert_eq!(first["type"], "accepted");
    assert_eq!(second["type"], "accepted");
    client
        .send(json!({"type": "task", "task": "echo", "ref": "third"}))
        .await;
    let third = client.recv().await;
    assert_eq!(third["type"], "rejected", "{third}");
    assert_eq!(third["ref"], "third");
    assert_eq!(third["error"]["code"], "queue_full");

    let stats = client.request(json!({"type": "stats"})).await;
    assert_eq!(stats["running"], 1, "{stats}");
    assert_eq!(stats["queued"], 1, "{stats}");
    assert_eq!(stats["rejected"], 1, "{stats}");
    let second_done = client.recv_for(second["task_id"].as_u64().unwrap()).await;
    assert_eq!(second_done["type"], "finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_take_turns_for_free_workers() {
    let mut config = test_config();
    config.task_workers = 2;
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut greedy = server.client().await;
    for _ in 0..20 {
        greedy
            .send(json!({"type": "task", "task": "slow", "input": {"seconds": 0.3}}))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // First come, first served would start this after the greedy backlog (about 3 s);
    // in turn, it takes the next worker that comes free.
    let mut other = server.client().await;
    let started = Instant::now();
    assert_eq!(other.run("echo", json!(1)).await["result"], 1);
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "waited {:?} behind another connection's backlog",
        started.elapsed()
    );
    let ends = greedy.ends(20).await;
    assert!(ends.iter().all(|end| end["type"] == "finished"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cannot_take_the_whole_server() {
    let mut config = test_config();
    config.max_connection_tasks = 2;
    let server = start_server_with(config, taskhost::ProtocolApp).await;
    let mut greedy = server.client().await;
    for _ in 0..2 {
        let accepted = greedy.submit("slow", json!({"seconds": 0.5})).await;
        assert_eq!(accepted["type"], "accepted", "{accepted}");
    }
    let third = greedy.submit("echo", json!(3)).await;
    assert_eq!(third["type"], "rejected", "{third}");
    assert_eq!(third["error"]["code"], "queue_full");
    assert!(
        third["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-connection-tasks"),
        "{third}"
    );
    let mut other = server.client().await;
    assert_eq!(other.run("echo", json!(1)).await["result"], 1);
    greedy.ends(2).await;
    assert_eq!(
        greedy.run("echo", json!(4)).await["result"],
        4,
        "slots freed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_pipelined_tasks_get_exactly_one_answer_and_one_end_each() {
    const TASKS: usize = 400;
    let server = start_server().await;
    let mut client = server.client().await;
    for i in 0..TASKS {
        // A mix of tasks that succeed, fail and are rejected.
        let frame = match i % 4 {
            0 => json!({"type": "task", "task": "echo", "input": i, "ref": i}),
            1 => json!({"type": "task", "task": "fib", "input": 15, "ref": i}),
            2 => json!({"type": "task", "task": "exit", "ref": i}),
            _ => json!({"type": "task", "task": "missing", "ref": i}),
        };
        client.send(frame).await;
    }
    let mut answered: HashMap<u64, &str> = HashMap::new();
    let mut accepted_ids = Vec::new();
    let mut ended: HashSet<u64> = HashSet::new();
    let mut task_of_ref: HashMap<u64, u64> = HashMap::new();
    while answered.len() < TASKS || ended.len() < accepted_ids.len() {
        let message = client.recv().await;
        let kind = message["type"].as_str().unwrap().to_owned();
        match kind.as_str() {
            "accepted" | "rejected" => {
                let reference = message["ref"].as_u64().unwrap();
                let kind = if kind == "accepted" {
                    "accepted"
                } else {
                    "rejected"
                };
                assert!(
                    answered.insert(reference, kind).is_none(),
                    "two answers for ref {reference}"
                );
                if kind == "accepted" {
                    let task_id = message["task_id"].as_u64().unwrap();
                    accepted_ids.push(task_id);
                    task_of_ref.insert(reference, task_id);
                } else {
                    assert_eq!(
                        reference % 4,
                        3,
                        "only unknown tasks are rejected: {message}"
                    );
                }
            }
            "finished" | "failed" => {
                let task_id = message["task_id"].as_u64().unwrap();
                let reference = message["ref"].as_u64().unwrap();
                assert_eq!(
                    task_of_ref.get(&reference),
                    Some(&task_id),
                    "ended before accepted: {message}"
                );
                assert!(ended.insert(task_id), "two ends for task {task_id}");
                let expected = if reference % 4 == 2 {
                    "failed"
                } else {
                    "finished"
                };
                assert_eq!(kind, expected, "{message}");
            }
            other => panic!("unexpected {other}: {message}"),
        }
    }
    assert_eq!(accepted_ids.len(), TASKS / 4 * 3);
    let mut sorted = accepted_ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), accepted_ids.len(), "task ids are unique");
    assert_eq!(
        sorted, accepted_ids,
        "task ids increase in submission order"
    );
    // Nothing more is pending on the connection.
    let stats = client.request(json!({"type": "stats"})).await;
    assert_eq!(stats["queued"], 0);
    assert_eq!(stats["running"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_ids_are_unique_across_connections() {
    let server = start_server().await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(server.client().await);
    }
    let mut ids = HashSet::new();
    for round in 0..10 {
        for client in &mut clients {
            let accepted = client.submit("echo", Value::from(round)).await;
            assert!(ids.insert(accepted["task_id"].as_u64().unwrap()));
            client.recv().await;
        }
    }
}
