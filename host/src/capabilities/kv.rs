//! `kv`: named key-value stores, embedded. Each store is its own SQLite file,
//! `DATA_DIR/kv/NAME.sqlite`, so stores cannot see each other's keys, and a restart keeps
//! them. Keys are strings; values are any JSON.
//!
//! Requests (`{"op": …}`) and responses:
//! - `get {key}` → `{"value": V or null}`
//! - `set {key, value}` → `{"ok": true}`
//! - `delete {key}` → `{"deleted": bool}`
//! - `list {prefix, limit?}` → `{"entries": [{"key", "value"}], "more": bool}`, in key order
//! - `incr {key, by?}` → `{"value": N}`: a missing key counts from 0; atomic
//! - `cas {key, expected, value}` → `{"swapped": bool, "current": V or null}`: sets `value`
//!   (null deletes) only if the current value is `expected` (null: absent); atomic
//!
//! Each store has one connection: its operations run one after another, which makes `incr`
//! and `cas` atomic without retries.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use sqlx::SqlitePool;
use tokio::sync::OnceCell;

use super::{CallError, ErrorCode, TaskAccess};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// Largest value, in bytes of JSON.
pub const MAX_VALUE_BYTES: usize = 64 << 10;

/// Most entries one `list` returns, and most bytes of keys and values together.
pub const MAX_LIST_ENTRIES: usize = 1000;
pub const MAX_LIST_BYTES: usize = 512 << 10;

/// The stores, opened on first use.
pub struct Stores {
    dir: PathBuf,
    open: Mutex<HashMap<String, Arc<OnceCell<SqlitePool>>>>,
}

impl Stores {
    pub fn new(dir: PathBuf) -> Stores {
        Stores {
            dir,
            open: Mutex::default(),
        }
    }

    /// Store `name`'s pool, opening (and creating) it the first time.
    async fn pool(&self, name: &str) -> Result<SqlitePool, CallError> {
        let cell = Arc::clone(
            self.open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(name.to_owned())
                .or_default(),
        );
        let path = self.dir.join(format!("{name}.sqlite"));
        cell.get_or_try_init(|| async {
            let pool = super::sql::open_sqlite(&path, 1).await?;
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID",
            )
            .execute(&pool)
            .await
            .map_err(|error| unavailable(name, &error))?;
            Ok(pool)
        })
        .await
        .cloned()
        .map_err(|error: CallError| {
            CallError::new(
                ErrorCode::Unavailable,
                format!("key-value store {name:?} could not be opened: {}", error.message),
            )
        })
    }
}

fn unavailable(name: &str, error: &sqlx::Error) -> CallError {
    CallError::new(
        ErrorCode::Unavailable,
        format!("key-value store {name:?} failed: {error}"),
    )
}

