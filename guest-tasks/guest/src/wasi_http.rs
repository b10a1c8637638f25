//! Preview 2: outbound HTTP through the standard `wasi:http/outgoing-handler`, the interface
//! any component toolchain (componentize-py, jco, wstd) uses. The host checks each request
//! against the task's `http` grant before a byte goes out; wasi:http follows no
//! redirects, so this module does, at most [`MAX_REDIRECTS`], each a new request that the
//! host checks again. The host's refusals arrive as wasi:http error codes, which become
//! [`CallError`]s with the same codes and wording as preview 1's JSON call.

use std::collections::BTreeMap;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingResponse, Method, OutgoingBody, OutgoingRequest,
    Scheme, http_error_code,
};
use wasip2::io::streams::StreamError;

use crate::call::CallError;
use crate::http::{MAX_REDIRECTS, Request, Response};

/// The most `blocking-write-and-flush` takes at once.
const WRITE_CHUNK: usize = 4096;

/// The most one read of the response body asks for.
const READ_CHUNK: u64 = 64 << 10;

/// The headers dropped when a redirect leads to another origin.
const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// Sends `request`, following redirects, and returns the last response.
pub fn request(request: &Request) -> Result<Response, CallError> {
    let mut method = request.method.to_ascii_uppercase();
    let mut target = Target::parse(&request.url)?;
    let mut headers = request.headers.clone();
    let mut body = request.body.as_bytes().to_vec();
    let mut redirects = 0;
    loop {
        let response = send(&method, &target, &headers, &body)?;
        let location = match response.headers.get("location") {
            Some(location) if matches!(response.status, 301 | 302 | 303 | 307 | 308) => location,
            _ => return Ok(response),
        };
        redirects += 1;
        if redirects > MAX_REDIRECTS {
            return Err(error(
                "limit_reached",
                format!(
                    "{} redirected more than {MAX_REDIRECTS} times; a task follows at most \
                     {MAX_REDIRECTS} redirects",
                    request.url
                ),
            ));
        }
        let next = Target::parse(&target.join(location))?;
        if next.origin() != target.origin() {
            headers.retain(|name, _| {
                !CREDENTIAL_HEADERS.contains(&name.to_ascii_lowercase().as_str())
            });
        }
        // 303, and 301/302 after a POST, become a GET without a body, as browsers do.
        if response.status == 303 || (matches!(response.status, 301 | 302) && method == "POST") {
            if method != "HEAD" {
                method = "GET".to_owned();
            }
            body.clear();
        }
        target = next;
    }
}

/// One request and its whole response.
fn send(
    method: &str,
    target: &Target,
    headers: &BTreeMap<String, String>,
    body: &[u8],
) -> Result<Response, CallError> {
    let origin = target.origin();
    let entries: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.as_bytes().to_vec()))
        .collect();
    let fields = Fields::from_list(&entries).map_err(|refused| {
        error(
            "bad_request",
            format!("the request's headers were refused ({refused:?}): a task may not set the headers the host sets itself (host, connection, transfer-encoding…)"),
        )
    })?;
    let outgoing = OutgoingRequest::new(fields);
    let refused = |what: &str| error("bad_request", format!("the request's {what} was refused"));
    outgoing
        .set_method(&method_of(method))
        .map_err(|()| refused("method"))?;
    outgoing
        .set_scheme(Some(&target.scheme))
        .map_err(|()| refused("scheme"))?;
    outgoing
        .set_authority(Some(&target.authority))
        .map_err(|()| refused("host"))?;
    outgoing
        .set_path_with_query(Some(&target.path))
        .map_err(|()| refused("path"))?;
    let outgoing_body = outgoing.body().map_err(|()| refused("body"))?;
    let future = outgoing_handler::handle(outgoing, None).map_err(|code| refusal(&origin, code))?;
    {
        let stream = outgoing_body.write().map_err(|()| refused("body"))?;
        for chunk in body.chunks(WRITE_CHUNK) {
            if let Err(failure) = stream.blocking_write_and_flush(chunk) {
                // The host stopped taking the body: the response says why.
                drop(stream);
                drop(outgoing_body);
                return Err(response_of(&origin, &future)
                    .err()
                    .unwrap_or_else(|| stream_error(&origin, "sending the request to", failure)));
            }
        }
    }
    OutgoingBody::finish(outgoing_body, None).map_err(|code| refusal(&origin, code))?;
    let response = response_of(&origin, &future)?;
    read(&origin, response)
}

/// Waits for the response head.
fn response_of(
    origin: &str,
    future: &wasip2::http::types::FutureIncomingResponse,
) -> Result<IncomingResponse, CallError> {
    let ready = loop {
        match future.get() {
            Some(ready) => break ready,
            None => future.subscribe().block(),
        }
    };
    ready
        .map_err(|()| {
            error(
                "failed",
                format!("the response from {origin} was taken twice"),
            )
        })?
        .map_err(|code| refusal(origin, code))
}

