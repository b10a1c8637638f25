//! Embedding taskhost with callbacks of your own, without forking the server.
//!
//! This application keeps the protocol but changes two events, after Swoole's chat example:
//! `task` runs the `upper` task as trusted plain Rust (no sandbox: a fast path for code you
//! trust) and sends every other task to the sandbox; `finish` tells every open connection about each result (`broadcast`),
//! then delivers it to its submitter as usual.
//!
//! Run it with `cargo run --release --example custom_callbacks` (after `just build-guests`),
//! then send `{"type":"task","task":"upper","input":"hello"}` from two pages on port 9502.

use futures_util::future::BoxFuture;
use serde_json::value::RawValue;
use taskhost::protocol::{ErrorCode, Reply};
use taskhost::{Callbacks, Config, Job, Outcome, Report, Server};
use tokio::net::TcpListener;

struct ShoutingRoom;

impl Callbacks for ShoutingRoom {
    fn on_task<'a>(&'a self, server: &'a Server, job: &'a Job) -> BoxFuture<'a, Outcome> {
        if job.name() != "upper" {
            return Box::pin(server.sandbox().run(&job.module.wasm, job.run_spec()));
        }
        let shouted = String::from_utf8_lossy(&job.input).to_uppercase();
        Box::pin(async move {
            match RawValue::from_string(shouted) {
                Ok(result) => Outcome::Finished {
                    result,
                    fuel_used: 0,
                },
                Err(error) => Outcome::failed(ErrorCode::Internal, error.to_string()),
            }
        })
    }

    fn on_finish<'a>(&'a self, server: &'a Server, report: Report) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Outcome::Finished { result, .. } = &report.outcome {
                let text = Reply::Broadcast {
                    task_id: report.job.task_id,
                    task: report.job.name(),
                    result,
                }
                .to_json();
                // A connection that closes meanwhile simply misses the broadcast.
                server.connections().broadcast(text).await;
            }
            taskhost::app::protocol::deliver(server, report).await;
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt::init();
    // Tasks are still looked up in the tasks folder (for their limits and `list`): `upper`
    // has its module there, which this application simply does not use.
    let config = Config::with_tasks_dir("tasks");
    let listener = TcpListener::bind("127.0.0.1:9502").await?;
    println!("chat room on ws://127.0.0.1:9502/");
    taskhost::run(listener, config, ShoutingRoom, taskhost::shutdown_signal()).await
}
