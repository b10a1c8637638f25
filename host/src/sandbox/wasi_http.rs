//! `wasi:http/outgoing-handler` for components, held to the task's `http` grant.
//! wasmtime-wasi-http frames the request from the guest's resources; its `send_request`
//! hook comes here, and the request goes out through the same checks as the `http`
//! capability's JSON call ([`HttpSession::open`]): the origin listed, the request count
//! within the operator's cap, a name's internal addresses refused unless listed, the
//! connection made to the very address judged. wasi:http follows no redirects: a guest
//! that follows one sends a new request, which is checked again.
//!
//! The request's headers and body count against `--http-request-bytes`, the response's
//! head and body against the task's `--http-response-bytes`, and nothing outlives the
//! task's deadline. A task without an http grant is refused like one whose grant does
//! not list the origin. Refusals reach the guest as wasi:http error codes
//! (`HTTP-request-denied`, `destination-IP-prohibited` for an internal address behind a
//! name, `connection-limit-reached`, `HTTP-request-body-size`, `HTTP-response-body-size`)
//! and are counted and logged like the JSON call's.
//!
//! [`HttpSession::open`]: crate::capabilities::http::HttpSession::open

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use url::Url;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::capabilities::TaskAccess;
use crate::capabilities::http::{HttpError, MAX_HEAD_BYTES};

/// How long after the task's deadline a wait of its own ends a request (see [`send`]).
const DEADLINE_BACKSTOP: std::time::Duration = std::time::Duration::from_secs(1);

/// The future wasmtime-wasi-http drives after the response head: the connection's I/O.
type Connection = Box<dyn Future<Output = Result<(), Error>> + Send>;

/// The hooks of one task's `wasi:http`: its door to the capabilities (`None`: no grants).
pub struct TaskHttp {
    access: Option<TaskAccess>,
}

impl TaskHttp {
    pub fn new(access: Option<TaskAccess>) -> TaskHttp {
        TaskHttp { access }
    }
}

impl WasiHttpHooks for TaskHttp {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_done: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Result<(Response<WasiBody>, Connection), Error>> + Send> {
        let access = self.access.clone();
        Box::new(async move {
            let Some(access) = access else {
                tracing::debug!("wasi:http request refused: this run has no capabilities");
                return Err(Error::HttpRequestDenied);
            };
            // A request that goes out is counted when its response is done with (`Tally`).
            send(&access, request, options.unwrap_or_default())
                .await
                .map_err(|(error, code)| {
                    access.count_http::<()>(&Err(error));
                    code
                })
        })
    }
}

/// A failure with what it is counted as ([`HttpError`]) and what the guest gets ([`Error`]).
type Failed = (HttpError, Error);

