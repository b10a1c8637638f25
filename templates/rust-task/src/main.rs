//! `my_task`: `{"name": "Ann"}` in, `{"greeting": "Hello, Ann!"}` out.
//!
//! The guest crate reads the input from stdin as JSON into `Input`, writes `Output` to
//! stdout, and turns an `Err` into a failed task with that message. Capabilities the task's
//! manifest grants are one call each: `taskhost_guest::http::get(url)`,
//! `taskhost_guest::kv::incr(key)`, … (taskhost's README, "Capabilities").

use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    name: String,
}

#[derive(Serialize)]
struct Output {
    greeting: String,
}

fn main() {
    taskhost_guest::run(|input: Input| {
        if input.name.is_empty() {
            return Err("`name` must not be empty".to_string());
        }
        Ok(Output {
            greeting: format!("Hello, {}!", input.name),
        })
    });
}
