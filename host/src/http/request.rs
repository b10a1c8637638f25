//! Reading and parsing a request head: just what the server needs of it, with a cap on its
//! size (the caller puts a deadline on the reading).

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest request head accepted; browsers send well under 8 KiB.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The request head and whatever followed it in the same reads.
pub struct Head {
    pub bytes: Vec<u8>,
    end: usize,
}

impl Head {
    /// What the client sent after the head (the first WebSocket frames, say).
    pub fn leftover(&self) -> Vec<u8> {
        self.bytes[self.end..].to_vec()
    }
}

/// Reads until the blank line that ends the head. `None` if the client left first.
pub async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> Result<Option<Head>, String> {
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
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// What follows `?` in the target, if anything.
    pub query: Option<String>,
    /// `Sec-WebSocket-Key`, present when the request is a valid WebSocket upgrade.
    pub websocket_key: Option<String>,
    /// Whether `Connection` names `upgrade`, as a WebSocket handshake must.
    pub connection_upgrade: bool,
    /// The `Origin` a browser sends, and the `Host` the request was sent to.
    pub origin: Option<String>,
    pub host: Option<String>,
    pub authorization: Option<String>,
    /// `X-Forwarded-For`, believed only from a trusted proxy.
    pub forwarded_for: Option<String>,
}

impl Request {
    pub fn parse(bytes: &[u8]) -> Result<Request, &'static str> {
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
        let target = request.path.unwrap_or("/");
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query.to_owned())),
            None => (target, None),
        };
        let connection_upgrade = header("connection").is_some_and(|value| {
            value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        });
        Ok(Request {
            method: request.method.unwrap_or("GET").to_owned(),
            path: path.to_owned(),
            query,
            websocket_key,
            connection_upgrade,
            origin: header("origin").map(str::to_owned),
            host: header("host").map(str::to_owned),
            authorization: header("authorization").map(str::to_owned),
            forwarded_for: header("x-forwarded-for").map(str::to_owned),
        })
    }
}
