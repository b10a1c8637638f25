//! One task's outbound HTTP: its allowlist, its caps and its deadline, and the loop that
//! checks each request and each redirect before anything is sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use bytes::Bytes;
use hyper::Method;
use hyper::header::{HeaderName, HeaderValue};
use tokio::time::Instant;
use url::Url;

use super::connect::{Stream, addresses, connect};
use super::exchange::{Outgoing, exchange, is_redirect};
use super::origin::{Allowlist, Origin};
use super::{HttpError, HttpRequest, HttpResponse};

/// The caps on one task's HTTP: what happens at each is a [`HttpError::Limit`] the task
/// sees as an error (never a trap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpCaps {
    /// Requests per task, each redirect followed counting as one.
    pub max_requests: u32,
    /// Bytes of response heads and bodies per task, all requests together.
    pub max_response_bytes: u64,
    /// Bytes of one request's body and headers.
    pub max_request_bytes: u64,
    /// Redirects followed for one request; one more is an error.
    pub max_redirects: u32,
}

impl Default for HttpCaps {
    fn default() -> Self {
        HttpCaps {
            max_requests: 32,
            max_response_bytes: 4 << 20,
            max_request_bytes: 1 << 20,
            max_redirects: 5,
        }
    }
}

/// The headers a task may not set: the host writes them itself (`Host`, framing), or they
/// concern the connection, which the host owns.
const HOST_HEADERS: [&str; 10] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-connection",
];

/// The headers dropped when a redirect leads to another origin: credentials for the first
/// origin are not for the second.
const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// A task's HTTP for the whole of its run. Requests may overlap; the counts are atomics.
#[derive(Debug)]
pub struct HttpSession {
    allowlist: Arc<Allowlist>,
    caps: HttpCaps,
    /// The task's own deadline (its wall-clock limit): no request outlives the task.
    deadline: Instant,
    requests: AtomicU32,
    response_bytes: AtomicU64,
}

impl HttpSession {
    pub fn new(allowlist: Arc<Allowlist>, caps: HttpCaps, deadline: Instant) -> HttpSession {
        HttpSession {
            allowlist,
            caps,
            deadline,
            requests: AtomicU32::new(0),
            response_bytes: AtomicU64::new(0),
        }
    }

    /// Requests made so far, redirects included.
    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The caps this session enforces.
    pub fn caps(&self) -> HttpCaps {
        self.caps
    }

    /// The task's deadline: nothing of its HTTP outlives it.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// A connection for one request that the task frames itself (a component's
    /// `wasi:http/outgoing-handler`, which follows no redirects: each redirect the guest
    /// follows comes here again). The same checks as [`HttpSession::send`] makes before a
    /// byte goes out: the origin is listed, the request count is within the cap, a name's
    /// internal addresses are dropped, and the connection goes to an address judged.
    pub async fn open(&self, url: &Url) -> Result<(Origin, Box<dyn Stream>), HttpError> {
        let origin = self.check(url, None)?;
        self.take_request(&origin)?;
        let found = self
            .until_deadline(&origin, addresses(&origin, &self.allowlist))
            .await?;
        let stream = self
            .until_deadline(&origin, connect(&origin, &found))
            .await?;
        Ok((origin, stream))
    }

