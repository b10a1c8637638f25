//! `sql`: databases by name, pooled in the host. `--database NAME=URL` names one
//! (`postgres://…`, or `sqlite://PATH`); any other name a manifest grants is an embedded
//! SQLite file, `DATA_DIR/sql/NAME.sqlite`. A task borrows a connection for one statement
//! or one transaction and gives it back at once; it never sees the URL or the password.
//!
//! Requests and responses:
//! - `query {sql, params?}` → `{"rows": [{column: value}], "more": bool}`
//! - `execute {sql, params?}` → `{"rows_affected": N, "last_insert_id": N?}` (SQLite's rowid)
//! - `transaction {statements: [{op?, sql, params?}]}` → `{"results": [each one's response]}`:
//!   all or nothing.
//!
//! Parameters (`$1`, or `?1`/`?` in SQLite) are always bound, never spliced into the text:
//! null, booleans, integers, floats and strings as themselves, arrays and objects as JSON
//! text. Columns come back as JSON: integers, floats, booleans, text, null; bytes as a list
//! of numbers; any other type is an error telling to cast it to text in the query.
//!
//! Each statement's timeout is the time left on the task's wall clock (PostgreSQL's
//! `statement_timeout`; for SQLite the task's timer drops the call). Rows and bytes are
//! capped; past the cap, `more` is true.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::TryStreamExt;
use serde_json::{Map, Value, json};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Column, Row, TypeInfo, ValueRef};
use tokio::sync::OnceCell;

use super::{CallError, ErrorCode, TaskAccess};

use crate::secret::Secret;

/// Most rows one statement returns.
pub const MAX_ROWS: usize = 1000;

/// Most bytes of JSON the rows of one statement may take.
pub const MAX_RESULT_BYTES: usize = 512 << 10;

/// Longest statement, in bytes.
pub const MAX_STATEMENT_BYTES: usize = 64 << 10;

/// Most parameters of one statement, and statements of one transaction.
pub const MAX_PARAMS: usize = 100;
pub const MAX_TRANSACTION_STATEMENTS: usize = 100;

/// Connections a PostgreSQL pool keeps open at most; tasks beyond them wait for one.
const POSTGRES_POOL_SIZE: u32 = 16;

/// Connections an embedded SQLite database's pool keeps (SQLite writes one at a time).
const SQLITE_POOL_SIZE: u32 = 4;

/// The databases, their pools opened on first use.
pub struct Databases {
    /// Where embedded databases live (`DATA_DIR/sql`).
    dir: PathBuf,
    /// The operator's `--database` URLs by name.
    urls: HashMap<String, Secret>,
    open: Mutex<HashMap<String, Arc<OnceCell<Pool>>>>,
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Databases {
    /// Checks the `--database` URLs; connects to nothing yet.
    pub fn new(data_dir: &Path, databases: &[(String, Secret)]) -> anyhow::Result<Databases> {
        let mut urls = HashMap::new();
        for (name, secret) in databases {
            let url = secret.expose();
            super::grants::check_store_name(name).map_err(|why| {
                anyhow::anyhow!("--database {name}=…: the name is not valid: {why}")
            })?;
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
            {
                anyhow::bail!(
                    "--database {name}=…: the URL must start with postgres://, postgresql:// or sqlite:"
                );
            }
            urls.insert(name.clone(), secret.clone());
        }
        Ok(Databases {
            dir: data_dir.join("sql"),
            urls,
            open: Mutex::default(),
        })
    }

    async fn pool(&self, name: &str) -> Result<Pool, CallError> {
        let cell = Arc::clone(
            self.open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(name.to_owned())
                .or_default(),
        );
        cell.get_or_try_init(|| self.connect(name)).await.cloned()
    }

    async fn connect(&self, name: &str) -> Result<Pool, CallError> {
        match self.urls.get(name).map(Secret::expose) {
            Some(url) if url.starts_with("sqlite:") => {
                let options = SqliteConnectOptions::from_str(url)
                    .map_err(|error| unavailable(name, &error))?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(5));
                SqlitePoolOptions::new()
                    .max_connections(SQLITE_POOL_SIZE)
                    .connect_with(options)
                    .await
                    .map(Pool::Sqlite)
                    .map_err(|error| unavailable(name, &error))
            }
            Some(url) => PgPoolOptions::new()
                .max_connections(POSTGRES_POOL_SIZE)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .map(Pool::Postgres)
                .map_err(|error| unavailable(name, &error)),
            None => open_sqlite(&self.dir.join(format!("{name}.sqlite")), SQLITE_POOL_SIZE)
                .await
                .map(Pool::Sqlite),
        }
    }
}

