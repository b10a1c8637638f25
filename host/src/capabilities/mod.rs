//! What a task may do beyond computing, when its manifest grants it: key-value stores, SQL
//! databases, mail and publishing to topics (and outbound HTTP). The host holds every
//! connection, file and password; a task only asks, through one call.
//!
//! One door: [`TaskAccess::call`], keyed by capability name (`kv`, `sql`, `mail`,
//! `publish`, `http`), with a JSON request and a JSON response. The sandbox's imports (the
//! preview 1 `taskhost.call` and the preview 2 WIT interfaces) both end there, so a
//! capability is one file here and one arm in [`TaskAccess::dispatch`].
//!
//! Every call is checked against the task's [`Grants`] first; a call no grant covers is
//! answered with a `not_allowed` error (never a trap) and counted in `/metrics`. Calls are
//! async: they run on the task's own future, so the task's wall clock covers them and a
//! cancel or timeout drops them where they wait.
//!
//! This module knows nothing of connections: publishing goes through a [`Publisher`] that
//! the application layer provides.

mod grants;
pub mod http;
mod kv;
mod mail;
mod publish;
mod sql;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

pub use grants::{Grants, check_topic};
pub use publish::{Fanout, Publisher};

use crate::metrics::CapabilityCounters;
use crate::secret::Secret;

/// Longest capability name a call may give, in bytes.
pub const MAX_CALL_NAME_BYTES: usize = 64;

/// Largest request a task may pass one call, in bytes of JSON.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Largest response one call may return, in bytes of JSON; the capabilities cap what they
/// return below it (rows, list entries, values).
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Most capability calls one task may make.
pub const MAX_CALLS_PER_TASK: u32 = 10_000;

/// The operator's settings for the capabilities (the flags `--data-dir`, `--database`,
/// `--smtp`, `--mail-from`, `--kv-bytes`, `--http-*`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the key-value stores and the embedded databases live.
    pub data_dir: PathBuf,
    /// Databases named by the operator: name → URL (`sqlite://…` or `postgres://…`).
    pub databases: Vec<(String, Secret)>,
    /// The SMTP relay (`smtp://`, `smtps://`, with `?tls=required`), if mail is sent for real.
    pub smtp: Option<Secret>,
    /// Certificates (PEM) trusted for the relay's TLS beside the public roots (`--smtp-ca`).
    pub smtp_ca: Option<PathBuf>,
    /// The sender of every mail.
    pub mail_from: String,
    /// Bytes of keys and values one key-value store may hold (`--kv-bytes`).
    pub kv_bytes: u64,
    /// Each task's outbound HTTP caps (`--http-requests`, `--http-request-bytes`,
    /// `--http-response-bytes`).
    pub http: http::HttpCaps,
}

/// The host's side of every capability, shared by all tasks.
pub struct Capabilities {
    kv: kv::Stores,
    sql: sql::Databases,
    mail: mail::Mailer,
    publisher: Arc<dyn Publisher>,
    counters: CapabilityCounters,
    /// Each task's outbound HTTP caps.
    http_caps: http::HttpCaps,
}

impl Capabilities {
    /// Checks the settings (the SMTP URL, the database URLs); opens nothing yet: stores and
    /// pools open on their first use.
    pub fn new(
        settings: &Settings,
        publisher: Arc<dyn Publisher>,
        counters: CapabilityCounters,
    ) -> anyhow::Result<Capabilities> {
        Ok(Capabilities {
            kv: kv::Stores::new(settings.data_dir.join("kv"), settings.kv_bytes),
            sql: sql::Databases::new(&settings.data_dir, &settings.databases)?,
            mail: mail::Mailer::new(
                settings.smtp.as_ref().map(Secret::expose),
                &settings.mail_from,
                settings.smtp_ca.as_deref(),
            )?,
            publisher,
            counters,
            http_caps: settings.http,
        })
    }

    /// One task's access: its grants, and its own counts of calls and mail.
    pub fn for_task(
        self: &Arc<Self>,
        task: &Arc<str>,
        grants: Arc<Grants>,
        timeout: Duration,
    ) -> TaskAccess {
        TaskAccess {
            host: Arc::clone(self),
            grants,
            task: Arc::clone(task),
            deadline: Instant::now() + timeout,
            usage: Arc::default(),
        }
    }
}

/// A running task's door to the capabilities. Cheap to clone: a call clones it out of the
/// task's store, so that the store is free while the call waits.
#[derive(Clone)]
pub struct TaskAccess {
    host: Arc<Capabilities>,
    grants: Arc<Grants>,
    task: Arc<str>,
    /// When the task's wall clock runs out: SQL statements get the time left as their own
    /// timeout.
    deadline: Instant,
    usage: Arc<Usage>,
}

impl std::fmt::Debug for TaskAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskAccess")
            .field("task", &self.task)
            .field("grants", &self.grants)
            .finish_non_exhaustive()
    }
}

/// What one task has used so far, against its per-task caps.
#[derive(Debug, Default)]
struct Usage {
    calls: AtomicU32,
    mail_recipients: AtomicU32,
    mails: AtomicU32,
    /// The task's outbound HTTP (allowlist, counts, deadline), made on its first request.
    http: std::sync::OnceLock<http::HttpSession>,
}

