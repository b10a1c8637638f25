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
//!
//! Each store holds at most the operator's `--kv-bytes` of keys and values: a write that
//! would grow it past that is refused (`limit_reached`, counted in `/metrics` under the call's
//! outcome); a write that shrinks it, or a delete, always goes through. The store's size is
//! summed once when it opens and kept up to date by each write, which holds the store's one
//! connection from reading the old entry until its count is updated.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use sqlx::{Connection, SqlitePool};
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
    /// Bytes of keys and values one store may hold (`--kv-bytes`).
    max_bytes: u64,
    open: Mutex<HashMap<String, Arc<OnceCell<Arc<Store>>>>>,
}

/// One open store.
struct Store {
    name: String,
    pool: SqlitePool,
    /// Bytes of its keys and values (UTF-8 key, JSON text value), as of the last write.
    bytes: AtomicU64,
}

impl Stores {
    pub fn new(dir: PathBuf, max_bytes: u64) -> Stores {
        Stores {
            dir,
            max_bytes,
            open: Mutex::default(),
        }
    }

    /// Store `name`, opening (and creating) it the first time.
    async fn store(&self, name: &str) -> Result<Arc<Store>, CallError> {
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
            let bytes: i64 = sqlx::query_scalar(
                "SELECT COALESCE(SUM(length(CAST(key AS BLOB)) + length(CAST(value AS BLOB))), 0) FROM kv",
            )
            .fetch_one(&pool)
            .await
            .map_err(|error| unavailable(name, &error))?;
            Ok(Arc::new(Store {
                name: name.to_owned(),
                pool,
                bytes: AtomicU64::new(u64::try_from(bytes).unwrap_or(0)),
            }))
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

impl Store {
    /// Sets `key` to `value` (`None`: deletes it) within the store's byte cap, in
    /// `transaction`, and commits. The transaction borrows the store's one connection from
    /// the caller, who keeps it until this returns: no other operation runs between the
    /// read of the old entry and the count's update.
    async fn write(
        &self,
        mut transaction: sqlx::Transaction<'_, sqlx::Sqlite>,
        key: &str,
        value: Option<&str>,
        max_bytes: u64,
    ) -> Result<(), CallError> {
        let failed = |error: sqlx::Error| unavailable(&self.name, &error);
        let old: Option<i64> =
            sqlx::query_scalar("SELECT length(CAST(value AS BLOB)) FROM kv WHERE key = ?1")
                .bind(key)
                .fetch_optional(&mut *transaction)
                .await
                .map_err(failed)?;
        let old = old.map_or(0, |value| {
            key.len() as u64 + u64::try_from(value).unwrap_or(0)
        });
        let new = value.map_or(0, |value| (key.len() + value.len()) as u64);
        let before = self.bytes.load(Ordering::Acquire);
        let after = before.saturating_sub(old) + new;
        if new > old && after > max_bytes {
            return Err(CallError::new(
                ErrorCode::LimitReached,
                format!(
                    "key-value store {:?} is full: it holds {before} bytes of keys and values, \
                     and this write would bring it to {after}, past the {max_bytes} a store may \
                     hold (the operator's --kv-bytes); delete keys it no longer needs, or ask \
                     the operator for more",
                    self.name
                ),
            ));
        }
        match value {
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
        self.bytes.store(after, Ordering::Release);
        Ok(())
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
    let max_bytes = access.host.kv.max_bytes;
    let store = access.host.kv.store(store).await?;
    let pool = &store.pool;
    let failed = |error: sqlx::Error| unavailable(&store.name, &error);
    // The store's one connection, held through a write and its count (see `Store::write`).
    let connection = || async { pool.acquire().await.map_err(failed) };
    match op {
        "get" => {
            let key = key(&request)?;
            let value: Option<String> = sqlx::query_scalar("SELECT value FROM kv WHERE key = ?1")
                .bind(key)
                .fetch_optional(pool)
                .await
                .map_err(failed)?;
            Ok(json!({ "value": parse(value) }))
        }
        "set" => {
            let key = key(&request)?;
            let value = value_text(&request, "value")?;
            let mut connection = connection().await?;
            let transaction = connection.begin().await.map_err(failed)?;
            store
                .write(transaction, key, Some(&value), max_bytes)
                .await?;
            Ok(json!({ "ok": true }))
        }
        "delete" => {
            let key = key(&request)?;
            let mut connection = connection().await?;
            let mut transaction = connection.begin().await.map_err(failed)?;
            let there: Option<i64> = sqlx::query_scalar("SELECT 1 FROM kv WHERE key = ?1")
                .bind(key)
                .fetch_optional(&mut *transaction)
                .await
                .map_err(failed)?;
            store.write(transaction, key, None, max_bytes).await?;
            Ok(json!({ "deleted": there.is_some() }))
        }
        "list" => list(pool, &request).await.map_err(|e| match e {
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
            let mut connection = connection().await?;
            let mut transaction = connection.begin().await.map_err(failed)?;
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
            store
                .write(transaction, key, Some(&next.to_string()), max_bytes)
                .await?;
            Ok(json!({ "value": next }))
        }
        "cas" => {
            let key = key(&request)?;
            let expected = optional_value_text(&request, "expected")?;
            let value = optional_value_text(&request, "value")?;
            let mut connection = connection().await?;
            let mut transaction = connection.begin().await.map_err(failed)?;
            let current: Option<String> = sqlx::query_scalar("SELECT value FROM kv WHERE key = ?1")
                .bind(key)
                .fetch_optional(&mut *transaction)
                .await
                .map_err(failed)?;
            if current != expected {
                return Ok(json!({ "swapped": false, "current": parse(current) }));
            }
            store
                .write(transaction, key, value.as_deref(), max_bytes)
                .await?;
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