/// The status, the headers (lower-case names, repeats joined by `, `) and the body as text.
fn read(origin: &str, response: IncomingResponse) -> Result<Response, CallError> {
    let status = response.status();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in response.headers().entries() {
        let value = String::from_utf8_lossy(&value).into_owned();
        headers
            .entry(name.to_ascii_lowercase())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    let incoming = response
        .consume()
        .map_err(|()| error("failed", format!("the body from {origin} was taken twice")))?;
    let mut body = Vec::new();
    {
        let stream = incoming
            .stream()
            .map_err(|()| error("failed", format!("the body from {origin} was taken twice")))?;
        loop {
            match stream.blocking_read(READ_CHUNK) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(failure) => {
                    return Err(stream_error(origin, "reading the response from", failure));
                }
            }
        }
    }
    drop(IncomingBody::finish(incoming));
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A stream's failure: the host's wasi:http error code when it carries one.
fn stream_error(origin: &str, doing: &str, failure: StreamError) -> CallError {
    match failure {
        StreamError::LastOperationFailed(io) => match http_error_code(&io) {
            Some(code) => refusal(origin, code),
            // A body's failure carries its text only: the host's own message when the
            // host stopped it (a cap), after wasmtime's "internal error: ".
            None => {
                // The first line: a host's error may go on with its causes.
                let text = io.to_debug_string();
                let text = text.lines().next().unwrap_or_default();
                match text.strip_prefix("internal error: ") {
                    Some(message) if message.contains("--http-") => {
                        error("limit_reached", message.to_owned())
                    }
                    _ => error("failed", format!("{doing} {origin} failed: {text}")),
                }
            }
        },
        StreamError::Closed => error("failed", format!("{doing} {origin} failed: closed early")),
    }
}

/// The host's wasi:http error code as the task's error, worded as preview 1's.
fn refusal(origin: &str, code: ErrorCode) -> CallError {
    match code {
        ErrorCode::HttpRequestDenied => error(
            "not_allowed",
            format!(
                "{origin} is not allowed: the host denied the request; an operator lists the \
                 origins this task may reach in its manifest under [capabilities]: \
                 http = [\"{origin}\"]"
            ),
        ),
        ErrorCode::DestinationIpProhibited => error(
            "not_allowed",
            format!(
                "{origin} is not allowed: it resolves to an internal (loopback, private or \
                 link-local) address, which a listed name may not reach unless the address \
                 itself is listed under [capabilities] http"
            ),
        ),
        ErrorCode::ConnectionLimitReached => error(
            "limit_reached",
            format!(
                "the request to {origin} is refused: this task has made the most HTTP requests \
                 a task may make (the operator's --http-requests)"
            ),
        ),
        ErrorCode::HttpRequestBodySize(_) | ErrorCode::HttpRequestHeaderSectionSize(_) => error(
            "limit_reached",
            format!(
                "the request to {origin} is larger than a task may send in one request (the \
                 operator's --http-request-bytes)"
            ),
        ),
        ErrorCode::HttpResponseBodySize(_) | ErrorCode::HttpResponseHeaderSectionSize(_) => error(
            "limit_reached",
            format!(
                "the responses passed the most a task may receive over HTTP (the \
                     operator's --http-response-bytes), at {origin}"
            ),
        ),
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::HttpResponseTimeout => error(
            "failed",
            format!("the HTTP request to {origin} did not finish in time"),
        ),
        ErrorCode::InternalError(Some(message)) => error("failed", message),
        other => error(
            "failed",
            format!("the request to {origin} failed: {other:?}"),
        ),
    }
}

fn error(code: &str, message: String) -> CallError {
    CallError {
        code: code.to_owned(),
        message,
    }
}

fn method_of(method: &str) -> Method {
    match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_owned()),
    }
}

/// A URL taken apart as wasi:http wants it.
struct Target {
    scheme: Scheme,
    /// `host[:port]`, as written.
    authority: String,
    /// The path and query (`/` when empty), without the fragment.
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, CallError> {
        let not_a_url = |why: &str| {
            error(
                "bad_request",
                format!("{url:?} is not an http(s) URL: {why}"),
            )
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| not_a_url("no scheme"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(not_a_url("the scheme is not http or https")),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() {
            return Err(not_a_url("no host"));
        }
        let path = match path {
            "" => "/".to_owned(),
            query if query.starts_with('?') => format!("/{query}"),
            path => path.to_owned(),
        };
        Ok(Target {
            scheme,
            authority: authority.to_owned(),
            path,
        })
    }

    /// `http` or `https` (parse takes no other).
    fn scheme_name(&self) -> &str {
        match &self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Other(other) => other,
        }
    }

    /// `scheme://authority`, as the host names origins.
    fn origin(&self) -> String {
        format!(
            "{}://{}",
            self.scheme_name(),
            self.authority.to_ascii_lowercase()
        )
    }

    /// A redirect's `Location`, made absolute against this URL.
    fn join(&self, location: &str) -> String {
        if location.contains("://") {
            location.to_owned()
        } else if let Some(rest) = location.strip_prefix("//") {
            format!("{}://{rest}", self.scheme_name())
        } else if location.starts_with('/') {
            format!("{}{location}", self.origin())
        } else {
            let path = self.path.split('?').next().unwrap_or("/");
            let directory = &path[..path.rfind('/').map_or(0, |slash| slash + 1)];
            format!("{}{directory}{location}", self.origin())
        }
    }
}
