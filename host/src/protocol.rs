//! The wire format of `docs/PROTOCOL.md`: every message a client sends or receives, as typed
//! data, and the one function that turns a text frame into a [`Request`].
//!
//! Nothing here does I/O. Handlers never see raw JSON: a frame is either a [`Request`] or a
//! [`WireError`] that already says, for a person, what was wrong with it.

use std::borrow::Cow;
use std::sync::Arc;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::limits::json_kind;
pub use crate::limits::{Limits, RequestedLimits};
pub use crate::registry::{Delivery, TaskListing, TaskState};

/// The protocol version announced in `hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest `ref`, in bytes of its JSON: it is echoed on every message about its task, so
/// a long one would multiply the bytes the server sends.
pub const MAX_REF_BYTES: usize = 256;

/// The longest idempotency `key`, in bytes: the server keeps it with the task's result.
pub const MAX_KEY_BYTES: usize = 256;

/// A task's idempotency `key`: a non-empty string of at most [`MAX_KEY_BYTES`] bytes.
fn key<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let Some(key) = Option::<String>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if key.is_empty() {
        return Err(de::Error::custom(
            "`key` is empty: give a string that names this piece of work, or no `key`",
        ));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(de::Error::custom(format_args!(
            "`key` is {} bytes, over the limit of {MAX_KEY_BYTES}: use a short id (a hash of \
             a longer one, say)",
            key.len()
        )));
    }
    Ok(Some(key))
}

/// A client's `ref`: a string or a number, echoed back on every message about its task.
///
/// A number is kept as the client wrote it (`1e400`, `-0`, thirty digits), so that the echo
/// is exact whatever the client's number type.
///
/// Shared, not owned: a task's messages, its job and its entry in the result store each hold
/// it, and a clone is a count, not an allocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Ref {
    Text(Arc<str>),
    /// The number's JSON text.
    Number(Arc<str>),
}

impl Serialize for Ref {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Ref::Text(text) => serializer.serialize_str(text),
            // Checked as a number when it was read; read again here as borrowed raw JSON,
            // which writes it as it is without a copy.
            Ref::Number(number) => serde_json::from_str::<&RawValue>(number)
                .map_err(serde::ser::Error::custom)?
                .serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Ref {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let text = raw.get();
        if text.len() > MAX_REF_BYTES {
            return Err(de::Error::custom(format_args!(
                "`ref` is {} bytes of JSON, over the limit of {MAX_REF_BYTES}: use a short id",
                text.len()
            )));
        }
        match text.as_bytes().first() {
            // Borrowed where it has no escapes, so the only copy is the shared one.
            Some(b'"') => match serde_json::from_str::<&str>(text) {
                Ok(plain) => Ok(Ref::Text(Arc::from(plain))),
                Err(_) => serde_json::from_str::<String>(text)
                    .map(|unescaped| Ref::Text(Arc::from(unescaped)))
                    .map_err(de::Error::custom),
            },
            Some(b'-' | b'0'..=b'9') => Ok(Ref::Number(Arc::from(text))),
            _ => {
                let value: serde_json::Value =
                    serde_json::from_str(text).map_err(de::Error::custom)?;
                Err(de::Error::custom(format_args!(
                    "`ref` must be a string or a number, not {}",
                    json_kind(&value)
                )))
            }
        }
    }
}

/// `null` as the default, for optional objects.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A `task` frame (or a plain-text frame, which becomes one for the default task).
#[derive(Debug, Deserialize)]
pub struct TaskRequest {
    pub task: String,
    /// Kept as raw JSON text: it goes to the module's stdin as it came, never re-encoded.
    pub input: Option<Box<RawValue>>,
    #[serde(rename = "ref")]
    pub reference: Option<Ref>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub limits: RequestedLimits,
    /// Extension: an idempotency key. A task whose key names a task still queued, running
    /// or kept (`--result-ttl`) does not run again: it gets that task's id and outcome.
    #[serde(default, deserialize_with = "key")]
    pub key: Option<String>,
    /// The frame was plain text, for the default task (`--default-task`).
    #[serde(skip)]
    pub plain_text: bool,
}

