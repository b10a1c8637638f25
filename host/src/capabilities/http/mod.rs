//! Outbound HTTP for tasks: the host makes the request, on the task's behalf, to the origins
//! its manifest lists (`[capabilities] http = ["https://api.example.com"]`), and hands back
//! the status, headers and body. A task never holds a socket.
//!
//! - `origin`: origins in normal form, the allowlist, and which addresses are internal.
//! - `connect`: resolving a name once, judging each address, and connecting to the very
//!   address judged (so a second DNS answer cannot slip in between), with TLS for https.
//! - `exchange`: one request and its response, under the task's caps.
//! - `call`: the capability's JSON call, as the task's [`super::TaskAccess`] dispatches it.
//! - [`HttpSession`]: a task's requests: the allowlist checked before every request and
//!   every redirect (followed here, at most [`HttpCaps::max_redirects`]), the counts and the
//!   deadline.
//!
//! Every refusal is an [`HttpError`] whose message says what was refused and what to do;
//! [`HttpError::reason`] is its label in /metrics.

mod call;
mod connect;
mod exchange;
mod origin;
mod session;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub(super) use call::call;
pub use connect::Stream;
pub use exchange::MAX_HEAD_BYTES;
pub use origin::{Allowlist, Origin, OriginHost, Scheme, is_internal};
pub use session::{HttpCaps, HttpSession};

/// A task's request, as it comes from the guest (JSON: docs/PROTOCOL.md, "The http
/// capability").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRequest {
    /// `GET` when absent.
    #[serde(default = "get")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Sent as UTF-8; absent or empty sends no body.
    #[serde(default)]
    pub body: String,
}

fn get() -> String {
    "GET".to_owned()
}

/// What the task gets back: the last response after redirects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-case names; a header sent more than once has its values joined by `, `.
    pub headers: BTreeMap<String, String>,
    /// The body as text (bytes that are not UTF-8 become U+FFFD).
    pub body: String,
}

/// Why a request was not made or did not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The grant does not cover the origin (or the address its name resolves to).
    #[error("{origin} is not allowed: {why}")]
    NotAllowed {
        origin: String,
        why: String,
        /// Refused for the address a listed name resolves to (loopback, private,
        /// link-local), not for the origin itself.
        internal: bool,
    },
    /// One of the task's caps (requests, bytes, redirects) is used up.
    #[error("{0}")]
    Limit(String),
    /// The task's deadline came first.
    #[error("the HTTP request to {origin} did not finish before the task's time was up")]
    Timeout { origin: String },
    /// The request itself is malformed (URL, method, a header the host sets itself).
    #[error("{0}")]
    BadRequest(String),
    /// The network or the server failed: refused connection, TLS, a malformed response.
    #[error("{0}")]
    Failed(String),
}

impl HttpError {
    /// The label this error is counted under in /metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            HttpError::NotAllowed { .. } => "not_allowed",
            HttpError::Limit(_) => "limit",
            HttpError::Timeout { .. } => "timeout",
            HttpError::BadRequest(_) => "bad_request",
            HttpError::Failed(_) => "failed",
        }
    }

    /// The code a task's call fails with for this error.
    pub fn code(&self) -> crate::capabilities::ErrorCode {
        use crate::capabilities::ErrorCode;
        match self {
            HttpError::NotAllowed { .. } => ErrorCode::NotAllowed,
            HttpError::Limit(_) => ErrorCode::LimitReached,
            HttpError::BadRequest(_) => ErrorCode::BadRequest,
            HttpError::Timeout { .. } | HttpError::Failed(_) => ErrorCode::Failed,
        }
    }

    /// Whether the host refused the request (as opposed to the far end failing it).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            HttpError::NotAllowed { .. } | HttpError::Limit(_) | HttpError::BadRequest(_)
        )
    }
}
