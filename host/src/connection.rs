//! One WebSocket connection: a reader loop that turns frames into requests for the
//! application, and a writer task that drains the connection's [`Outbox`] onto the socket,
//! so that a finishing task never waits on the socket and a client that stops reading slows
//! only itself.
//!
//! The writer ends when the reader does: it sends what is already queued, then a close frame.
//! Messages sent after that are dropped, since the client is gone (guarantee 2 holds "while
//! the connection stays open").

use std::net::SocketAddr;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::Instrument;

use crate::app::{App, Client, Ctx, protocol_app};
use crate::outbox::Text;
use crate::protocol::{BadFrame, ErrorCode, Reply, WireError, parse_frame};
use crate::tls::Stream;

/// Runs one upgraded connection until the client leaves or the server closes it.
pub async fn run<A: App>(ctx: Ctx<A>, socket: WebSocketStream<Stream>, peer: SocketAddr) {
    let (sink, frames) = socket.split();
    let (outbox, queued) = ctx.connections().open(peer);
    let (close_tx, close_rx) = oneshot::channel();
    let client = Client::new(outbox, A::Session::default());
    let span = tracing::info_span!("connection", id = client.id(), %peer);
    let writer = tokio::spawn(write_loop(sink, queued, close_rx).instrument(span.clone()));

    async {
        tracing::info!("connection opened");
        ctx.metrics().connections.inc();
        ctx.app().on_open(&ctx, &client).await;
        let close = read_loop(&ctx, &client, frames).await;
        ctx.connections().close(client.id());
        ctx.metrics().connections.dec();
        ctx.app().on_close(&ctx, &client).await;
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
async fn read_loop<A: App>(
    ctx: &Ctx<A>,
    client: &Client<A::Session>,
    mut frames: SplitStream<WebSocketStream<Stream>>,
) -> Option<CloseFrame> {
    let default_task = ctx.config().default_task.clone();
    loop {
        let frame = tokio::select! {
            () = ctx.closing_connections() => {
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
                Ok(request) => ctx.app().on_message(ctx, client, request).await,
                Err(BadFrame::Message(error)) => {
                    client.send(&Reply::Error { error: &error }).await;
                }
                Err(BadFrame::Task { reference, error }) => {
                    protocol_app::reject(ctx, client, reference.as_ref(), error).await;
                }
            },
            Message::Binary(_) => {
                let error = WireError::new(
                    ErrorCode::BadRequest,
                    "binary frames are not part of the protocol: send each message as a text frame holding one JSON object",
                );
                client.send(&Reply::Error { error: &error }).await;
            }
            // Pings are answered by tungstenite itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Close(_) => {}
        }
    }
}

/// Writes queued messages, batching what is ready into one flush. When told to close, it
/// sends what is still queued, then the close frame.
async fn write_loop(
    mut sink: SplitSink<WebSocketStream<Stream>, Message>,
    mut queued: mpsc::Receiver<Text>,
    mut close: oneshot::Receiver<Option<CloseFrame>>,
) {
    loop {
        let message = tokio::select! {
            message = queued.recv() => message,
            frame = &mut close => {
                queued.close();
                while let Ok(text) = queued.try_recv() {
                    // Refused once the client has closed: what is left cannot reach it.
                    if sink.feed(Message::Text(text.into_payload())).await.is_err() {
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
        let Some(text) = message else { return };
        if sink.feed(Message::Text(text.into_payload())).await.is_err() {
            return;
        }
        while let Ok(text) = queued.try_recv() {
            if sink.feed(Message::Text(text.into_payload())).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}
