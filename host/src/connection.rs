//! One WebSocket client: a reader loop that turns frames into requests for the callbacks, and
//! a writer task fed by a bounded channel, so that a finishing task never waits on the socket
//! and a client that stops reading slows only itself.
//!
//! The writer ends when the reader does: it sends what is already queued, then a close frame.
//! Messages sent after that are dropped, since the client is gone (guarantee 2 holds "while
//! the connection stays open").

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tracing::Instrument;

use crate::protocol::{BadFrame, ErrorCode, Reply, WireError, parse_frame};
use crate::server::Server;

/// Messages that may wait for the socket per connection; past it, whoever sends waits.
const OUTBOX_CAPACITY: usize = 128;

/// A handle to one connection, for sending it messages. Cheap to clone; tasks keep one to
/// deliver their result, and it outlives the connection harmlessly.
#[derive(Debug, Clone)]
pub struct Connection {
    id: u64,
    peer: SocketAddr,
    /// The writer task holds the receiving end; it is gone once the connection closed.
    outbox: mpsc::Sender<Message>,
}

impl Connection {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Sends a protocol message. Returns `false` if the connection has closed.
    pub async fn send(&self, reply: &Reply<'_>) -> bool {
        self.send_text(reply.to_json()).await
    }

    /// Sends one text frame as it is. Returns `false` if the connection has closed.
    pub async fn send_text(&self, text: impl Into<Utf8Bytes>) -> bool {
        self.outbox.send(Message::Text(text.into())).await.is_ok()
    }

    /// Sends one text frame if there is room in the outbox now, else drops it: for messages
    /// that a later one supersedes (progress, list updates), where waiting is worse than
    /// missing one. Returns whether it was queued.
    pub fn try_send_text(&self, text: impl Into<Utf8Bytes>) -> bool {
        self.outbox.try_send(Message::Text(text.into())).is_ok()
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.outbox.is_closed()
    }
}

/// The open connections, for `stats`, broadcasts and shutdown. Std mutex: held to insert,
/// remove or copy the handles, never across an `.await`.
#[derive(Debug, Default)]
pub struct ConnectionSet {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Connection>>,
}

impl ConnectionSet {
    fn register(&self, peer: SocketAddr, outbox: mpsc::Sender<Message>) -> Connection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let connection = Connection { id, peer, outbox };
        self.lock().insert(id, connection.clone());
        connection
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of the open connections.
    pub fn all(&self) -> Vec<Connection> {
        self.lock().values().cloned().collect()
    }

    /// Sends one text frame to every open connection, all at once: a slow reader delays only
    /// the caller, never the other connections. Returns how many were reached.
    pub async fn broadcast(&self, text: impl Into<Utf8Bytes>) -> usize {
        let text = text.into();
        let connections = self.all();
        let sends = connections
            .iter()
            .map(|connection| connection.send_text(text.clone()));
        futures_util::future::join_all(sends)
            .await
            .into_iter()
            .filter(|reached| *reached)
            .count()
    }

