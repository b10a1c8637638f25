//! One WebSocket connection: a reader loop that turns frames into requests for the
//! application, and a writer task that drains the connection's [`Outbox`] onto the socket,
//! so that a finishing task never waits on the socket and a client that stops reading slows
//! only itself.
//!
//! Deadlines, so that no client holds the server's memory or sockets for ever:
//! - the writer gives a write (and flush) at most `--slow-client-ms`; a client that leaves its
//!   socket unread that long is closed with 1008;
//! - the reader pings an idle client every `--ping-interval-ms` and closes one that has
//!   answered nothing by the next ping;
//! - a frame that has started to arrive must be complete within `--frame-timeout-ms`, else
//!   1008 (the bytes read are counted below tungstenite, which only shows whole messages).
//!
//! The writer ends when the reader does: it sends what is already queued, then a close frame.
//! Messages sent after that are dropped, since the client is gone (guarantee 2 holds "while
//! the connection stays open").
//!
//! [`Outbox`]: crate::outbox::Outbox

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::app::{App, Client, Ctx, panic_message, protocol_app};
use crate::outbox::{Drain, Frame};
use crate::protocol::{BadFrame, ErrorCode, Reply, WireError, parse_frame};
use crate::tls::Stream;

/// tungstenite's read buffer per connection. Its default, 128 KiB, would make a thousand idle
/// connections cost 128 MiB; frames larger than this still arrive, in several reads.
/// tungstenite zero-fills the whole buffer before each read, so all of it is resident in
/// every connection: 2 KiB holds a typical message (a task request is a few hundred bytes)
/// and costs an idle connection half of what 4 KiB did (measured in `loadgen --only 6`).
const READ_BUFFER_BYTES: usize = 2 * 1024;

/// tungstenite gathers frames up to this size before writing them. The writer task feeds
/// every queued message and then flushes once, so a burst of replies goes out in one `sendto`
/// (with 0, each frame was a syscall: measured 5 µs of server CPU per task more).
const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// How long the close frame to a client being dropped for slowness may take.
const SLOW_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The socket under the WebSocket, counting the bytes it reads.
type Socket = WebSocketStream<CountedReads<Stream>>;

/// Runs one upgraded connection (its handshake answered; `leftover` is what the client sent
/// after it) until the client leaves or the server closes it. `address` is the client's
/// address after any trusted proxy.
pub async fn run<A: App>(
    ctx: Ctx<A>,
    stream: Stream,
    leftover: Vec<u8>,
    peer: SocketAddr,
    address: IpAddr,
) {
    let read_bytes = Arc::new(AtomicU64::new(0));
    let stream = CountedReads {
        inner: stream,
        read: Arc::clone(&read_bytes),
    };
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = READ_BUFFER_BYTES;
    config.write_buffer_size = WRITE_BUFFER_BYTES;
    config.max_message_size = Some(ctx.config().max_frame);
    config.max_frame_size = Some(ctx.config().max_frame);
    let socket =
        WebSocketStream::from_partially_read(stream, leftover, Role::Server, Some(config)).await;
    let (sink, frames) = socket.split();
    let (outbox, drain) = ctx.connections().open(peer, address);
    let (close_tx, close_rx) = oneshot::channel();
    // Cancelled by the writer when it gives up on a slow client: the reader stops too.
    let dropped = CancellationToken::new();
    let client = Client::new(outbox, A::Session::default());
    let span = tracing::info_span!("connection", id = client.id(), %peer);
    let writer = Writer {
        sink,
        drain,
        deadline: ctx.config().slow_client,
        dropped: dropped.clone(),
    };
    let writer = tokio::spawn(writer.run(close_rx).instrument(span.clone()));

    async {
        tracing::info!("connection opened");
        ctx.metrics().connections.inc();
        guarded("open", ctx.app().on_open(&ctx, &client)).await;
        // Listed only now: a broadcast must not reach the client before its `hello`.
        ctx.connections().list(client.outbox());
        let reader = Reader {
            ctx: &ctx,
            client: &client,
            read_bytes,
            dropped,
        };
        let close = reader.run(frames).await;
        ctx.connections().close(client.id());
        ctx.leave_topics(client.id());
        ctx.metrics().connections.dec();
        guarded("close", ctx.app().on_close(&ctx, &client)).await;
        // The writer may already be gone if the socket broke; nothing is left to tell then.
        let _ = close_tx.send(close);
        let _ = writer.await;
        tracing::info!("connection closed");
    }
    .instrument(span)
    .await;
}

