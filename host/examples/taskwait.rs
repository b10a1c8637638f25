//! A handler that runs a task and awaits its result, with a timeout: Swoole's `taskwait`.
//!
//! `{"type":"fib_now","n":25}` runs the sandboxed `fib` task and answers with
//! `{"type":"fib_result","n":25,"result":75025}`, or, when the task fails or takes longer
//! than two seconds, `{"type":"fib_result","n":25,"error":{...}}`. No `accepted` or
//! `finished` is sent: the handler answers for the task.
//!
//! Run it with `cargo run --release --example taskwait` (after `just build-guests`).

use std::time::Duration;

use serde_json::json;
use taskhost::protocol::Request;
use taskhost::{App, Client, Config, Ctx, NewTask, Outcome};
use tokio::net::TcpListener;

/// How long a `fib_now` waits for its result.
const WAIT: Duration = Duration::from_secs(2);

pub struct FibNow;

impl App for FibNow {
    type Session = ();

    async fn on_message(&self, ctx: &Ctx<Self>, client: &Client<()>, request: Request) {
        match request {
            Request::Custom { kind, message } if kind == "fib_now" => {
                let n = message["n"].clone();
                // This connection's reader waits here; other connections are served on.
                let reply = match ctx.task_wait(NewTask::new("fib", &n), WAIT).await {
                    Outcome::Finished { result, .. } => {
                        json!({"type": "fib_result", "n": n, "result": result})
                    }
                    Outcome::Failed { error, .. } => {
                        json!({"type": "fib_result", "n": n, "error": error})
                    }
                };
                client.send(&reply).await;
            }
            other => taskhost::app::protocol_app::answer(ctx, client, other).await,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt::init();
    let listener = TcpListener::bind("127.0.0.1:9502").await?;
    println!("taskwait example on ws://127.0.0.1:9502/: send {{\"type\":\"fib_now\",\"n\":25}}");
    let config = Config::with_tasks_dir("tasks");
    taskhost::run(listener, config, FibNow, taskhost::shutdown_signal()).await
}
