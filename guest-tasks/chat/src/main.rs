//! `chat`: `{"room": "lobby", "user": "ann", "text": "hi"}` in; the message is published
//! to topic `room:lobby`, which every client subscribed to it receives as a `published`
//! message, and it is the task's result too. The manifest grants `publish = ["room:*"]`.

use serde::{Deserialize, Serialize};
use taskhost_guest::{publish, run};

const MAX_TEXT_CHARS: usize = 2000;
const MAX_NAME_CHARS: usize = 32;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    room: String,
    user: String,
    text: String,
}

#[derive(Serialize)]
struct Message {
    room: String,
    user: String,
    text: String,
    at_unix_ms: u64,
    /// Subscribers that got it.
    delivered: u64,
}

fn main() {
    run(|input: Input| {
        check_name("room", &input.room)?;
        check_name("user", &input.user)?;
        let text = input.text.trim();
        if text.is_empty() || text.chars().count() > MAX_TEXT_CHARS {
            return Err(format!("`text` is 1 to {MAX_TEXT_CHARS} characters"));
        }
        if text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err("`text` must not hold control characters".to_owned());
        }
        let mut message = Message {
            room: input.room.clone(),
            user: input.user,
            text: text.to_owned(),
            at_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            delivered: 0,
        };
        message.delivered = publish(&format!("room:{}", input.room), &message)?;
        Ok(message)
    });
}

/// A room or user name: 1 to 32 letters, digits, `_`, `-` or `.`.
fn check_name(field: &str, name: &str) -> Result<(), String> {
    let fine = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if fine {
        Ok(())
    } else {
        Err(format!(
            "`{field}` is 1 to {MAX_NAME_CHARS} letters, digits, _, - or ."
        ))
    }
}