    /// Like [`ConnectionSet::broadcast`], but drops the frame for connections whose outbox is
    /// full, for messages that a later one supersedes.
    pub fn offer_all(&self, text: impl Into<Utf8Bytes>) {
        let text = text.into();
        for connection in self.all() {
            connection.try_send_text(text.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Connection>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serves one upgraded connection until the client leaves or the server closes it.
pub async fn serve(server: Server, socket: WebSocketStream<TcpStream>, peer: SocketAddr) {
    let (sink, frames) = socket.split();
    let (outbox, queued) = mpsc::channel(OUTBOX_CAPACITY);
    let (close_tx, close_rx) = oneshot::channel();
    let connection = server.connections().register(peer, outbox);
    let span = tracing::info_span!("connection", id = connection.id(), %peer);
    let writer = tokio::spawn(write_loop(sink, queued, close_rx).instrument(span.clone()));

    async {
        tracing::info!("connection opened");
        server.metrics().connections.inc();
        server.callbacks().on_open(&server, &connection).await;
        let close = read_loop(&server, &connection, frames).await;
        server.connections().remove(connection.id());
        server.metrics().connections.dec();
        server.callbacks().on_close(&server, &connection).await;
        // The writer may already be gone if the socket broke; nothing is left to tell then.
        let _ = close_tx.send(close);
        let _ = writer.await;
        tracing::info!("connection closed");
    }
    .instrument(span)
    .await;
}

/// Reads frames until the client closes, the socket fails or the server stops. Returns the
/// close frame the writer should end with.
async fn read_loop(
    server: &Server,
    connection: &Connection,
    mut frames: SplitStream<WebSocketStream<TcpStream>>,
) -> Option<CloseFrame> {
    let default_task = server.config().default_task.clone();
    loop {
        let frame = tokio::select! {
            () = server.closing_connections() => {
                return Some(CloseFrame { code: CloseCode::Away, reason: "the server is shutting down".into() });
            }
            frame = frames.next() => frame,
        };
        let message = match frame {
            None | Some(Ok(Message::Close(_))) => return None,
            Some(Ok(message)) => message,
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                tracing::info!(size, max_size, "frame over --max-frame; closing with 1009");
                return Some(CloseFrame {
                    code: CloseCode::Size,
                    reason: format!("frame of {size} bytes is over the limit of {max_size}").into(),
                });
            }
            Some(Err(WsError::Utf8(_))) => {
                tracing::info!("text frame that is not UTF-8; closing with 1007");
                return Some(CloseFrame {
                    code: CloseCode::Invalid,
                    reason: "a text frame was not valid UTF-8".into(),
                });
            }
            Some(Err(WsError::Protocol(error))) => {
                tracing::info!(%error, "WebSocket protocol violation; closing with 1002");
                let mut reason = format!("WebSocket protocol error: {error}");
                // A close frame's reason holds at most 123 bytes.
                while reason.len() > 123 {
                    reason.pop();
                }
                return Some(CloseFrame {
                    code: CloseCode::Protocol,
                    reason: reason.into(),
                });
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "connection ended");
                return None;
            }
        };
        match message {
            Message::Text(text) => match parse_frame(&text, &default_task) {
                Ok(request) => {
                    server
                        .callbacks()
                        .on_message(server, connection, request)
                        .await;
                }
                Err(BadFrame::Message(error)) => {
                    connection.send(&Reply::Error { error: &error }).await;
                }
                Err(BadFrame::Task { reference, error }) => {
                    server.metrics().task_rejected(error.code.as_str());
                    let reply = Reply::Rejected {
                        reference: reference.as_ref(),
                        error: &error,
                    };
                    connection.send(&reply).await;
                }
            },
            Message::Binary(_) => {
                let error = WireError::new(
                    ErrorCode::BadRequest,
                    "binary frames are not part of the protocol: send each message as a text frame holding one JSON object",
                );
                connection.send(&Reply::Error { error: &error }).await;
            }
            // Pings are answered by tungstenite itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Close(_) => {}
        }
    }
}

/// Writes queued messages, batching what is ready into one flush. When told to close, it
/// sends what is still queued, then the close frame.
async fn write_loop(
    mut sink: SplitSink<WebSocketStream<TcpStream>, Message>,
    mut queued: mpsc::Receiver<Message>,
    mut close: oneshot::Receiver<Option<CloseFrame>>,
) {
    loop {
        let message = tokio::select! {
            message = queued.recv() => message,
            frame = &mut close => {
                queued.close();
                while let Ok(message) = queued.try_recv() {
                    // Refused once the client has closed: what is left cannot reach it.
                    if sink.feed(message).await.is_err() {
                        break;
                    }
                }
                // The peer may already be gone; the close is a courtesy then.
                let _ = match frame.ok().flatten() {
                    Some(frame) => sink.send(Message::Close(Some(frame))).await,
                    // The client closed, and tungstenite queued the reply it is owed (RFC 6455
                    // 5.5.1): closing the sink sends it. Or the socket broke: nothing to send.
                    None => sink.close().await,
                };
                return;
            }
        };
        // Every handle is dropped only when the server holds none: then close too.
        let Some(message) = message else { return };
        if sink.feed(message).await.is_err() {
            return;
        }
        while let Ok(message) = queued.try_recv() {
            if sink.feed(message).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}