pub(super) async fn call(access: &TaskAccess, request: Value) -> Result<Value, CallError> {
    let op = super::op(&request)?;
    let Some(store) = access.grants().kv.as_deref() else {
        return Err(access.not_allowed(format!("key-value operation {op:?}"), "kv = \"STORE\""));
    };
    let pool = access.host.kv.pool(store).await?;
    let failed = |error: sqlx::Error| unavailable(store, &error);
    match op {
        "get" => {
            let key = key(&request)?;
            let value: Option<String> = sqlx::query_scalar("SELECT value FROM kv WHERE key = ?1")
                .bind(key)
                .fetch_optional(&pool)
                .await
                .map_err(failed)?;
            Ok(json!({ "value": parse(value) }))
        }
        "set" => {
            let key = key(&request)?;
            let value = value_text(&request, "value")?;
            sqlx::query(
                "INSERT INTO kv (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(key)
            .bind(value)
            .execute(&pool)
            .await
            .map_err(failed)?;
            Ok(json!({ "ok": true }))
        }
        "delete" => {
            let key = key(&request)?;
            let done = sqlx::query("DELETE FROM kv WHERE key = ?1")
                .bind(key)
                .execute(&pool)
                .await
                .map_err(failed)?;
            Ok(json!({ "deleted": done.rows_affected() > 0 }))
        }
        "list" => list(&pool, &request).await.map_err(|e| match e {
            ListError::Sql(error) => failed(error),
            ListError::Call(error) => error,
        }),
        "incr" => {
            let key = key(&request)?;
            let by = match &request["by"] {
                Value::Null => 1,
                by => by
                    .as_i64()
                    .ok_or_else(|| CallError::bad_request("`by` must be an integer (default 1)"))?,
            };
            let mut transaction = pool.begin().await.map_err(failed)?;
            let current: Option<String> = sqlx::query_scalar("SELECT value FROM kv WHERE key = ?1")
                .bind(key)
                .fetch_optional(&mut *transaction)
                .await
                .map_err(failed)?;
            let current = match parse(current) {
                Value::Null => 0,
                value => value.as_i64().ok_or_else(|| {
                    CallError::bad_request(format!(
                        "key {key:?} holds {}, not an integer: incr counts integers only",
                        crate::clip::clip(&value.to_string())
                    ))
                })?,
            };
            let next = current.checked_add(by).ok_or_else(|| {
                CallError::failed(format!("key {key:?} would pass the 64-bit integer range"))
            })?;
            sqlx::query(
                "INSERT INTO kv (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(key)
            .bind(next.to_string())
            .execute(&mut *transaction)
            .await
            .map_err(failed)?;
            transaction.commit().await.map_err(failed)?;
            Ok(json!({ "value": next }))
        }
        "cas" => {
            let key = key(&request)?;
            let expected = optional_value_text(&request, "expected")?;
            let value = optional_value_text(&request, "value")?;
            let mut transaction = pool.begin().await.map_err(failed)?;
            let current: Option<String> = sqlx::query_scalar("SELECT value FROM kv WHERE key = ?1")
                .bind(key)
                .fetch_optional(&mut *transaction)
                .await
                .map_err(failed)?;
            if current != expected {
                return Ok(json!({ "swapped": false, "current": parse(current) }));
            }
            match &value {
                Some(value) => sqlx::query(
                    "INSERT INTO kv (key, value) VALUES (?1, ?2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind(key)
                .bind(value),
                None => sqlx::query("DELETE FROM kv WHERE key = ?1").bind(key),
            }
            .execute(&mut *transaction)
            .await
            .map_err(failed)?;
            transaction.commit().await.map_err(failed)?;
            Ok(json!({ "swapped": true, "current": parse(value) }))
        }
        other => Err(CallError::bad_request(format!(
            "kv has no operation {:?}; use get, set, delete, list, incr or cas",
            crate::clip::clip(other)
        ))),
    }
}

enum ListError {
    Sql(sqlx::Error),
    Call(CallError),
}

/// `list`: the entries whose key starts with `prefix`, in key order, within the caps.
async fn list(pool: &SqlitePool, request: &Value) -> Result<Value, ListError> {
    let prefix = match &request["prefix"] {
        Value::Null => "",
        prefix => prefix
            .as_str()
            .ok_or_else(|| ListError::Call(CallError::bad_request("`prefix` must be a string")))?,
    };
    if prefix.len() > MAX_KEY_BYTES {
        return Err(ListError::Call(key_too_long(prefix.len())));
    }
    let limit = match &request["limit"] {
        Value::Null => MAX_LIST_ENTRIES,
        limit => limit
            .as_u64()
            .map(|limit| (limit as usize).min(MAX_LIST_ENTRIES))
            .ok_or_else(|| {
                ListError::Call(CallError::bad_request(format!(
                    "`limit` must be a whole number (at most {MAX_LIST_ENTRIES})"
                )))
            })?,
    };
    // Keys are UTF-8 and compared bytewise: every key that starts with `prefix` sorts at
    // or after it and before `prefix` followed by the highest code point.
    let upper = format!("{prefix}\u{10FFFF}");
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT key, value FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT ?3",
    )
    .bind(prefix)
    .bind(upper)
    .bind(limit as i64 + 1)
    .fetch_all(pool)
    .await
    .map_err(ListError::Sql)?;
    let mut entries = Vec::with_capacity(rows.len().min(limit));
    let mut bytes = 0;
    let mut more = false;
    for (key, value) in rows {
        bytes += key.len() + value.len();
        if entries.len() == limit || bytes > MAX_LIST_BYTES {
            more = true;
            break;
        }
        entries.push(json!({ "key": key, "value": parse(Some(value)) }));
    }
    Ok(json!({ "entries": entries, "more": more }))
}

/// The request's `key`, within the cap.
fn key(request: &Value) -> Result<&str, CallError> {
    let key = super::field_str(request, "key")?;
    if key.len() > MAX_KEY_BYTES {
        return Err(key_too_long(key.len()));
    }
    Ok(key)
}

fn key_too_long(bytes: usize) -> CallError {
    CallError::new(
        ErrorCode::TooLarge,
        format!("the key is {bytes} bytes, over the {MAX_KEY_BYTES} a key may have"),
    )
}

/// Field `field` as JSON text, within the value cap; it must be there.
fn value_text(request: &Value, field: &str) -> Result<String, CallError> {
    match request.get(field) {
        None => Err(CallError::bad_request(format!(
            "the request needs `{field}`"
        ))),
        Some(value) => encode_value(value),
    }
}

/// Field `field` as JSON text, `None` when it is null or absent.
fn optional_value_text(request: &Value, field: &str) -> Result<Option<String>, CallError> {
    match request.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => encode_value(value).map(Some),
    }
}

fn encode_value(value: &Value) -> Result<String, CallError> {
    let text = value.to_string();
    if text.len() > MAX_VALUE_BYTES {
        return Err(CallError::new(
            ErrorCode::TooLarge,
            format!(
                "the value is {} bytes of JSON, over the {MAX_VALUE_BYTES} a value may have",
                text.len()
            ),
        ));
    }
    Ok(text)
}

/// A stored value back as JSON (`null` when absent).
fn parse(text: Option<String>) -> Value {
    text.and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null)
}
