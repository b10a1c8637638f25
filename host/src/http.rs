//! Plain HTTP on the WebSocket port: the first request on a connection is either a WebSocket
//! upgrade (handed to [`crate::connection`]) or one of `GET /` (the page), `/healthz` and
//! `/metrics`, answered and closed.
//!
//! Reading the request head here, rather than through a full HTTP stack, keeps an idle
//! WebSocket connection down to the socket and tungstenite's small buffers.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::connection;
use crate::server::Server;

/// The page, built into the binary so the server needs no files beside its tasks.
const INDEX_HTML: &str = include_str!("../static/index.html");

/// Largest request head accepted; browsers send well under 8 KiB.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// tungstenite's read buffer per connection. Its default, 128 KiB, would make a thousand idle
/// connections cost 128 MiB; frames larger than this still arrive, in several reads.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// tungstenite gathers frames up to this size before writing them. The writer task feeds
/// every queued message and then flushes once, so a burst of replies goes out in one `sendto`
/// (with 0, each frame was a syscall: measured 5 µs of server CPU per task more).
const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// Serves one TCP connection: one HTTP request, or a WebSocket session.
pub async fn handle(server: Server, mut stream: TcpStream, peer: SocketAddr) {
    // Small writes (one frame per message) must go out at once.
    let _ = stream.set_nodelay(true);
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "bad HTTP request");
            let _ = respond(&mut stream, 400, "text/plain", error.as_bytes()).await;
            return;
        }
        Err(_) => return,
    };
    let request = match Request::parse(&head.bytes) {
        Ok(request) => request,
        Err(error) => {
            let _ = respond(&mut stream, 400, "text/plain", error.as_bytes()).await;
            return;
        }
    };
    if let Some(key) = &request.websocket_key {
        match request.upgrade_refusal(&server.config().allowed_origins) {
            None => upgrade(server, stream, peer, key, head.leftover()).await,
            Some((status, why)) => {
                tracing::info!(%peer, status, why, "WebSocket upgrade refused");
                let _ = respond(&mut stream, status, "text/plain", why.as_bytes()).await;
            }
        }
        return;
    }
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
        ("GET", "/healthz") if server.is_accepting() => (200, "text/plain", b"ok\n"),
        ("GET", "/healthz") => (503, "text/plain", b"shutting down\n"),
        ("GET", "/metrics") => {
            metrics = server.metrics_text();
            (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.as_bytes(),
            )
        }
        ("GET", _) => (
            404,
            "text/plain",
            b"not found: try /, /healthz or /metrics\n",
        ),
        _ => (405, "text/plain", b"only GET and HEAD are served here\n"),
    };
    let result = send_response(&mut stream, status, content_type, body, !head_only).await;
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "could not answer an HTTP request");
    }
}

/// Completes the WebSocket handshake and serves the connection.
async fn upgrade(
    server: Server,
    mut stream: TcpStream,
    peer: SocketAddr,
    key: &str,
    leftover: Vec<u8>,
) {
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = READ_BUFFER_BYTES;
    config.write_buffer_size = WRITE_BUFFER_BYTES;
    config.max_message_size = Some(server.config().max_frame);
    config.max_frame_size = Some(server.config().max_frame);
    let socket =
        WebSocketStream::from_partially_read(stream, leftover, Role::Server, Some(config)).await;
    connection::serve(server, socket, peer).await;
}

/// The request head and whatever followed it in the same reads.
struct Head {
    bytes: Vec<u8>,
    end: usize,
}

impl Head {
    fn leftover(&self) -> Vec<u8> {
        self.bytes[self.end..].to_vec()
    }
}

