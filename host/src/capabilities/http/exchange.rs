//! One request and its response over a fresh connection, under the task's byte cap: the
//! head is bounded by hyper's buffer, the body is read frame by frame and refused as soon
//! as it passes what the task has left.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{HOST, HeaderName, HeaderValue, USER_AGENT};
use hyper_util::rt::TokioIo;
use tokio_util::task::AbortOnDropHandle;
use url::Url;

use super::HttpError;
use super::connect::connect;
use super::origin::Origin;

/// Largest response head (status line and headers) read, in bytes.
pub const MAX_HEAD_BYTES: usize = 64 << 10;

/// What one exchange asks for.
pub struct Outgoing<'a> {
    pub method: &'a hyper::Method,
    pub url: &'a Url,
    pub origin: &'a Origin,
    pub headers: &'a [(HeaderName, HeaderValue)],
    pub body: &'a Bytes,
}

/// A response: its head, and its body unless the caller only wanted the head.
pub struct Incoming {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

/// Sends `outgoing` to one of `addresses` and reads the answer; a redirect's body is
/// dropped unread. `take_bytes(n)` is asked before keeping each `n` more bytes and says no
/// once the task's cap is reached.
pub async fn exchange(
    outgoing: Outgoing<'_>,
    addresses: &[SocketAddr],
    take_bytes: impl Fn(u64) -> Result<(), HttpError>,
) -> Result<Incoming, HttpError> {
    let origin = outgoing.origin;
    let failed = |what: &str, error: hyper::Error| {
        HttpError::Failed(format!("{what} {origin} failed: {error}"))
    };
    let stream = connect(origin, addresses).await?;
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|error| failed("the HTTP handshake with", error))?;
    // The connection is driven beside this call and stops with it: dropping this future (a
    // cancel, the deadline) aborts it and closes the socket.
    let _connection = AbortOnDropHandle::new(tokio::spawn(connection));

    let target = &outgoing.url[url::Position::BeforePath..url::Position::AfterQuery];
    let mut request = Request::builder()
        .method(outgoing.method.clone())
        .uri(target)
        .body(Full::new(outgoing.body.clone()))
        .map_err(|error| HttpError::BadRequest(format!("bad request to {origin}: {error}")))?;
    let headers = request.headers_mut();
    let host = HeaderValue::from_str(&host_header(origin))
        .map_err(|error| HttpError::BadRequest(format!("bad host {origin}: {error}")))?;
    headers.insert(HOST, host);
    headers.insert(USER_AGENT, HeaderValue::from_static("taskhost"));
    for (name, value) in outgoing.headers {
        headers.insert(name.clone(), value.clone());
    }

    let response = sender
        .send_request(request)
        .await
        .map_err(|error| failed("the request to", error))?;
    let status = response.status().as_u16();
    let mut head_bytes = 0u64;
    let mut response_headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        head_bytes += (name.as_str().len() + value.len()) as u64;
        response_headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    take_bytes(head_bytes)?;
    let location = response_headers.get("location").cloned();
    let mut body = Vec::new();
    if location.is_none() || !is_redirect(status) {
        let mut incoming = response.into_body();
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|error| failed("reading the response from", error))?;
            if let Some(data) = frame.data_ref() {
                take_bytes(data.len() as u64)?;
                body.extend_from_slice(data);
            }
        }
    }
    Ok(Incoming {
        status,
        headers: response_headers,
        location,
        body,
    })
}

/// The statuses whose `Location` is followed.
pub fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// `Host:` as the origin's URL writes it: the port only when it is not the default.
fn host_header(origin: &Origin) -> String {
    if origin.port == origin.scheme.default_port() {
        origin.host_text()
    } else {
        format!("{}:{}", origin.host_text(), origin.port)
    }
}
