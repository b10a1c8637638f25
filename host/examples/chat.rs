//! A chat room with message types of its own, beside the task protocol.
//!
//! - `{"type":"join","name":"alice"}` names this connection (kept in its session) and tells
//!   everyone `{"type":"joined","name":"alice"}`;
//! - `{"type":"say","text":"hi"}` reaches every connection as
//!   `{"type":"said","from":"alice","text":"hi"}`;
//! - leaving tells everyone `{"type":"left","name":"alice"}`;
//! - every other message is the protocol's: tasks still run (`{"type":"task",...}`).
//!
//! Run it with `cargo run --release --example chat` (after `just build-guests`), then open
//! two WebSocket clients on ws://127.0.0.1:9502/.

use std::sync::Mutex;

use serde_json::json;
use taskhost::protocol::{ErrorCode, Reply, Request, WireError};
use taskhost::{App, Client, Config, Ctx};
use tokio::net::TcpListener;

/// The chat room: all its state is per connection.
pub struct ChatRoom;

/// What the room keeps for each connection: the name it joined with.
#[derive(Default)]
pub struct Member {
    name: Mutex<Option<String>>,
}

impl Member {
    fn name(&self) -> Option<String> {
        self.name.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl App for ChatRoom {
    type Session = Member;

    async fn on_message(&self, ctx: &Ctx<Self>, client: &Client<Member>, request: Request) {
        let Request::Custom { kind, message } = request else {
            // task, cancel, list, stats: the protocol's own answers.
            return taskhost::app::protocol_app::answer(ctx, client, request).await;
        };
        if kind != "join" && kind != "say" {
            let request = Request::Custom { kind, message };
            return taskhost::app::protocol_app::answer(ctx, client, request).await;
        }
        let text = |field: &str| message[field].as_str().map(str::to_owned);
        match (kind.as_str(), client.session().name()) {
            ("join", _) => match text("name") {
                Some(name) => {
                    *client
                        .session()
                        .name
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(name.clone());
                    ctx.broadcast(&json!({"type": "joined", "name": name}));
                }
                None => refuse(client, "join needs a \"name\" string").await,
            },
            ("say", Some(from)) => match text("text") {
                Some(said) => {
                    ctx.broadcast(&json!({"type": "said", "from": from, "text": said}));
                }
                None => refuse(client, "say needs a \"text\" string").await,
            },
            _ => refuse(client, "join first: {\"type\":\"join\",\"name\":...}").await,
        }
    }

    async fn on_close(&self, ctx: &Ctx<Self>, client: &Client<Member>) {
        if let Some(name) = client.session().name() {
            ctx.broadcast(&json!({"type": "left", "name": name}));
        }
    }
}

async fn refuse(client: &Client<Member>, message: &str) {
    let error = WireError::new(ErrorCode::BadRequest, message);
    client.send(&Reply::Error { error: &error }).await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt::init();
    let listener = TcpListener::bind("127.0.0.1:9502").await?;
    println!("chat room on ws://127.0.0.1:9502/");
    let config = Config::with_tasks_dir("tasks");
    taskhost::run(listener, config, ChatRoom, taskhost::shutdown_signal()).await
}
