//! How the registry describes its tasks to the outside: the entries of `list` and
//! `tasks_changed`, and the delivery a manifest chooses. Serialized as they appear on the
//! wire (`docs/PROTOCOL.md`), which is why they carry serde attributes.

use serde::{Deserialize, Serialize};

use crate::capabilities::Grants;
use crate::limits::Limits;

/// Whether a task's result goes to its submitter only, or to every open connection too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// To the connection that submitted the task (`"origin"` in manifests and on the wire).
    #[default]
    #[serde(rename = "origin")]
    Submitter,
    Broadcast,
}

/// Whether a task in `list` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Ready,
    Failed,
    /// A large module that the server compiles after it starts; it cannot run yet.
    Loading,
}

/// One entry of the `list` answer.
#[derive(Debug, Clone, Serialize)]
pub struct TaskListing {
    pub name: String,
    pub description: String,
    pub state: TaskState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub limits: Limits,
    pub deliver: Delivery,
    /// What the manifest grants the task (`[capabilities]`); every key is present.
    pub capabilities: Grants,
    /// `module` (WASI preview 1) or `component` (preview 2); absent when nothing loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// Short hex SHA-256 of the module file in service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// When the version in service was loaded, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded_at: Option<String>,
}