impl TaskRequest {
    /// The input as the module will read it on stdin (`null` when the client sent none).
    pub fn input_json(&self) -> &str {
        self.input.as_deref().map_or("null", RawValue::get)
    }
}

/// Everything a client may ask of the server.
#[derive(Debug)]
pub enum Request {
    Task(TaskRequest),
    Cancel {
        task_id: u64,
    },
    /// Extension: receive a task's remaining messages, or its kept terminal message.
    Attach {
        task_id: u64,
    },
    /// Extension: the dead letters, tasks that failed every attempt their manifest allowed.
    Dead,
    List,
    Stats,
    /// `watch`: a `watch` message now and once a second until the connection closes (the
    /// dashboard's feed).
    Watch,
    /// Hear what tasks publish to `topic` (`published` messages).
    Subscribe {
        topic: String,
    },
    /// Stop hearing `topic`.
    Unsubscribe {
        topic: String,
    },
    /// A message whose `type` the protocol does not define, for an application to serve
    /// (see `App::on_message`); the default application answers it with `bad_request`.
    Custom {
        kind: String,
        /// The whole message, `type` included.
        message: serde_json::Value,
    },
}

#[derive(Deserialize)]
struct TypeTag<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
struct TopicFrame {
    topic: String,
}

#[derive(Deserialize)]
struct TaskIdFrame {
    #[serde(deserialize_with = "task_id")]
    task_id: u64,
}

/// Parses one text frame. Plain text (not starting with `{`) is a task for `default_task`
/// with the text as a JSON string input, as in the original Swoole example that sends `666`.
pub fn parse_frame(text: &str, default_task: &str) -> Result<Request, BadFrame> {
    if !text.trim_start().starts_with('{') {
        let input = serde_json::value::to_raw_value(text).map_err(|e| {
            BadFrame::Message(WireError::internal(format!(
                "could not encode plain text: {e}"
            )))
        })?;
        return Ok(Request::Task(TaskRequest {
            task: default_task.to_owned(),
            input: Some(input),
            reference: None,
            limits: RequestedLimits::default(),
            key: None,
            plain_text: true,
        }));
    }
    let tag: TypeTag =
        serde_json::from_str(text).map_err(|e| BadFrame::Message(bad_json(&e, "a message")))?;
    match tag.kind.as_ref() {
        "task" => serde_json::from_str(text)
            .map(Request::Task)
            .map_err(|e| BadFrame::Task {
                reference: serde_json::from_str::<RefOnly>(text)
                    .ok()
                    .and_then(|r| r.reference),
                error: bad_json(&e, "a `task` message"),
            }),
        "cancel" => serde_json::from_str::<TaskIdFrame>(text)
            .map(|frame| Request::Cancel {
                task_id: frame.task_id,
            })
            .map_err(|e| BadFrame::Message(bad_json(&e, "a `cancel` message"))),
        "attach" => serde_json::from_str::<TaskIdFrame>(text)
            .map(|frame| Request::Attach {
                task_id: frame.task_id,
            })
            .map_err(|e| BadFrame::Message(bad_json(&e, "an `attach` message"))),
        "dead" => Ok(Request::Dead),
        "list" => Ok(Request::List),
        "stats" => Ok(Request::Stats),
        "watch" => Ok(Request::Watch),
        "subscribe" => serde_json::from_str::<TopicFrame>(text)
            .map(|frame| Request::Subscribe { topic: frame.topic })
            .map_err(|e| BadFrame::Message(bad_json(&e, "a `subscribe` message"))),
        "unsubscribe" => serde_json::from_str::<TopicFrame>(text)
            .map(|frame| Request::Unsubscribe { topic: frame.topic })
            .map_err(|e| BadFrame::Message(bad_json(&e, "an `unsubscribe` message"))),
        other => serde_json::from_str(text)
            .map(|message| Request::Custom {
                kind: other.to_owned(),
                message,
            })
            .map_err(|e| BadFrame::Message(bad_json(&e, "a message"))),
    }
}