/// An embedded SQLite database at `path` (created with its folder if missing), in WAL mode.
pub(super) async fn open_sqlite(path: &Path, connections: u32) -> Result<SqlitePool, CallError> {
    let failed =
        |what: String| CallError::new(ErrorCode::Unavailable, format!("{what} (check --data-dir)"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|error| failed(format!("could not create {}: {error}", dir.display())))?;
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    SqlitePoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await
        .map_err(|error| failed(format!("could not open {}: {error}", path.display())))
}

fn unavailable(name: &str, error: &dyn std::fmt::Display) -> CallError {
    CallError::new(
        ErrorCode::Unavailable,
        format!("database {name:?} cannot be reached: {error}"),
    )
}

/// One statement of a request.
struct Statement<'a> {
    query: bool,
    sql: &'a str,
    params: &'a [Value],
}

impl<'a> Statement<'a> {
    fn parse(request: &'a Value, query: bool) -> Result<Statement<'a>, CallError> {
        let sql = super::field_str(request, "sql")?;
        if sql.len() > MAX_STATEMENT_BYTES {
            return Err(CallError::new(
                ErrorCode::TooLarge,
                format!(
                    "the statement is {} bytes, over {MAX_STATEMENT_BYTES}",
                    sql.len()
                ),
            ));
        }
        let params = match &request["params"] {
            Value::Null => &[][..],
            Value::Array(params) if params.len() <= MAX_PARAMS => params.as_slice(),
            Value::Array(_) => {
                return Err(CallError::bad_request(format!(
                    "a statement takes at most {MAX_PARAMS} parameters"
                )));
            }
            _ => return Err(CallError::bad_request("`params` must be a list")),
        };
        Ok(Statement { query, sql, params })
    }
}

pub(super) async fn call(access: &TaskAccess, request: Value) -> Result<Value, CallError> {
    let op = super::op(&request)?;
    let Some(database) = access.grants().sql.as_deref() else {
        return Err(access.not_allowed(format!("SQL operation {op:?}"), "sql = \"DATABASE\""));
    };
    let statements = match op {
        "query" | "execute" => vec![Statement::parse(&request, op == "query")?],
        "transaction" => {
            let Value::Array(list) = &request["statements"] else {
                return Err(CallError::bad_request(
                    "a transaction needs `statements`: a list of {op, sql, params}",
                ));
            };
            if list.len() > MAX_TRANSACTION_STATEMENTS {
                return Err(CallError::bad_request(format!(
                    "a transaction has at most {MAX_TRANSACTION_STATEMENTS} statements"
                )));
            }
            list.iter()
                .map(|statement| {
                    Statement::parse(statement, statement["op"].as_str() == Some("query"))
                })
                .collect::<Result<_, _>>()?
        }
        other => {
            return Err(CallError::bad_request(format!(
                "sql has no operation {:?}; use query, execute or transaction",
                crate::clip::clip(other)
            )));
        }
    };
    let pool = access.host.sql.pool(database).await?;
    let results = match pool {
        Pool::Sqlite(pool) => sqlite::run(&pool, &statements).await,
        Pool::Postgres(pool) => postgres::run(&pool, &statements, access.time_left()).await,
    }
    .map_err(|(index, error)| statement_failed(database, index, statements.len(), &error))?;
    if op == "transaction" {
        Ok(json!({ "results": results }))
    } else {
        Ok(results.into_iter().next().unwrap_or(Value::Null))
    }
}

/// An error of statement `index` (of `count`), for the guest.
fn statement_failed(
    database: &str,
    index: usize,
    count: usize,
    error: &StatementError,
) -> CallError {
    match error {
        StatementError::Call(error) => error.clone(),
        StatementError::Sql(error) => {
            let which = if count > 1 {
                format!("statement {} of the transaction (rolled back)", index + 1)
            } else {
                "the statement".to_owned()
            };
            let code = match error {
                sqlx::Error::Database(_) => ErrorCode::Failed,
                _ => ErrorCode::Unavailable,
            };
            CallError::new(
                code,
                format!("{which} failed on database {database:?}: {error}"),
            )
        }
    }
}

enum StatementError {
    Sql(sqlx::Error),
    Call(CallError),
}

impl From<sqlx::Error> for StatementError {
    fn from(error: sqlx::Error) -> Self {
        StatementError::Sql(error)
    }
}

/// Rows gathered within the caps.
struct Rows {
    rows: Vec<Value>,
    bytes: usize,
    more: bool,
}

impl Rows {
    fn new() -> Rows {
        Rows {
            rows: Vec::new(),
            bytes: 0,
            more: false,
        }
    }

