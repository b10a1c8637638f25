//! `query`: runs one SQL statement with bound parameters against the database its
//! manifest grants: `{"sql": "SELECT $1 AS x", "params": [1]}` → the rows (for a
//! statement that returns rows) or `{"rows_affected": N}`. For tests and operators: grant
//! it only a database you would let its callers use freely.

use serde::Deserialize;
use taskhost_guest::{Value, json, run, sql};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    sql: String,
    #[serde(default)]
    params: Vec<Value>,
    /// `true`: run it for its effect (`execute`), not for rows.
    #[serde(default)]
    execute: bool,
}

fn main() {
    run(|input: Input| {
        if input.execute {
            let done = sql::execute(&input.sql, &input.params)?;
            Ok(json!({"rows_affected": done.rows_affected, "last_insert_id": done.last_insert_id}))
        } else {
            Ok(json!({"rows": sql::query(&input.sql, &input.params)?}))
        }
    });
}