/// Reads until the blank line that ends the head. `None` if the client left first.
async fn read_head(stream: &mut TcpStream) -> Result<Option<Head>, String> {
    let mut bytes = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("could not read the request: {e}"))?;
        if read == 0 {
            return Ok(None);
        }
        let searched_from = bytes.len().saturating_sub(3);
        bytes.extend_from_slice(&chunk[..read]);
        if let Some(at) = find(&bytes[searched_from..], b"\r\n\r\n") {
            let end = searched_from + at + 4;
            return Ok(Some(Head { bytes, end }));
        }
        if bytes.len() > MAX_HEAD_BYTES {
            return Err(format!("request head over {MAX_HEAD_BYTES} bytes"));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What this server needs of a request.
struct Request {
    method: String,
    path: String,
    /// `Sec-WebSocket-Key`, present when the request is a valid WebSocket upgrade.
    websocket_key: Option<String>,
    /// Whether `Connection` names `upgrade`, as a WebSocket handshake must.
    connection_upgrade: bool,
    /// The `Origin` a browser sends, and the `Host` the request was sent to.
    origin: Option<String>,
    host: Option<String>,
}

impl Request {
    fn parse(bytes: &[u8]) -> Result<Request, &'static str> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(bytes) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err("malformed HTTP request\n"),
        }
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
        };
        let wants_upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let websocket_key = if wants_upgrade {
            if header("sec-websocket-version") != Some("13") {
                return Err("WebSocket upgrade needs Sec-WebSocket-Version: 13\n");
            }
            Some(
                header("sec-websocket-key")
                    .ok_or("WebSocket upgrade without Sec-WebSocket-Key\n")?
                    .trim()
                    .to_owned(),
            )
        } else {
            None
        };
        let path = request.path.unwrap_or("/");
        let path = path.split('?').next().unwrap_or("/");
        let connection_upgrade = header("connection").is_some_and(|value| {
            value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        });
        Ok(Request {
            method: request.method.unwrap_or("GET").to_owned(),
            path: path.to_owned(),
            websocket_key,
            connection_upgrade,
            origin: header("origin").map(str::to_owned),
            host: header("host").map(str::to_owned),
        })
    }

    /// Why a WebSocket upgrade is refused (status and a message), if it is: the task channel
    /// is `GET /`, and a browser page may open it only from the server's own origin, a
    /// loopback host, a file (`Origin: null`) or an origin in `--allow-origin`. Without the
    /// origin check any web site a user visits could run tasks on their local server.
    fn upgrade_refusal(&self, allowed: &[String]) -> Option<(u16, String)> {
        if self.method != "GET" {
            return Some((
                405,
                "a WebSocket upgrade must be a GET request\n".to_owned(),
            ));
        }
        if self.path != "/" {
            return Some((
                404,
                format!(
                    "no WebSocket endpoint at {}: connect to / (ws://HOST:PORT/)\n",
                    self.path
                ),
            ));
        }
        if !self.connection_upgrade {
            return Some((
                400,
                "a WebSocket upgrade needs the header `Connection: Upgrade`\n".to_owned(),
            ));
        }
        match &self.origin {
            Some(origin) if !origin_allowed(origin, self.host.as_deref(), allowed) => Some((
                403,
                format!(
                    "WebSocket connections from pages at {origin} are refused: start the \
                     server with --allow-origin {origin} to allow them\n"
                ),
            )),
            _ => None,
        }
    }
}

/// Whether a page at `origin` may open the task channel of the server at `host`.
fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    if origin == "null"
        || allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some((_scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    if host.is_some_and(|host| host.eq_ignore_ascii_case(authority)) {
        return true;
    }
    // The host name without its port; an IPv6 literal keeps its brackets.
    let name = match authority.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => authority,
    };
    name.eq_ignore_ascii_case("localhost")
        || name == "[::1]"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Answers with `body` and closes.
async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    send_response(stream, status, content_type, body, true).await
}

/// Answers with the head for `body`, and the body itself unless `send_body` is false (HEAD),
/// then closes.
async fn send_response(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    send_body: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if send_body {
        stream.write_all(body).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn only_local_same_or_allowed_origins_may_connect() {
        let allowed = ["https://app.example".to_owned()];
        for origin in [
            "null",
            "http://127.0.0.1:9501",
            "http://localhost:8080",
            "http://[::1]:9501",
            "https://app.example",
            "http://tasks.internal:9501",
        ] {
            assert!(
                origin_allowed(origin, Some("tasks.internal:9501"), &allowed),
                "{origin}"
            );
        }
        for origin in [
            "https://evil.example",
            "http://127.0.0.1.evil.example",
            "junk",
        ] {
            assert!(
                !origin_allowed(origin, Some("127.0.0.1:9501"), &allowed),
                "{origin}"
            );
        }
        assert!(origin_allowed(
            "https://any.example",
            None,
            &["*".to_owned()]
        ));
    }
}