    /// Takes one row; `false` once the caps are reached (the row is left out).
    fn push(&mut self, row: Map<String, Value>) -> bool {
        let row = Value::Object(row);
        self.bytes += row.to_string().len();
        if self.rows.len() == MAX_ROWS || self.bytes > MAX_RESULT_BYTES {
            self.more = true;
            return false;
        }
        self.rows.push(row);
        true
    }

    fn into_json(self) -> Value {
        json!({ "rows": self.rows, "more": self.more })
    }
}

/// A column of a type the host does not turn into JSON.
fn unsupported(column: &str, type_name: &str) -> StatementError {
    StatementError::Call(CallError::bad_request(format!(
        "column {column:?} has type {type_name}, which is not returned as JSON: cast it to \
         text in the query (CAST(x AS TEXT), or x::text)"
    )))
}

/// Binds JSON parameters to a query of either database.
macro_rules! bind_params {
    ($query:expr, $params:expr) => {{
        let mut query = $query;
        for param in $params {
            query = match param {
                Value::Null => query.bind(None::<String>),
                Value::Bool(value) => query.bind(*value),
                Value::Number(number) => match number.as_i64() {
                    Some(integer) => query.bind(integer),
                    None => query.bind(number.as_f64().unwrap_or(f64::NAN)),
                },
                Value::String(text) => query.bind(text.as_str()),
                other => query.bind(other.to_string()),
            };
        }
        query
    }};
}

mod sqlite {
    use super::*;
    use sqlx::sqlite::SqliteRow;

    pub(super) async fn run(
        pool: &SqlitePool,
        statements: &[Statement<'_>],
    ) -> Result<Vec<Value>, (usize, StatementError)> {
        let mut transaction = pool.begin().await.map_err(|e| (0, e.into()))?;
        let mut results = Vec::with_capacity(statements.len());
        for (index, statement) in statements.iter().enumerate() {
            let query = bind_params!(sqlx::query(statement.sql), statement.params);
            let result = if statement.query {
                let mut rows = Rows::new();
                let mut stream = query.fetch(&mut *transaction);
                while let Some(row) = stream.try_next().await.map_err(|e| (index, e.into()))? {
                    if !rows.push(to_json(&row).map_err(|e| (index, e))?) {
                        break;
                    }
                }
                drop(stream);
                rows.into_json()
            } else {
                let done = query
                    .execute(&mut *transaction)
                    .await
                    .map_err(|e| (index, e.into()))?;
                json!({
                    "rows_affected": done.rows_affected(),
                    "last_insert_id": done.last_insert_rowid(),
                })
            };
            results.push(result);
        }
        transaction
            .commit()
            .await
            .map_err(|e| (statements.len().saturating_sub(1), e.into()))?;
        Ok(results)
    }

    fn to_json(row: &SqliteRow) -> Result<Map<String, Value>, StatementError> {
        let mut object = Map::new();
        for column in row.columns() {
            let index = column.ordinal();
            let raw = row.try_get_raw(index)?;
            let value = if raw.is_null() {
                Value::Null
            } else {
                match raw.type_info().name() {
                    "INTEGER" | "BOOLEAN" => json!(row.try_get_unchecked::<i64, _>(index)?),
                    "REAL" => json!(row.try_get_unchecked::<f64, _>(index)?),
                    "TEXT" | "DATETIME" | "DATE" | "TIME" => {
                        json!(row.try_get_unchecked::<String, _>(index)?)
                    }
                    "BLOB" => json!(row.try_get_unchecked::<Vec<u8>, _>(index)?),
                    other => return Err(unsupported(column.name(), other)),
                }
            };
            object.insert(column.name().to_owned(), value);
        }
        Ok(object)
    }
}

/// How long after the task's time is up PostgreSQL's `statement_timeout` stops a statement.
const STATEMENT_TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

mod postgres {
    use super::*;
    use sqlx::postgres::PgRow;