/// Awaits an application's callback; a panic in it is logged, and the connection goes on.
async fn guarded(callback: &'static str, future: impl std::future::Future<Output = ()>) {
    // Boxed, as `Reader::on_message`'s: not part of the connection's own future.
    if let Err(panic) = Box::pin(AssertUnwindSafe(future).catch_unwind()).await {
        let panic = panic_message(panic.as_ref());
        tracing::error!(callback, panic, "a callback panicked");
    }
}

/// A close frame with a reason cut to the 123 bytes a close frame holds.
fn close_frame(code: CloseCode, reason: String) -> Option<CloseFrame> {
    let mut reason = reason;
    while reason.len() > 123 {
        reason.pop();
    }
    Some(CloseFrame {
        code,
        reason: reason.into(),
    })
}

/// The reading side of a connection.
struct Reader<'a, A: App> {
    ctx: &'a Ctx<A>,
    client: &'a Client<A::Session>,
    /// Bytes read from the socket so far (see [`CountedReads`]).
    read_bytes: Arc<AtomicU64>,
    /// Cancelled when the writer dropped the client for not reading.
    dropped: CancellationToken,
}

impl<A: App> Reader<'_, A> {
    /// Reads frames until the client closes, the socket fails, a deadline passes or the
    /// server stops. Returns the close frame the writer should end with.
    async fn run(self, mut frames: SplitStream<Socket>) -> Option<CloseFrame> {
        let config = self.ctx.config();
        let default_task = config.default_task.clone();
        let check_every = config.ping_interval.min(config.frame_timeout);
        let mut checks = tokio::time::interval_at(Instant::now() + check_every, check_every);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_message = Instant::now();
        let mut bytes_at_last_message = self.read_bytes.load(Ordering::Relaxed);
        let mut last_ping = Instant::now();
        let mut awaiting_pong = false;
        // Made once, not on every frame: each registers a waiter with its token.
        let closing = self.ctx.closing_connections();
        let dropped = self.dropped.cancelled();
        tokio::pin!(closing, dropped);
        loop {
            let frame = tokio::select! {
                () = &mut closing => {
                    return close_frame(CloseCode::Away, "the server is shutting down".to_owned());
                }
                () = &mut dropped => {
                    self.ctx.metrics().closed("slow_client");
                    return None;
                }
                _ = checks.tick() => {
                    let now = Instant::now();
                    let started = self.read_bytes.load(Ordering::Relaxed) != bytes_at_last_message;
                    if started && now.duration_since(last_message) >= config.frame_timeout {
                        self.ctx.metrics().closed("frame_timeout");
                        tracing::info!("a frame took too long to arrive; closing with 1008");
                        let reason = format!(
                            "a frame took longer than {} ms to arrive (--frame-timeout-ms)",
                            config.frame_timeout.as_millis()
                        );
                        return close_frame(CloseCode::Policy, reason);
                    }
                    if now.duration_since(last_ping) >= config.ping_interval {
                        if awaiting_pong {
                            self.ctx.metrics().closed("ping_timeout");
                            tracing::info!("no answer to a ping; closing");
                            let reason = "no answer to a ping".to_owned();
                            return close_frame(CloseCode::Away, reason);
                        }
                        awaiting_pong = self.client.ping();
                        last_ping = now;
                    }
                    continue;
                }
                frame = frames.next() => frame,
            };
            last_message = Instant::now();
            bytes_at_last_message = self.read_bytes.load(Ordering::Relaxed);
            awaiting_pong = false;
            let message = match frame {
                None | Some(Ok(Message::Close(_))) => return None,
                Some(Ok(message)) => message,
                Some(Err(error)) => return self.unreadable(error),
            };
            // Boxed: the callback's future, and the answers to bad frames, live only while
            // they answer, not inside every idle connection's reader.
            match message {
                Message::Text(text) => match parse_frame(&text, &default_task) {
                    Ok(request) => Box::pin(self.on_message(request)).await,
                    Err(BadFrame::Message(error)) => {
                        Box::pin(self.client.send(&Reply::Error { error: &error })).await;
                    }
                    Err(BadFrame::Task { reference, error }) => {
                        let reference = reference.as_ref();
                        Box::pin(protocol_app::reject(
                            self.ctx,
                            self.client,
                            reference,
                            error,
                        ))
                        .await;
                    }
                },
                Message::Binary(_) => {
                    let error = WireError::new(
                        ErrorCode::BadRequest,
                        "binary frames are not part of the protocol: send each message as a text frame holding one JSON object",
                    );
                    Box::pin(self.client.send(&Reply::Error { error: &error })).await;
                }
                // Pings are answered by tungstenite itself; any frame shows the client is there.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Close(_) => {}
            }
        }
    }

    /// Calls the application's `message` callback; a panic in it is answered with
    /// `internal`, and the connection goes on.
    async fn on_message(&self, request: crate::protocol::Request) {
        let handled = AssertUnwindSafe(self.ctx.app().on_message(self.ctx, self.client, request))
            .catch_unwind()
            .await;
        if let Err(panic) = handled {
            let message = panic_message(panic.as_ref());
            tracing::error!(panic = message, "the message callback panicked");
            let error = WireError::internal(format!(
                "the server failed while answering this message ({message}); this is a bug in \
                 the server or its application: report it"
            ));
            self.client.send(&Reply::Error { error: &error }).await;
        }
    }

    /// The close frame for a read that failed.
    fn unreadable(&self, error: WsError) -> Option<CloseFrame> {
        match error {
            WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                tracing::info!(size, max_size, "frame over --max-frame; closing with 1009");
                let reason = format!("frame of {size} bytes is over the limit of {max_size}");
                close_frame(CloseCode::Size, reason)
            }
            WsError::Utf8(_) => {
                tracing::info!("text frame that is not UTF-8; closing with 1007");
                close_frame(
                    CloseCode::Invalid,
                    "a text frame was not valid UTF-8".to_owned(),
                )
            }
            WsError::Protocol(error) => {
                tracing::info!(%error, "WebSocket protocol violation; closing with 1002");
                close_frame(
                    CloseCode::Protocol,
                    format!("WebSocket protocol error: {error}"),
                )
            }
            error => {
                tracing::debug!(%error, "connection ended");
                None
            }
        }
    }
}