    /// Makes `request`, following redirects, and returns the last response. The origin of
    /// the URL and of every redirect is checked against the allowlist before a byte goes
    /// out; the whole of it ends at the task's deadline.
    pub async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let mut method = Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| {
                HttpError::BadRequest(format!("{:?} is not an HTTP method", request.method))
            })?;
        let mut url = Url::parse(&request.url).map_err(|error| {
            HttpError::BadRequest(format!("{:?} is not a URL: {error}", request.url))
        })?;
        let mut headers = self.headers(&request)?;
        let mut body = Bytes::from(request.body.into_bytes());
        let mut origin = self.check(&url, None)?;
        let mut redirects = 0;
        loop {
            self.take_request(&origin)?;
            let found = addresses(&origin, &self.allowlist);
            let found = self.until_deadline(&origin, found).await?;
            let outgoing = Outgoing {
                method: &method,
                url: &url,
                origin: &origin,
                headers: &headers,
                body: &body,
            };
            let response = exchange(outgoing, &found, |bytes| self.take_bytes(bytes));
            let response = self.until_deadline(&origin, response).await?;
            let location = match response.location {
                Some(location) if is_redirect(response.status) => location,
                _ => {
                    return Ok(HttpResponse {
                        status: response.status,
                        headers: response.headers,
                        body: String::from_utf8_lossy(&response.body).into_owned(),
                    });
                }
            };
            redirects += 1;
            if redirects > self.caps.max_redirects {
                return Err(HttpError::Limit(format!(
                    "{} redirected more than {} times; a task follows at most {} redirects",
                    request.url, self.caps.max_redirects, self.caps.max_redirects
                )));
            }
            let next = url.join(&location).map_err(|error| {
                HttpError::Failed(format!(
                    "{origin} redirected to {location:?}, which is not a URL: {error}"
                ))
            })?;
            let next_origin = self.check(&next, Some(&origin))?;
            if next_origin != origin {
                headers.retain(|(name, _)| !CREDENTIAL_HEADERS.contains(&name.as_str()));
            }
            // 303, and 301/302 after a POST, become a GET without a body, as browsers do.
            if response.status == 303
                || (matches!(response.status, 301 | 302) && method == Method::POST)
            {
                if method != Method::HEAD {
                    method = Method::GET;
                }
                body = Bytes::new();
            }
            url = next;
            origin = next_origin;
        }
    }

    /// The origin of `url` if the allowlist lists it. `from` is the origin that redirected
    /// there, if one did.
    fn check(&self, url: &Url, from: Option<&Origin>) -> Result<Origin, HttpError> {
        let origin = Origin::of(url).map_err(HttpError::BadRequest)?;
        if self.allowlist.allows(&origin) {
            return Ok(origin);
        }
        let how = match from {
            Some(from) => format!("{from} redirected there, but "),
            None => String::new(),
        };
        let why = if self.allowlist.is_empty() {
            format!(
                "{how}this task's manifest grants no origins; an operator adds it under \
                 [capabilities]: http = [\"{origin}\"]"
            )
        } else {
            format!(
                "{how}this task's manifest does not list it; an operator adds it under \
                 [capabilities]: http = [..., \"{origin}\"]"
            )
        };
        Err(HttpError::NotAllowed {
            origin: origin.to_string(),
            why,
            internal: false,
        })
    }

    /// The task's headers, checked: valid, none the host sets itself, within the cap.
    fn headers(&self, request: &HttpRequest) -> Result<Vec<(HeaderName, HeaderValue)>, HttpError> {
        let mut size = request.body.len() as u64;
        let mut headers = Vec::with_capacity(request.headers.len());
        for (name, value) in &request.headers {
            size += (name.len() + value.len()) as u64;
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| HttpError::BadRequest(format!("{name:?} is not a header name")))?;
            if HOST_HEADERS.contains(&header.as_str()) {
                return Err(HttpError::BadRequest(format!(
                    "the header {name} is set by the host, not by a task; leave it out"
                )));
            }
            let value = HeaderValue::from_str(value).map_err(|_| {
                HttpError::BadRequest(format!("the value of the header {name} is not valid"))
            })?;
            headers.push((header, value));
        }
        if size > self.caps.max_request_bytes {
            return Err(HttpError::Limit(format!(
                "the request's headers and body are {size} bytes; a task may send at most {} \
                 in one request (the operator's --http-request-bytes)",
                self.caps.max_request_bytes
            )));
        }
        Ok(headers)
    }

    fn take_request(&self, origin: &Origin) -> Result<(), HttpError> {
        let made = self.requests.fetch_add(1, Ordering::Relaxed);
        if made >= self.caps.max_requests {
            return Err(HttpError::Limit(format!(
                "the request to {origin} is refused: this task has made {made} HTTP requests, \
                 the most a task may make (at most {}, redirects included: the operator's \
                 --http-requests)",
                self.caps.max_requests
            )));
        }
        Ok(())
    }

    /// Counts `bytes` more of responses against the task's cap, or says the cap is passed.
    pub fn take_bytes(&self, bytes: u64) -> Result<(), HttpError> {
        let before = self.response_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > self.caps.max_response_bytes {
            return Err(HttpError::Limit(format!(
                "the responses passed {} bytes, the most a task may receive over HTTP (the \
                 operator's --http-response-bytes)",
                self.caps.max_response_bytes
            )));
        }
        Ok(())
    }

    /// `work`, unless the task's deadline comes first.
    pub async fn until_deadline<T>(
        &self,
        origin: &Origin,
        work: impl Future<Output = Result<T, HttpError>>,
    ) -> Result<T, HttpError> {
        tokio::time::timeout_at(self.deadline, work)
            .await
            .unwrap_or_else(|_| {
                Err(HttpError::Timeout {
                    origin: origin.to_string(),
                })
            })
    }
}
