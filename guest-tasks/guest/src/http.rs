//! Outbound HTTP through the host, to the origins the task's manifest lists
//! (`[capabilities] http = ["https://api.example.com"]`): the host makes the request,
//! checking each origin; the task never holds a socket. Any other origin is refused with a
//! [`CallError`] whose code is `not_allowed`.
//!
//! - A preview 1 module sends the request as one JSON call to the `http` capability; the
//!   host follows redirects, checking each.
//! - A preview 2 component sends it through the standard `wasi:http/outgoing-handler`
//!   (`wasi_http.rs`), which follows no redirects: this crate follows them, at most
//!   [`MAX_REDIRECTS`], and the host checks each new request again.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::call::CallError;
#[cfg(not(all(target_arch = "wasm32", target_os = "wasi", target_env = "p2")))]
use crate::call::call;

/// A request: `GET` with no headers or body unless set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Request {
    /// `GET url`.
    pub fn get(url: &str) -> Request {
        Request {
            method: "GET".to_owned(),
            url: url.to_owned(),
            headers: BTreeMap::new(),
            body: String::new(),
        }
    }
}

/// The last response after redirects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Lower-case names; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    /// The body as text.
    pub body: String,
}

impl Response {
    /// `{"status": N, "headers": {…}, "body": "…"}`, as the host sent it.
    pub fn to_json(&self) -> Value {
        json!({"status": self.status, "headers": self.headers, "body": self.body})
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, CallError> {
    request(&Request::get(url))
}

/// Redirects followed for one request; one more is an error (the host's own limit for
/// preview 1 modules is the same).
pub const MAX_REDIRECTS: u32 = 5;

/// Sends `request` through the host and returns the last response after redirects.
pub fn request(request: &Request) -> Result<Response, CallError> {
    #[cfg(all(target_arch = "wasm32", target_os = "wasi", target_env = "p2"))]
    return crate::wasi_http::request(request);
    #[cfg(not(all(target_arch = "wasm32", target_os = "wasi", target_env = "p2")))]
    return request_through_call(request);
}

/// Sends `request` as one JSON call to the `http` capability (preview 1).
#[cfg(not(all(target_arch = "wasm32", target_os = "wasi", target_env = "p2")))]
fn request_through_call(request: &Request) -> Result<Response, CallError> {
    let request = json!({
        "method": request.method,
        "url": request.url,
        "headers": request.headers,
        "body": request.body,
    });
    let response = call("http", &request)?;
    let status = response["status"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok());
    let headers = response["headers"].as_object().map(|headers| {
        headers
            .iter()
            .map(|(name, value)| (name.clone(), value.as_str().unwrap_or_default().to_owned()))
            .collect()
    });
    match (status, headers, response["body"].as_str()) {
        (Some(status), Some(headers), Some(body)) => Ok(Response {
            status,
            headers,
            body: body.to_owned(),
        }),
        _ => Err(CallError::unexpected("an http request", &response)),
    }
}
