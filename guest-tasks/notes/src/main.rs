//! `notes`: `{"add": "text"}` stores a note and returns it (with its id and time);
//! `{"list": true}` returns the notes, newest first (at most 100). The database is the one
//! its manifest grants (`sql = "notes"`): an embedded SQLite file unless the operator
//! names a PostgreSQL one (`--database notes=postgres://…`). The text is always a bound
//! parameter, so a note that reads like SQL stays a note.

use serde::{Deserialize, Serialize};
use taskhost_guest::{Value, json, run, sql};

/// The longest note, in characters.
const MAX_NOTE_CHARS: usize = 2000;

/// The most notes one `list` returns.
const LIST_LIMIT: i64 = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    add: Option<String>,
    #[serde(default)]
    list: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Output {
    Note(Value),
    Notes { notes: Vec<Value> },
}

/// Works in SQLite and PostgreSQL alike.
const CREATE: &str = "CREATE TABLE IF NOT EXISTS notes (\
    id BIGINT PRIMARY KEY, text TEXT NOT NULL, created_unix_ms BIGINT NOT NULL)";

fn main() {
    run(|input: Input| {
        sql::execute(CREATE, &[])?;
        match (input.add, input.list) {
            (Some(text), false) => add(&text).map(Output::Note),
            (None, true) => Ok(Output::Notes {
                notes: sql::query(
                    "SELECT id, text, created_unix_ms FROM notes ORDER BY id DESC LIMIT $1",
                    &[json!(LIST_LIMIT)],
                )?,
            }),
            _ => Err("notes takes {\"add\": \"text\"} or {\"list\": true}".to_owned()),
        }
    });
}

/// How many times [`add`] takes a new id when another note took the one it chose.
const ADD_ATTEMPTS: usize = 8;

/// Stores a note: its id is one more than the largest. Two notes added at once can choose
/// the same id (PostgreSQL's read committed lets both see the same largest one); the second
/// insert then does nothing (`ON CONFLICT DO NOTHING`, in SQLite and PostgreSQL alike),
/// returns no row, and is tried again with a fresh id.
fn add(text: &str) -> Result<Value, String> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > MAX_NOTE_CHARS {
        return Err(format!("a note is 1 to {MAX_NOTE_CHARS} characters"));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|error| format!("the clock is before 1970: {error}"))?
        .as_millis() as i64;
    for _ in 0..ADD_ATTEMPTS {
        // `WHERE true`: SQLite needs it to read ON CONFLICT after INSERT … SELECT.
        let rows = sql::query(
            "INSERT INTO notes (id, text, created_unix_ms) \
             SELECT COALESCE(MAX(id), 0) + 1, $1, $2 FROM notes WHERE true \
             ON CONFLICT (id) DO NOTHING \
             RETURNING id, text, created_unix_ms",
            &[json!(text), json!(now)],
        )?;
        if let Some(row) = rows.into_iter().next() {
            return Ok(row);
        }
    }
    Err(format!(
        "{ADD_ATTEMPTS} notes were added at the same moment as this one, each taking its id: \
         try again"
    ))
}
