//! The way back to a client, without any I/O: an [`Outbox`] is a bounded queue of [`Text`]
//! frames that the connection's writer drains onto the socket. Tasks, callbacks and
//! broadcasts keep outboxes; only `connection` holds the receiving ends.
//!
//! Sending never waits on the socket itself: [`Outbox::send`] waits only while the queue is
//! full (a client that stops reading slows the sender of that one message), and
//! [`Outbox::offer`] never waits, for messages that a later one supersedes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Messages that may wait for the socket per connection; past it, whoever sends waits.
const OUTBOX_CAPACITY: usize = 128;

/// One text frame for a client. Cheap to clone, so one broadcast is encoded once and shared.
#[derive(Debug, Clone)]
pub struct Text(Utf8Bytes);

impl Text {
    /// Encodes a message as the JSON text of one frame. `None` for a value JSON cannot hold
    /// (a map with non-string keys, say), which is a bug of the caller.
    pub fn json(message: &impl Serialize) -> Option<Text> {
        match serde_json::to_string(message) {
            Ok(json) => Some(Text::from(json)),
            Err(error) => {
                tracing::error!(%error, "could not encode a message for a client; it is dropped");
                None
            }
        }
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The frame's payload, for the connection's writer.
    pub(crate) fn into_payload(self) -> Utf8Bytes {
        self.0
    }
}

impl From<String> for Text {
    fn from(json: String) -> Text {
        Text(Utf8Bytes::from(json))
    }
}

/// A handle to one connection's outgoing queue. Cheap to clone; it outlives the connection
/// harmlessly (sends then report `false`).
#[derive(Debug, Clone)]
pub struct Outbox {
    id: u64,
    peer: SocketAddr,
    /// The connection's writer holds the receiving end; it is gone once the connection closed.
    queue: mpsc::Sender<Text>,
}

impl Outbox {
    /// The connection's id, unique for the server's run (`connection_id` in `hello`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Sends a message (a protocol [`crate::protocol::Reply`], or any serializable value an
    /// application defines). Returns `false` if the connection has closed.
    pub async fn send(&self, message: &impl Serialize) -> bool {
        match Text::json(message) {
            Some(text) => self.send_text(text).await,
            None => false,
        }
    }

    /// Sends one frame as it is. Returns `false` if the connection has closed.
    pub async fn send_text(&self, text: Text) -> bool {
        self.queue.send(text).await.is_ok()
    }

    /// Queues one frame if there is room now, else drops it: for messages that a later one
    /// supersedes (progress, list updates), where waiting is worse than missing one. Returns
    /// whether it was queued.
    pub fn offer(&self, text: Text) -> bool {
        self.queue.try_send(text).is_ok()
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }
}

/// The open connections' outboxes, for `stats`, broadcasts and sending to one connection.
/// Std mutex: held to insert, remove or copy the handles, never across an `.await`.
#[derive(Debug, Default)]
pub struct Outboxes {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Outbox>>,
}

impl Outboxes {
    /// A new connection's outbox, and the receiving end its writer drains.
    pub(crate) fn open(&self, peer: SocketAddr) -> (Outbox, mpsc::Receiver<Text>) {
        let (queue, queued) = mpsc::channel(OUTBOX_CAPACITY);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let outbox = Outbox { id, peer, queue };
        self.lock().insert(id, outbox.clone());
        (outbox, queued)
    }

    /// Forgets a connection that closed.
    pub(crate) fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The outbox of connection `id`, while it is open.
    pub fn get(&self, id: u64) -> Option<Outbox> {
        self.lock().get(&id).cloned()
    }

    /// A snapshot of the open connections' outboxes.
    pub fn all(&self) -> Vec<Outbox> {
        self.lock().values().cloned().collect()
    }

    /// Sends one frame to every open connection, all at once: a slow reader delays only the
    /// caller, never the other connections. Returns how many were reached.
    pub async fn broadcast(&self, text: Text) -> usize {
        let outboxes = self.all();
        let sends = outboxes.iter().map(|outbox| outbox.send_text(text.clone()));
        futures_util::future::join_all(sends)
            .await
            .into_iter()
            .filter(|reached| *reached)
            .count()
    }

    /// Like [`Outboxes::broadcast`], but drops the frame for connections whose outbox is full,
    /// for messages that a later one supersedes.
    pub fn offer_all(&self, text: Text) {
        for outbox in self.all() {
            outbox.offer(text.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Outbox>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}
