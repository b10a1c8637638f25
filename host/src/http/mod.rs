//! Plain HTTP on the WebSocket port: the first request on a connection is either a WebSocket
//! upgrade (handed to [`crate::connection`]) or one of `GET /` (the page), `/dashboard`,
//! `/healthz` and `/metrics`, answered and closed.
//!
//! Before anything is served, in order: the overall connection cap (503), the TLS handshake
//! and the request head within [`HEAD_TIMEOUT`], the `Host` of a browser's request (403), then
//! for the task channel the path and origin (404, 403), the token (401) and the client
//! address's connection cap (429); for /metrics and /dashboard the token.
//!
//! Reading the request head here, rather than through a full HTTP stack, keeps an idle
//! WebSocket connection down to the socket and tungstenite's small buffers.

mod access;
mod dashboard;
pub(crate) mod request;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::task::TaskTracker;

use crate::app::{App, Ctx};
use crate::clip::clip;
use crate::config::Config;
use crate::connection;
use crate::peers::{AddressPlace, Peers, Place};
use crate::tls::{self, Stream};
use request::{Request, read_head};

/// The page, built into the binary so the server needs no files beside its tasks.
const INDEX_HTML: &str = include_str!("../../static/index.html");

/// How long a client may take for the TLS handshake and its request head together.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// What the connections of one port share: the connection caps and the TLS acceptor.
pub struct Edge {
    peers: Peers,
    tls: Option<TlsAcceptor>,
    /// Every connection's tasks, its handshake's and its session's: the shutdown waits for
    /// them.
    connections: TaskTracker,
}

impl Edge {
    pub fn new(config: &Config, connections: TaskTracker) -> anyhow::Result<Edge> {
        Ok(Edge {
            peers: Peers::new(config),
            tls: config.tls.as_ref().map(tls::acceptor).transpose()?,
            connections,
        })
    }

    /// Serves an accepted connection in a task of its own, tracked for the shutdown.
    pub fn serve<A: App>(self: &Arc<Edge>, ctx: Ctx<A>, tcp: TcpStream, peer: SocketAddr) {
        self.connections
            .spawn(handle(ctx, Arc::clone(self), tcp, peer));
    }

    /// Whether the port serves TLS (`wss://`, `https://`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// A connection's places in the connection counts, held while it is open.
struct Places {
    _open: Place,
    _address: Option<AddressPlace>,
}

/// Serves one TCP connection: one HTTP request, or a WebSocket session.
async fn handle<A: App>(ctx: Ctx<A>, edge: Arc<Edge>, tcp: TcpStream, peer: SocketAddr) {
    let Some(open) = edge.peers.admit() else {
        ctx.metrics().refused("max_connections");
        tracing::warn!(%peer, max = ctx.config().max_connections, "connection refused: --max-connections are open");
        if edge.tls.is_none() {
            let mut stream = Stream::Plain(tcp);
            let why = "the server has as many connections as it may hold (--max-connections); retry later\n";
            let _ = respond(&mut stream, 503, why).await;
        }
        return;
    };
    // Small writes (one frame per message) must go out at once.
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok();
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    let mut stream = match &edge.tls {
        None => Stream::Plain(tcp),
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "TLS handshake failed");
                return;
            }
            Err(_) => return,
        },
    };
    let head = match tokio::time::timeout_at(deadline, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) | Err(_) => return,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "bad HTTP request");
            let _ = respond(&mut stream, 400, &error).await;
            return;
        }
    };
    let request = match Request::parse(&head.bytes) {
        Ok(request) => request,
        Err(error) => {
            let _ = respond(&mut stream, 400, error).await;
            return;
        }
    };
    let config = ctx.config();
    if request.origin.is_some()
        && !access::host_allowed(request.host.as_deref(), local, &config.allowed_hosts)
    {
        let host = clip(request.host.as_deref().unwrap_or("(none)"));
        ctx.metrics().refused("host");
        tracing::info!(%peer, %host, "request refused: its Host is not a name of this server");
        let why = format!(
            "Host {host} is not a name of this server: start it with --allow-host NAME for \
             each name clients use to reach it\n"
        );
        let _ = respond(&mut stream, 403, &why).await;
        return;
    }
    let client = edge
        .peers
        .client_address(peer.ip(), request.forwarded_for.as_deref());
    if let Some(accept) = request.websocket_key.as_deref().map(accept_key) {
        match upgrade_refusal(&ctx, &edge, &request, client) {
            Ok(address) => {
                let places = Places {
                    _open: open,
                    _address: Some(address),
                };
                let leftover = head.leftover();
                // The head and the parsed request are not needed while the connection
                // lasts: freed now, they cost an idle connection nothing.
                drop(request);
                drop(head);
                if switch_protocols(&mut stream, &accept).await.is_err() {
                    return;
                }
                // The session runs as a task of its own, and this one ends: it holds the
                // handshake's states (the TLS handshake, the head being read: about 1 KiB),
                // which would stay allocated, unused, while the connection lasts
                // (docs/PERFORMANCE.md, "An idle connection's memory").
                edge.connections.spawn(async move {
                    connection::run(ctx, stream, leftover, peer, client).await;
                    drop(places);
                });
            }
            Err((status, reason, why)) => {
                ctx.metrics().refused(reason);
                // The client's own text in `why` is clipped already.
                tracing::info!(%peer, %client, status, why = why.trim_end(), "WebSocket upgrade refused");
                let _ = respond(&mut stream, status, &why).await;
            }
        }
        return;
    }
    answer(&ctx, &mut stream, &request).await;
}