/// The answer to a message of a type nobody serves.
pub fn unknown_type(kind: &str) -> WireError {
    WireError::new(
        ErrorCode::BadRequest,
        format!(
            "unknown message type {kind:?}: send one of \"task\", \"cancel\", \"attach\", \
             \"dead\", \"list\", \"stats\", \"watch\", \"subscribe\" or \"unsubscribe\""
        ),
    )
}

/// A frame that could not be served, and how it is answered.
#[derive(Debug)]
pub enum BadFrame {
    /// Answered with `error`.
    Message(WireError),
    /// A `task` frame: answered with `rejected` (guarantee 1), with its `ref` when readable.
    Task {
        reference: Option<Ref>,
        error: WireError,
    },
}

impl BadFrame {
    pub fn error(&self) -> &WireError {
        match self {
            BadFrame::Message(error) | BadFrame::Task { error, .. } => error,
        }
    }
}

/// Just the `ref` of a task frame that is otherwise invalid.
#[derive(Deserialize)]
struct RefOnly {
    #[serde(rename = "ref")]
    reference: Option<Ref>,
}

fn bad_json(error: &serde_json::Error, what: &str) -> WireError {
    let hint = match error.classify() {
        serde_json::error::Category::Data => {
            "; see docs/PROTOCOL.md for the fields each message takes"
        }
        _ => "; send one JSON object per text frame",
    };
    WireError::new(
        ErrorCode::BadRequest,
        format!("this is not {what}: {error}{hint}"),
    )
}

/// A task id as `accepted` gave it, with a message a person can act on otherwise.
fn task_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    value.as_u64().ok_or_else(|| {
        de::Error::custom(format_args!(
            "`task_id` must be the id `accepted` gave the task (a whole number), not {value}"
        ))
    })
}

/// Every error code of the protocol, for `rejected`, `failed` and `error` alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownTask,
    QueueFull,
    TooLarge,
    Timeout,
    FuelExhausted,
    MemoryLimit,
    Trap,
    Exit,
    OutputTooLarge,
    ModuleError,
    Cancelled,
    Shutdown,
    Internal,
    NotFound,
    /// Extension: a connection asked to attach to more running tasks than it may.
    AttachLimit,
    /// Extension: with `--nats`, the broker cannot be reached now; the task was not queued.
    BrokerUnavailable,
}

