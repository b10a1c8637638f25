//! Fan-out: one message starts several tasks at once and answers when all have ended, with a
//! timeout for the lot: Swoole's `taskWaitMulti`.
//!
//! `{"type":"fib_many","ns":[10,20,30]}` runs `fib` for each number in parallel sandboxes
//! and answers `{"type":"fib_many","results":[55,6765,832040]}`; a task that failed (or did
//! not end within three seconds) has `{"error":{...}}` in its place.
//!
//! Run it with `cargo run --release --example fanout` (after `just build-guests`).

use std::time::Duration;

use serde_json::{Value, json};
use taskhost::protocol::Request;
use taskhost::{App, Client, Config, Ctx, NewTask, Outcome};
use tokio::net::TcpListener;

/// How long one `fib_many` waits for all its tasks.
const WAIT: Duration = Duration::from_secs(3);

/// The most tasks one `fib_many` may start: a client-controlled count is capped.
const MAX_FAN_OUT: usize = 64;

pub struct FibMany;

impl App for FibMany {
    type Session = ();

    async fn on_message(&self, ctx: &Ctx<Self>, client: &Client<()>, request: Request) {
        match request {
            Request::Custom { kind, message } if kind == "fib_many" => {
                let ns = message["ns"].as_array().cloned().unwrap_or_default();
                let tasks = ns.iter().take(MAX_FAN_OUT).map(|n| NewTask::new("fib", n));
                let results: Vec<Value> = ctx
                    .task_wait_multi(tasks, WAIT)
                    .await
                    .into_iter()
                    .map(|outcome| match outcome {
                        Outcome::Finished { result, .. } => {
                            serde_json::from_str(result.get()).unwrap_or(Value::Null)
                        }
                        Outcome::Failed { error, .. } => json!({ "error": error }),
                    })
                    .collect();
                client
                    .send(&json!({"type": "fib_many", "results": results}))
                    .await;
            }
            other => taskhost::app::protocol_app::answer(ctx, client, other).await,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt::init();
    let listener = TcpListener::bind("127.0.0.1:9502").await?;
    println!(
        "fan-out example on ws://127.0.0.1:9502/: send {{\"type\":\"fib_many\",\"ns\":[10,20,30]}}"
    );
    let config = Config::with_tasks_dir("tasks");
    taskhost::run(listener, config, FibMany, taskhost::shutdown_signal()).await
}
