//! One function per capability call, over [`crate::call`]. Each needs its grant in the
//! task's manifest (`[capabilities]` in `NAME.toml`); without it the call returns a
//! [`CallError`] with the code `not_allowed`, and the task goes on.

use serde::Serialize;
use serde_json::{Value, json};

use crate::call::{CallError, call};

/// The value of `field` in `response`, or an error saying the answer was not understood.
fn field<'a>(response: &'a Value, field: &str, what: &str) -> Result<&'a Value, CallError> {
    response
        .get(field)
        .ok_or_else(|| CallError::unexpected(what, response))
}

fn to_json(value: &impl Serialize) -> Result<Value, CallError> {
    serde_json::to_value(value).map_err(|error| CallError {
        code: "bad_request".to_owned(),
        message: format!("the value cannot be encoded as JSON: {error}"),
    })
}

/// The key-value store the manifest grants (`kv = "STORE"`): keys are strings, values any
/// JSON. Stores are kept across restarts and isolated from each other.
pub mod kv {
    use super::*;

    /// The value at `key`, `None` when there is none.
    pub fn get(key: &str) -> Result<Option<Value>, CallError> {
        let response = call("kv", &json!({"op": "get", "key": key}))?;
        Ok(match field(&response, "value", "kv get")? {
            Value::Null => None,
            value => Some(value.clone()),
        })
    }

    /// Sets `key` to `value`.
    pub fn set(key: &str, value: &impl Serialize) -> Result<(), CallError> {
        call(
            "kv",
            &json!({"op": "set", "key": key, "value": to_json(value)?}),
        )?;
        Ok(())
    }

    /// Deletes `key`; whether it was there.
    pub fn delete(key: &str) -> Result<bool, CallError> {
        let response = call("kv", &json!({"op": "delete", "key": key}))?;
        Ok(field(&response, "deleted", "kv delete")?
            .as_bool()
            .unwrap_or(false))
    }

    /// The entries whose key starts with `prefix`, in key order (at most 1000; see
    /// docs/PROTOCOL.md for the byte cap).
    pub fn list(prefix: &str) -> Result<Vec<(String, Value)>, CallError> {
        let response = call("kv", &json!({"op": "list", "prefix": prefix}))?;
        let entries = field(&response, "entries", "kv list")?;
        Ok(entries
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|entry| {
                        (
                            entry["key"].as_str().unwrap_or_default().to_owned(),
                            entry["value"].clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Adds 1 to the integer at `key` (a missing key is 0) and returns the new value;
    /// atomic.
    pub fn incr(key: &str) -> Result<i64, CallError> {
        incr_by(key, 1)
    }

    /// Adds `by` to the integer at `key`; atomic.
    pub fn incr_by(key: &str, by: i64) -> Result<i64, CallError> {
        let response = call("kv", &json!({"op": "incr", "key": key, "by": by}))?;
        field(&response, "value", "kv incr")?
            .as_i64()
            .ok_or_else(|| CallError::unexpected("kv incr", &response))
    }

    /// Sets `key` to `value` (`None` deletes it) only if it holds `expected` now (`None`:
    /// absent); whether it did. Atomic.
    pub fn cas(
        key: &str,
        expected: Option<&Value>,
        value: Option<&Value>,
    ) -> Result<bool, CallError> {
        let response = call(
            "kv",
            &json!({"op": "cas", "key": key, "expected": expected, "value": value}),
        )?;
        Ok(field(&response, "swapped", "kv cas")?
            .as_bool()
            .unwrap_or(false))
    }
}

/// The database the manifest grants (`sql = "NAME"`). Parameters are bound, never
/// spliced: `$1` in PostgreSQL, `?1` or `?` in SQLite.
pub mod sql {
    use super::*;

    /// What an `execute` did.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Executed {
        pub rows_affected: u64,
        /// SQLite's rowid of the last insert; `None` in PostgreSQL (use RETURNING).
        pub last_insert_id: Option<i64>,
    }

    /// Runs a statement that returns rows; each row is an object by column name.
    pub fn query(sql: &str, params: &[Value]) -> Result<Vec<Value>, CallError> {
        let response = call("sql", &json!({"op": "query", "sql": sql, "params": params}))?;
        Ok(field(&response, "rows", "sql query")?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Runs a statement for its effect.
    pub fn execute(sql: &str, params: &[Value]) -> Result<Executed, CallError> {
        let response = call(
            "sql",
            &json!({"op": "execute", "sql": sql, "params": params}),
        )?;
        Ok(Executed {
            rows_affected: field(&response, "rows_affected", "sql execute")?
                .as_u64()
                .unwrap_or(0),
            last_insert_id: response["last_insert_id"].as_i64(),
        })
    }

    /// Runs `statements` (`{"op": "query" | "execute", "sql", "params"}` each) in one
    /// transaction: all or nothing. Their responses, in order.
    pub fn transaction(statements: &[Value]) -> Result<Vec<Value>, CallError> {
        let response = call(
            "sql",
            &json!({"op": "transaction", "statements": statements}),
        )?;
        Ok(field(&response, "results", "sql transaction")?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// Mail through the operator's relay (`mail = true`).
pub mod mail {
    use super::*;

    /// What [`send`] did.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Sent {
        /// The relay took the mail; `false` when the server has no relay (`--smtp`).
        pub delivered: bool,
        pub message_id: String,
        pub recipients: u64,
    }

    /// Sends a plain-text mail to `to`.
    pub fn send(to: &[&str], subject: &str, body: &str) -> Result<Sent, CallError> {
        let response = call("mail", &json!({"to": to, "subject": subject, "body": body}))?;
        Ok(Sent {
            delivered: field(&response, "delivered", "mail")?
                .as_bool()
                .unwrap_or(false),
            message_id: response["message_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            recipients: response["recipients"].as_u64().unwrap_or(0),
        })
    }
}

/// Publishes `data` to `topic` (a grant `publish = ["PATTERN"]` must cover it); returns
/// how many subscribed clients got it.
pub fn publish(topic: &str, data: &impl Serialize) -> Result<u64, CallError> {
    let response = call("publish", &json!({"topic": topic, "data": to_json(data)?}))?;
    Ok(field(&response, "delivered", "publish")?
        .as_u64()
        .unwrap_or(0))
}