/// Answers a plain HTTP request: the page, /healthz or /metrics.
async fn answer<A: App>(ctx: &Ctx<A>, stream: &mut Stream, request: &Request) {
    // HEAD is GET without the body, as health checkers and monitors expect.
    let head_only = request.method == "HEAD";
    let method = if head_only {
        "GET"
    } else {
        request.method.as_str()
    };
    let metrics;
    let (status, content_type, body): (u16, &str, &[u8]) = match (method, request.path.as_str()) {
        ("GET", "/" | "/index.html") => (200, "text/html; charset=utf-8", INDEX_HTML.as_bytes()),
        ("GET", "/dashboard") => dashboard::page(ctx, token_presented(ctx, request)),
        ("GET", "/healthz") if ctx.is_accepting() => (200, "text/plain", b"ok\n"),
        ("GET", "/healthz") => (503, "text/plain", b"shutting down\n"),
        ("GET", "/metrics") if !token_presented(ctx, request) => {
            ctx.metrics().refused("token");
            (401, "text/plain", MISSING_TOKEN.as_bytes())
        }
        ("GET", "/metrics") => {
            metrics = ctx.metrics_text();
            (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.as_bytes(),
            )
        }
        ("GET", _) => (
            404,
            "text/plain",
            b"not found: try /, /dashboard, /healthz or /metrics\n",
        ),
        _ => (405, "text/plain", b"only GET and HEAD are served here\n"),
    };
    let result = send_response(stream, status, content_type, body, !head_only).await;
    if let Err(error) = result {
        tracing::debug!(%error, "could not answer an HTTP request");
    }
}

/// What a client without the right token is told.
const MISSING_TOKEN: &str = "this server needs its token: send `Authorization: Bearer TOKEN`, \
                             or add ?token=TOKEN to the URL\n";

/// Whether the request carries the server's token, or the server has none.
fn token_presented<A: App>(ctx: &Ctx<A>, request: &Request) -> bool {
    let Some(token) = &ctx.config().token else {
        return true;
    };
    access::presented_token(request.authorization.as_deref(), request.query.as_deref())
        .is_some_and(|presented| access::token_matches(&presented, token.expose()))
}

/// Why a WebSocket upgrade is refused (status, a metrics label and a message), if it is; else
/// the connection's place in its address's count.
fn upgrade_refusal<A: App>(
    ctx: &Ctx<A>,
    edge: &Edge,
    request: &Request,
    client: IpAddr,
) -> Result<AddressPlace, (u16, &'static str, String)> {
    let config = ctx.config();
    if request.method != "GET" {
        let why = "a WebSocket upgrade must be a GET request\n";
        return Err((405, "bad_upgrade", why.to_owned()));
    }
    if request.path != "/" {
        let why = format!(
            "no WebSocket endpoint at {}: connect to / (ws://HOST:PORT/)\n",
            clip(&request.path)
        );
        return Err((404, "bad_upgrade", why));
    }
    if !request.connection_upgrade {
        let why = "a WebSocket upgrade needs the header `Connection: Upgrade`\n";
        return Err((400, "bad_upgrade", why.to_owned()));
    }
    if let Some(origin) = &request.origin
        && !access::origin_allowed(origin, request.host.as_deref(), &config.allowed_origins)
    {
        let why = if origin == "null" {
            "WebSocket connections from pages opened from a file (or from sandboxed frames, \
             Origin: null) are refused: open the page the server serves at \
             http://HOST:PORT/, or start the server with --allow-origin null\n"
                .to_owned()
        } else {
            let origin = clip(origin);
            format!(
                "WebSocket connections from pages at {origin} are refused: start the server \
                 with --allow-origin {origin} to allow them\n"
            )
        };
        return Err((403, "origin", why));
    }
    if !token_presented(ctx, request) {
        return Err((401, "token", MISSING_TOKEN.to_owned()));
    }
    edge.peers.admit_address(client).map_err(|cap| {
        let why = format!(
            "{client} already has {cap} connections open, the most one address may have \
             (--max-connections-per-ip); close some first\n"
        );
        (429, "max_connections_per_ip", why)
    })
}

/// Completes the WebSocket handshake: the `101` answer.
async fn switch_protocols(stream: &mut Stream, accept: &str) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).await
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
fn accept_key(key: &str) -> String {
    derive_accept_key(key.as_bytes())
}

/// Answers with a plain-text `body` and closes.
async fn respond(stream: &mut Stream, status: u16, body: &str) -> std::io::Result<()> {
    send_response(stream, status, "text/plain", body.as_bytes(), true).await
}

/// Answers with the head for `body`, and the body itself unless `send_body` is false (HEAD),
/// then closes.
async fn send_response(
    stream: &mut Stream,
    status: u16,
    content_type: &str,
    body: &[u8],
    send_body: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "",
    };
    let challenge = if status == 401 {
        "WWW-Authenticate: Bearer realm=\"taskhost\"\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {challenge}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if send_body {
        stream.write_all(body).await?;
    }
    stream.shutdown().await
}
