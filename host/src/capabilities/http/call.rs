//! The `http` capability's call: the JSON request (see [`HttpRequest`]) in, the JSON
//! response ([`HttpResponse`]) out, through the task's [`HttpSession`], made on its first
//! call from the manifest's `http` grant and the task's deadline.

use serde_json::Value;

use super::{HttpError, HttpRequest};
use crate::capabilities::{CallError, TaskAccess};

pub async fn call(access: &TaskAccess, request: Value) -> Result<Value, CallError> {
    let request: HttpRequest = serde_json::from_value(request).map_err(|error| {
        CallError::bad_request(format!(
            "an http request is {{\"url\": \"…\", \"method\", \"headers\": {{…}}, \"body\": \
             \"…\"}}: {error}"
        ))
    })?;
    let session = access.http();
    let response = session.send(request).await.map_err(call_error)?;
    serde_json::to_value(response)
        .map_err(|error| CallError::failed(format!("the response cannot be encoded: {error}")))
}

/// The call error a refusal or failure of the HTTP client is to the task.
fn call_error(error: HttpError) -> CallError {
    CallError::new(error.code(), error.to_string())
}
