//! `fetch`: `{"url": "…"}` in (optionally `method`, `headers`, `body`), `{"status": N,
//! "headers": {…}, "body": "text"}` out, through the host's http capability.
//!
//! Its manifest lists no origin (`http = []`): an operator adds the origins it may reach.
//! Any other is refused, and the task fails with the host's message, which says "not
//! allowed" and names the origin.

use std::collections::BTreeMap;

use serde::Deserialize;
use taskhost_guest::http::{self, Request};
use taskhost_guest::{Value, run};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    url: String,
    #[serde(default = "get")]
    method: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
}

fn get() -> String {
    "GET".to_owned()
}

fn main() {
    run(|input: Input| -> Result<Value, String> {
        let request = Request {
            method: input.method,
            url: input.url,
            headers: input.headers,
            body: input.body,
        };
        Ok(http::request(&request)?.to_json())
    });
}