/// The writing side of a connection.
struct Writer {
    sink: SplitSink<Socket, Message>,
    drain: Drain,
    /// How long one write or flush may take (`--slow-client-ms`).
    deadline: Duration,
    /// Cancelled when the client is dropped for not reading.
    dropped: CancellationToken,
}

impl Writer {
    /// Writes queued frames, batching what is ready into one flush. When told to close, it
    /// sends what is still queued, then the close frame. A write that the client does not
    /// let finish within the deadline ends the connection with 1008.
    async fn run(mut self, mut close: oneshot::Receiver<Option<CloseFrame>>) {
        let deadline = self.deadline;
        loop {
            let queued = tokio::select! {
                queued = self.drain.next() => queued,
                frame = &mut close => {
                    // Boxed, as the slow client's close below: the connection's last steps
                    // would otherwise be part of every idle connection's writer.
                    let _ = Box::pin(self.finish(frame.ok().flatten())).await;
                    return;
                }
            };
            // Every handle is dropped only when the server holds none: then close too.
            let Some(first) = queued else { return };
            let wrote = {
                let write = self.write_ready(first);
                tokio::pin!(write);
                // Most writes finish at once, into the socket's buffer: only a write that has
                // to wait for the client gets a timer (arming one for every write cost CPU
                // per task).
                match futures_util::poll!(&mut write) {
                    Poll::Ready(wrote) => Ok(wrote),
                    Poll::Pending => tokio::time::timeout(deadline, write).await,
                }
            };
            match wrote {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => return Box::pin(self.drop_slow_client()).await,
            }
        }
    }