    pub(super) async fn run(
        pool: &PgPool,
        statements: &[Statement<'_>],
        time_left: Duration,
    ) -> Result<Vec<Value>, (usize, StatementError)> {
        let mut transaction = pool.begin().await.map_err(|e| (0, e.into()))?;
        // The task's wall clock bounds every statement on the server too: a statement
        // still running when the task's time is up is stopped there, not only abandoned.
        // The server's timeout comes a little after the task's own, so the task ends as a
        // `timeout` (its timer drops this future, and the guard cancels the statement at
        // once); the server's is the backstop for a cancel that does not arrive.
        let timeout_ms = (time_left + STATEMENT_TIMEOUT_MARGIN)
            .as_millis()
            .clamp(1, i32::MAX as u128);
        let backend: i32 = sqlx::query_scalar(
            "SELECT pg_backend_pid() FROM set_config('statement_timeout', $1, true)",
        )
        .bind(timeout_ms.to_string())
        .fetch_one(&mut *transaction)
        .await
        .map_err(|e| (0, e.into()))?;
        // A cancel or timeout drops this future mid-statement: the guard then asks the
        // server to stop the statement at once, rather than when its timeout passes.
        let mut guard = CancelOnDrop {
            pool: pool.clone(),
            backend,
            finished: false,
        };
        let ran = async {
            let mut results = Vec::with_capacity(statements.len());
            for (index, statement) in statements.iter().enumerate() {
                let query = bind_params!(sqlx::query(statement.sql), statement.params);
                let result = if statement.query {
                    let mut rows = Rows::new();
                    let mut stream = query.fetch(&mut *transaction);
                    while let Some(row) = stream.try_next().await.map_err(|e| (index, e.into()))? {
                        if !rows.push(to_json(&row).map_err(|e| (index, e))?) {
                            break;
                        }
                    }
                    drop(stream);
                    rows.into_json()
                } else {
                    let done = query
                        .execute(&mut *transaction)
                        .await
                        .map_err(|e| (index, e.into()))?;
                    json!({ "rows_affected": done.rows_affected() })
                };
                results.push(result);
            }
            transaction
                .commit()
                .await
                .map_err(|e| (statements.len().saturating_sub(1), e.into()))?;
            Ok(results)
        }
        .await;
        // Ended by itself, well or not: nothing is left running to cancel.
        guard.finished = true;
        ran
    }

    /// Cancels the statement of server process `backend` when dropped before `finished`.
    struct CancelOnDrop {
        pool: PgPool,
        backend: i32,
        finished: bool,
    }

    impl Drop for CancelOnDrop {
        fn drop(&mut self) {
            if self.finished {
                return;
            }
            let (pool, backend) = (self.pool.clone(), self.backend);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let cancelled = tokio::time::timeout(
                        Duration::from_secs(10),
                        sqlx::query("SELECT pg_cancel_backend($1)")
                            .bind(backend)
                            .execute(&pool),
                    )
                    .await;
                    if !matches!(cancelled, Ok(Ok(_))) {
                        tracing::warn!(backend, "could not cancel an abandoned statement; its statement_timeout will end it");
                    }
                });
            }
        }
    }

    fn to_json(row: &PgRow) -> Result<Map<String, Value>, StatementError> {
        let mut object = Map::new();
        for column in row.columns() {
            let index = column.ordinal();
            let raw = row.try_get_raw(index)?;
            let type_name = raw.type_info().name().to_owned();
            let value = if raw.is_null() {
                Value::Null
            } else {
                match type_name.as_str() {
                    "BOOL" => json!(row.try_get::<bool, _>(index)?),
                    "INT2" => json!(row.try_get::<i16, _>(index)?),
                    "INT4" => json!(row.try_get::<i32, _>(index)?),
                    "INT8" => json!(row.try_get::<i64, _>(index)?),
                    "FLOAT4" => json!(row.try_get::<f32, _>(index)?),
                    "FLOAT8" => json!(row.try_get::<f64, _>(index)?),
                    "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" => {
                        json!(row.try_get::<String, _>(index)?)
                    }
                    "BYTEA" => json!(row.try_get::<Vec<u8>, _>(index)?),
                    "VOID" => Value::Null,
                    other => return Err(unsupported(column.name(), other)),
                }
            };
            object.insert(column.name().to_owned(), value);
        }
        Ok(object)
    }
}