/// Sends `request` for the task: checked, connected, under its caps and deadline.
async fn send(
    access: &TaskAccess,
    mut request: Request<WasiBody>,
    options: RequestOptions,
) -> Result<(Response<WasiBody>, Connection), Failed> {
    let session = access.http();
    let caps = session.caps();
    // The task's own timeout ends it, and with it every request, at its deadline; the
    // waits here end a little after, as a backstop, so that the task is told `timeout`
    // rather than that its request failed a moment earlier.
    let deadline = session.deadline() + DEADLINE_BACKSTOP;
    let url = Url::parse(&request.uri().to_string()).map_err(|error| {
        let message = format!("{} is not a URL: {error}", request.uri());
        (HttpError::BadRequest(message), Error::HttpRequestUriInvalid)
    })?;
    let head_bytes = header_bytes(request.headers());
    if head_bytes > caps.max_request_bytes {
        let message = format!(
            "the request's headers are {head_bytes} bytes; a task may send at most {} in one \
             request (the operator's --http-request-bytes)",
            caps.max_request_bytes
        );
        return Err((
            HttpError::Limit(message),
            Error::HttpRequestHeaderSectionSize(None),
        ));
    }

    let connect_by = sooner(deadline, options.connect_timeout);
    let opened = tokio::time::timeout_at(connect_by, session.open(&url)).await;
    let (origin, stream) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(error)) => {
            let code = refusal_code(&error);
            return Err((error, code));
        }
        Err(_) => {
            let origin = url.origin().ascii_serialization();
            return Err((HttpError::Timeout { origin }, Error::ConnectionTimeout));
        }
    };
    let failed = |error: hyper::Error| {
        let message = format!("the request to {origin} failed: {error}");
        (HttpError::Failed(message), Error::Hyper(error))
    };
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(failed)?;

    // The request line carries the path and query; `Host` came from wasmtime-wasi-http.
    let target = url[url::Position::BeforePath..url::Position::AfterQuery].to_owned();
    *request.uri_mut() = target.parse().map_err(|_| {
        let message = format!("{url} has no valid path");
        (HttpError::BadRequest(message), Error::HttpRequestUriInvalid)
    })?;
    let body_over_cap = Arc::new(AtomicBool::new(false));
    let request = {
        let over_cap = Arc::clone(&body_over_cap);
        let mut left = caps.max_request_bytes - head_bytes;
        request.map(|body| {
            Counted::new(body, move |bytes| {
                left = left.checked_sub(bytes).ok_or_else(|| {
                    over_cap.store(true, Ordering::Relaxed);
                    Error::HttpRequestBodySize(Some(caps.max_request_bytes))
                })?;
                Ok(())
            })
        })
    };

    // The response head, while the connection's I/O is driven beside it; the I/O goes on
    // after the head, as the future handed back.
    let first_byte_by = sooner(deadline, options.first_byte_timeout);
    let mut connection = Some(connection);
    let mut sending = pin!(tokio::time::timeout_at(
        first_byte_by,
        sender.send_request(request)
    ));
    let answered = poll_fn(|cx: &mut Context<'_>| {
        if let Poll::Ready(answer) = sending.as_mut().poll(cx) {
            return Poll::Ready(answer.map_err(|_| None).and_then(|sent| sent.map_err(Some)));
        }
        let Some(io) = connection.as_mut() else {
            return Poll::Pending;
        };
        let ended = ready!(Pin::new(io).poll(cx));
        connection = None;
        match ended {
            Ok(()) => sending
                .as_mut()
                .poll(cx)
                .map(|answer| answer.map_err(|_| None).and_then(|sent| sent.map_err(Some))),
            Err(error) => Poll::Ready(Err(Some(error))),
        }
    })
    .await;
    let response = match answered {
        Ok(response) => response,
        Err(_) if body_over_cap.load(Ordering::Relaxed) => {
            let message = format!(
                "the request's body passed {} bytes, the most a task may send in one request \
                 (the operator's --http-request-bytes)",
                caps.max_request_bytes
            );
            return Err((
                HttpError::Limit(message),
                Error::HttpRequestBodySize(Some(caps.max_request_bytes)),
            ));
        }
        Err(Some(error)) => return Err(failed(error)),
        Err(None) => {
            let origin = origin.to_string();
            return Err((HttpError::Timeout { origin }, Error::ConnectionReadTimeout));
        }
    };

    let head_bytes = header_bytes(response.headers());
    session
        .take_bytes(head_bytes)
        .map_err(|error| (error, Error::HttpResponseHeaderSectionSize(None)))?;
    let mut tally = Tally {
        access: access.clone(),
        refused: None,
    };
    let response = response.map(move |body| {
        Counted::new(body, move |bytes| {
            tally.access.http().take_bytes(bytes).map_err(|error| {
                // A body's error reaches the guest as its text only (wasmtime-wasi-http
                // 48 carries no error code on a stream), so it is the host's message.
                let message = error.to_string();
                tally.refused = Some(error);
                Error::InternalError(Some(message))
            })
        })
        .boxed_unsync()
    });
    let io: Connection = Box::new(async move {
        let Some(io) = connection else {
            return Ok(());
        };
        match tokio::time::timeout_at(deadline, io).await {
            Ok(ended) => ended.map_err(Error::Hyper),
            Err(_) => Err(Error::ConnectionReadTimeout),
        }
    });
    Ok((response, io))
}

/// Counts a request that went out once, when its response body is dropped (read to the
/// end, left unread, or dropped with the task): `ok`, or the cap the body passed.
struct Tally {
    access: TaskAccess,
    refused: Option<HttpError>,
}

impl Drop for Tally {
    fn drop(&mut self) {
        let outcome = match self.refused.take() {
            Some(error) => Err(error),
            None => Ok(()),
        };
        self.access.count_http(&outcome);
    }
}

/// What the guest is told when the host refused or could not make the connection.
fn refusal_code(error: &HttpError) -> Error {
    match error {
        HttpError::NotAllowed { internal: true, .. } => Error::DestinationIpProhibited,
        HttpError::NotAllowed { .. } => Error::HttpRequestDenied,
        HttpError::Limit(_) => Error::ConnectionLimitReached,
        HttpError::Timeout { .. } => Error::ConnectionTimeout,
        HttpError::BadRequest(_) => Error::HttpRequestUriInvalid,
        HttpError::Failed(message) => Error::InternalError(Some(message.clone())),
    }
}

/// Bytes of a header set as the caps count them: names and values.
fn header_bytes(headers: &hyper::HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().len() + value.len()) as u64)
        .sum()
}

/// The earlier of the task's deadline and `timeout` from now, if the guest set one.
fn sooner(deadline: Instant, timeout: Option<std::time::Duration>) -> Instant {
    timeout.map_or(deadline, |timeout| deadline.min(Instant::now() + timeout))
}

/// A body whose data frames `take` counts as they pass; the first it refuses ends the body
/// with its error.
struct Counted<B, F> {
    inner: B,
    take: F,
}

impl<B, F> Counted<B, F> {
    fn new(inner: B, take: F) -> Self {
        Counted { inner, take }
    }
}

impl<B, F> Body for Counted<B, F>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Error>,
    F: FnMut(u64) -> Result<(), Error> + Unpin,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref()
            && let Err(error) = (this.take)(data.len() as u64)
        {
            return Poll::Ready(Some(Err(error)));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