    /// Feeds `first` and whatever else is queued now, then flushes once; the room the frames
    /// held in the outbox is given back once they are fed.
    async fn write_ready(&mut self, first: crate::outbox::Queued) -> Result<(), WsError> {
        let mut fed = first.cost;
        let mut result = self.feed(first.frame).await;
        while result.is_ok() {
            let Some(queued) = self.drain.try_next() else {
                break;
            };
            fed += queued.cost;
            result = self.feed(queued.frame).await;
        }
        self.drain.written(fed);
        result?;
        self.sink.flush().await
    }

    async fn feed(&mut self, frame: Frame) -> Result<(), WsError> {
        let message = match frame {
            Frame::Text(text) => Message::Text(text.into_payload()),
            Frame::Ping => Message::Ping(Bytes::new()),
        };
        self.sink.feed(message).await
    }

    /// Sends what is still queued, then `frame` (or the close reply tungstenite owes).
    async fn finish(&mut self, frame: Option<CloseFrame>) -> Result<(), WsError> {
        let deadline = self.deadline;
        let rest = async {
            while let Some(queued) = self.drain.try_next() {
                self.drain.written(queued.cost);
                // Refused once the client has closed: what is left cannot reach it.
                self.feed(queued.frame).await?;
            }
            match frame {
                Some(frame) => self.sink.send(Message::Close(Some(frame))).await,
                // The client closed, and tungstenite queued the reply it is owed (RFC 6455
                // 5.5.1): closing the sink sends it. Or the socket broke: nothing to send.
                None => self.sink.close().await,
            }
        };
        // The peer may already be gone, or not reading: the close is a courtesy then.
        tokio::time::timeout(deadline, rest).await.unwrap_or(Ok(()))
    }

    /// Gives up on a client that has not read for the deadline: the reader stops, waiting
    /// sends fail, and the socket closes with 1008 if the client takes even that.
    async fn drop_slow_client(mut self) {
        tracing::info!(
            deadline_ms = self.deadline.as_millis() as u64,
            "the client does not read; closing with 1008"
        );
        self.dropped.cancel();
        let reason = format!(
            "the client did not read for {} ms (--slow-client-ms)",
            self.deadline.as_millis()
        );
        if let Some(frame) = close_frame(CloseCode::Policy, reason) {
            let close = self.sink.send(Message::Close(Some(frame)));
            let _ = tokio::time::timeout(SLOW_CLOSE_GRACE, close).await;
        }
    }
}

/// A stream that counts the bytes read from it, so the reader can tell a frame that has
/// started to arrive from an idle connection.
struct CountedReads<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for CountedReads<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            this.read.fetch_add(read as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountedReads<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::ProtocolApp;

    /// The size of the future an async fn of two arguments returns.
    fn future_size<A, B, F>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle connection holds its session's future and its writer's for as long as it is
    /// open: what they await only now and then (a callback, the answer to a bad frame, the
    /// close) is boxed, so that it is not part of them. Measured with Rust 1.95: the session
    /// 1,248 bytes (the reader 776 of them), the writer 816 (1,704 and 1,152 unboxed).
    #[test]
    fn an_idle_connection_s_futures_stay_small() {
        fn session_size<A, B, C, D, E, F>(_: impl FnOnce(A, B, C, D, E) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let session = session_size(run::<ProtocolApp>);
        let writer = future_size(Writer::run);
        assert!(session <= 1536, "a session's future is {session} bytes");
        assert!(writer <= 1024, "a writer's future is {writer} bytes");
    }
}