impl TaskAccess {
    /// Serves one call: `name` is the capability, `request` its JSON. Checks the grant,
    /// counts the call by capability and outcome, and never panics on a guest's input.
    pub async fn call(&self, name: &str, request: &[u8]) -> Result<Value, CallError> {
        let label = capability_label(name);
        let result = self.checked_call(name, request).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) => error.code.as_str(),
        };
        self.host.counters.call(label, outcome);
        if let Err(error) = &result {
            if error.code == ErrorCode::NotAllowed {
                self.host.counters.refused(label);
            }
            tracing::debug!(task = %self.task, capability = label, code = outcome, message = %error.message, "capability call failed");
        }
        result
    }

    async fn checked_call(&self, name: &str, request: &[u8]) -> Result<Value, CallError> {
        if request.len() > MAX_REQUEST_BYTES {
            return Err(CallError::new(
                ErrorCode::TooLarge,
                format!(
                    "the request is {} bytes, over the {MAX_REQUEST_BYTES} one call may carry",
                    request.len()
                ),
            ));
        }
        let calls = self.usage.calls.fetch_add(1, Ordering::Relaxed);
        if calls >= MAX_CALLS_PER_TASK {
            return Err(CallError::new(
                ErrorCode::LimitReached,
                format!("a task may make at most {MAX_CALLS_PER_TASK} capability calls"),
            ));
        }
        let request: Value = serde_json::from_slice(request).map_err(|error| {
            CallError::bad_request(format!("the request to {name:?} is not JSON: {error}"))
        })?;
        self.dispatch(name, request).await
    }

    /// The one point where a capability name meets its implementation. A new capability
    /// is a module with `async fn call(&TaskAccess, Value) -> Result<Value, CallError>` and
    /// an arm here.
    async fn dispatch(&self, name: &str, request: Value) -> Result<Value, CallError> {
        match name {
            "kv" => kv::call(self, request).await,
            "sql" => sql::call(self, request).await,
            "mail" => mail::call(self, request).await,
            "publish" => publish::call(self, request).await,
            "http" => http::call(self, request).await,
            other => Err(CallError::bad_request(format!(
                "there is no capability {:?}; the capabilities are kv, sql, mail, publish and http",
                crate::clip::clip(other)
            ))),
        }
    }

    /// The task's outbound HTTP: its allowlist (the manifest's `http` grant), the
    /// operator's caps and the task's deadline, made on the first request.
    pub fn http(&self) -> &http::HttpSession {
        self.usage.http.get_or_init(|| {
            // The grant was checked when the manifest was read; an entry that no longer
            // parses grants nothing.
            let allowlist = http::Allowlist::parse(&self.grants.http).unwrap_or_default();
            http::HttpSession::new(
                allowlist.into(),
                self.host.http_caps,
                tokio::time::Instant::from_std(self.deadline),
            )
        })
    }

    /// Counts one request a component made through `wasi:http` (not through
    /// [`TaskAccess::call`], which counts its own) under the `http` capability, as a call
    /// would be counted: by outcome, and refusals once more. A failure is logged at debug.
    pub fn count_http<T>(&self, result: &Result<T, http::HttpError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(error) => error.code().as_str(),
        };
        self.host.counters.call("http", outcome);
        if let Err(error) = result {
            if matches!(error, http::HttpError::NotAllowed { .. }) {
                self.host.counters.refused("http");
            }
            tracing::debug!(task = %self.task, capability = "http", code = outcome, message = %error, "wasi:http request refused or failed");
        }
    }

    /// The task's grants.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// The task's name.
    pub fn task(&self) -> &str {
        &self.task
    }

    /// Time left on the task's wall clock.
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// A `not_allowed` error for `what`, saying which grant would allow it.
    pub fn not_allowed(&self, what: String, grant: &str) -> CallError {
        CallError::new(
            ErrorCode::NotAllowed,
            format!(
                "{what} is not allowed: task {:?} has no grant for it; the operator grants it \
                 in {}.toml, [capabilities] {grant}",
                self.task, self.task
            ),
        )
    }
}

/// The label a capability name is counted under in `/metrics`.
fn capability_label(name: &str) -> &'static str {
    match name {
        "kv" => "kv",
        "sql" => "sql",
        "mail" => "mail",
        "publish" => "publish",
        "http" => "http",
        _ => "unknown",
    }
}

/// Why a call did not succeed: `{"code": …, "message": …}` for the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallError {
    pub code: ErrorCode,
    /// For a person: what happened and what to do.
    pub message: String,
}

impl CallError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> CallError {
        CallError {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> CallError {
        CallError::new(ErrorCode::BadRequest, message)
    }

    pub fn failed(message: impl Into<String>) -> CallError {
        CallError::new(ErrorCode::Failed, message)
    }
}

/// The kinds of call errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No grant covers the call.
    NotAllowed,
    /// The request is malformed: unknown capability or operation, missing fields.
    BadRequest,
    /// The request or the response is over a cap.
    TooLarge,
    /// A per-task cap (calls, recipients, mails) is used up.
    LimitReached,
    /// The capability ran and failed (an SQL error, the relay refused the mail).
    Failed,
    /// The capability is not there (the database cannot be reached).
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotAllowed => "not_allowed",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::Failed => "failed",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// The string field `key` of a request object.
pub(crate) fn field_str<'a>(request: &'a Value, key: &str) -> Result<&'a str, CallError> {
    request[key]
        .as_str()
        .ok_or_else(|| CallError::bad_request(format!("the request needs a string `{key}`")))
}

/// The operation of a request (`{"op": "get", …}`).
pub(crate) fn op(request: &Value) -> Result<&str, CallError> {
    field_str(request, "op")
}
