//! `counter`: `{"key": "K"}` in, the key's new count out: 1, 2, 3, … kept in the
//! key-value store its manifest grants (`kv = "counters"`), so across restarts too.
//!
//! Without the grant (a copy of the module without its manifest) the call is refused
//! and the task fails with the host's message, which says "not allowed".

use serde::Deserialize;
use taskhost_guest::{kv, run};

/// The longest key, in bytes (the store takes up to 512).
const MAX_KEY_BYTES: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    key: String,
}

fn main() {
    run(|input: Input| {
        if input.key.is_empty() || input.key.len() > MAX_KEY_BYTES {
            return Err(format!("`key` must be 1 to {MAX_KEY_BYTES} bytes"));
        }
        Ok(kv::incr(&format!("count:{}", input.key))?)
    });
}