impl ErrorCode {
    /// The code as it appears on the wire and in logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownTask => "unknown_task",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Timeout => "timeout",
            ErrorCode::FuelExhausted => "fuel_exhausted",
            ErrorCode::MemoryLimit => "memory_limit",
            ErrorCode::Trap => "trap",
            ErrorCode::Exit => "exit",
            ErrorCode::OutputTooLarge => "output_too_large",
            ErrorCode::ModuleError => "module_error",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Shutdown => "shutdown",
            ErrorCode::Internal => "internal",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AttachLimit => "attach_limit",
            ErrorCode::BrokerUnavailable => "broker_unavailable",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `{code, message}` object carried by `rejected`, `failed` and `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    /// Written for a person: what happened and, where there is one, what to do.
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        WireError::new(ErrorCode::Internal, message)
    }
}

/// The `stats` answer's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub connections: u64,
    pub queued: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub rejected: u64,
    pub task_workers: u64,
    pub uptime_ms: u64,
}

/// A task that failed every attempt its manifest allowed (`retries`), as `dead` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub task_id: u64,
    pub task: String,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<Ref>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub attempts: u32,
    /// How the last attempt failed.
    pub error: WireError,
    /// When the last attempt ended (RFC 3339, UTC).
    pub failed_at: String,
    /// The task's input, to run it again by hand; left out when over
    /// [`MAX_DEAD_INPUT_BYTES`] or the list's byte bound (`input_bytes` still says its size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Box<RawValue>>,
    pub input_bytes: u64,
}

/// The largest input a dead letter keeps.
pub const MAX_DEAD_INPUT_BYTES: usize = 64 << 10;

/// The `dead` answer: the dead letters kept, oldest first.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeadLetters {
    pub tasks: Vec<DeadLetter>,
    /// Dead letters since the server started, kept or not.
    pub total: u64,
    /// Dead letters dropped to stay within `--dead-letters` and `--dead-letter-bytes`.
    pub dropped: u64,
}

/// Everything the server sends. Borrowed fields: a message is built, encoded and dropped.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply<'a> {
    Hello {
        connection_id: u64,
        tasks: Vec<String>,
        version: u32,
    },
    Accepted {
        task_id: u64,
        task: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        limits: Limits,
    },
    /// Extension: the task left the queue and began (again, for a retry: `attempt` counts
    /// from 1); before any of its `progress` and its terminal message.
    Started {
        task_id: u64,
        task: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        attempt: u32,
    },
    Progress {
        task_id: u64,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        progress: f64,
        message: &'a str,
    },
    Finished {
        task_id: u64,
        task: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        result: &'a RawValue,
        elapsed_ms: u64,
        fuel_used: u64,
        /// Extension: how many times the task ran (more than 1 after retries).
        attempts: u32,
    },
    Failed {
        task_id: u64,
        task: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        error: &'a WireError,
        elapsed_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        fuel_used: Option<u64>,
        /// Extension: how many times the task ran (more than 1 after retries).
        attempts: u32,
    },
    /// Extension: the answer to `attach` for a task that is known: its `state` now
    /// (`queued`, `running`, `retrying` or `ended`); its messages follow.
    Attached {
        task_id: u64,
        task: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        state: &'a str,
    },
    Rejected {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        error: &'a WireError,
    },
    Broadcast {
        task_id: u64,
        task: &'a str,
        result: &'a RawValue,
    },
    Error {
        error: &'a WireError,
    },
    List {
        tasks: &'a [TaskListing],
    },
    /// Pushed to every connection when a task is added, replaced, removed or fails to load.
    TasksChanged {
        tasks: &'a [TaskListing],
    },
    Stats(&'a Stats),
    /// Extension: the answer to `dead`.
    Dead(&'a DeadLetters),
    /// The answer to `subscribe`.
    Subscribed {
        topic: &'a str,
    },
    /// The answer to `unsubscribe`.
    Unsubscribed {
        topic: &'a str,
    },
    /// What a task published to a topic the connection is subscribed to.
    Published {
        topic: &'a str,
        data: &'a RawValue,
    },
}

impl Reply<'_> {
    /// The message as the JSON text of one frame.
    pub fn to_json(&self) -> String {
        // Every field is a plain struct, string or valid RawValue: encoding cannot fail.
        crate::json::to_string(self).unwrap_or_else(|e| {
            format!(
                r#"{{"type":"error","error":{{"code":"internal","message":"could not encode a reply: {e}"}}}}"#
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_a_default_task_with_a_string_input() {
        let Request::Task(task) = parse_frame("666", "slow").unwrap() else {
            panic!("not a task")
        };
        assert_eq!(task.task, "slow");
        assert_eq!(task.input_json(), "\"666\"");
    }

    #[test]
    fn bad_json_names_line_and_column() {
        let bad = parse_frame("{\"type\": \"task\",\n \"task\": }", "slow").unwrap_err();
        assert_eq!(bad.error().code, ErrorCode::BadRequest);
        assert!(
            bad.error().message.contains("line 2"),
            "{}",
            bad.error().message
        );
    }

    #[test]
    fn numeric_refs_are_echoed_exactly() {
        for number in ["123456789012345678901234567890", "-0", "1e400", "0.1"] {
            let frame = format!(r#"{{"type":"task","task":"echo","ref":{number}}}"#);
            let Request::Task(task) = parse_frame(&frame, "slow").unwrap() else {
                panic!("not a task");
            };
            let echoed = serde_json::to_string(&task.reference).unwrap();
            assert_eq!(echoed, number);
        }
    }

    #[test]
    fn huge_limits_ask_for_nothing_and_null_limits_are_none() {
        let frame = r#"{"type":"task","task":"echo","limits":{"timeout_ms":1e30,"fuel":2.5}}"#;
        let Request::Task(task) = parse_frame(frame, "slow").unwrap() else {
            panic!("not a task");
        };
        assert_eq!(task.limits.timeout_ms, Some(u64::MAX));
        assert_eq!(task.limits.fuel, Some(2));
        let frame = r#"{"type":"task","task":"echo","limits":null}"#;
        let Request::Task(task) = parse_frame(frame, "slow").unwrap() else {
            panic!("not a task");
        };
        assert_eq!(task.limits, RequestedLimits::default());
        let frame = r#"{"type":"task","task":"echo","limits":{"timeout_ms":-1}}"#;
        let bad = parse_frame(frame, "slow").unwrap_err();
        assert!(
            bad.error().message.contains("zero or more"),
            "{}",
            bad.error().message
        );
    }

    #[test]
    fn wrong_types_and_unknown_types_are_bad_requests() {
        for frame in [
            r#"{"type": 3}"#,
            r#"{"no_type": 1}"#,
            r#"{"type": "task"}"#,
            r#"{"type": "task", "task": 5}"#,
            r#"{"type": "task", "task": "echo", "ref": [1]}"#,
            r#"{"type": "task", "task": "echo", "limits": {"timeout": 5}}"#,
            r#"{"type": "cancel", "task_id": "x"}"#,
        ] {
            let bad = parse_frame(frame, "slow").unwrap_err();
            assert_eq!(bad.error().code, ErrorCode::BadRequest, "{frame}");
        }
    }

    #[test]
    fn unknown_types_reach_the_application() {
        let Request::Custom { kind, message } =
            parse_frame(r#"{"type": "chat", "text": "hi"}"#, "slow").unwrap()
        else {
            panic!("not a custom message")
        };
        assert_eq!(kind, "chat");
        assert_eq!(message["text"], "hi");
        assert_eq!(unknown_type("dance").code, ErrorCode::BadRequest);
    }

    #[test]
    fn subscribe_and_unsubscribe_name_a_topic() {
        let Request::Subscribe { topic } =
            parse_frame(r#"{"type":"subscribe","topic":"room:lobby"}"#, "slow").unwrap()
        else {
            panic!("not a subscribe")
        };
        assert_eq!(topic, "room:lobby");
        assert!(matches!(
            parse_frame(r#"{"type":"unsubscribe","topic":"x"}"#, "slow").unwrap(),
            Request::Unsubscribe { .. }
        ));
        let bad = parse_frame(r#"{"type":"subscribe"}"#, "slow").unwrap_err();
        assert_eq!(bad.error().code, ErrorCode::BadRequest);
    }

    #[test]
    fn a_bad_task_frame_is_rejected_with_its_ref() {
        let bad = parse_frame(r#"{"type": "task", "task": 5, "ref": "mine"}"#, "slow").unwrap_err();
        let BadFrame::Task { reference, .. } = bad else {
            panic!("a task frame is rejected, not answered with error")
        };
        assert_eq!(reference, Some(Ref::Text("mine".into())));
    }

    #[test]
    fn a_long_ref_is_a_bad_request_and_is_not_echoed() {
        let long = "r".repeat(10_000);
        let frame = format!(r#"{{"type":"task","task":"echo","ref":"{long}"}}"#);
        let BadFrame::Task { reference, error } = parse_frame(&frame, "slow").unwrap_err() else {
            panic!("a task frame is rejected")
        };
        assert_eq!(error.code, ErrorCode::BadRequest);
        assert!(error.message.contains("256"), "{}", error.message);
        assert_eq!(reference, None, "a ref over the limit is not echoed");
        let fits = format!(
            r#"{{"type":"task","task":"echo","ref":"{}"}}"#,
            "r".repeat(254)
        );
        assert!(parse_frame(&fits, "slow").is_ok());
    }

    #[test]
    fn input_is_kept_verbatim() {
        let frame = r#"{"type":"task","task":"echo","input":{"a": [1, 2]},"ref":7}"#;
        let Request::Task(task) = parse_frame(frame, "slow").unwrap() else {
            panic!("not a task")
        };
        assert_eq!(task.input_json(), r#"{"a": [1, 2]}"#);
        assert_eq!(task.reference, Some(Ref::Number("7".into())));
    }
}
