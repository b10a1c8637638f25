//! The way back to a client, without any I/O: an [`Outbox`] is a queue of frames, bounded in
//! bytes, that the connection's writer drains onto the socket. Tasks, callbacks and
//! broadcasts keep outboxes; only `connection` holds the receiving ends.
//!
//! Two ways to send, because messages differ in what losing one costs:
//! - [`Outbox::send`] waits while the queue is full, and never drops: answers, `accepted`,
//!   terminal messages, the last progress report. A client that stops reading makes its
//!   senders wait until the connection's writer gives up on it (`--slow-client-ms`) and
//!   closes it; then every waiting send returns `false` at once.
//! - [`Outbox::offer`] never waits: it drops the frame when the queue is full, for messages
//!   that a later one supersedes or that the client only watches (progress, broadcasts, list
//!   updates). A broadcast therefore never waits on any reader.
//!
//! The bound is in bytes ([`Outboxes`]' budget, `--outbox-bytes`), each frame costing its
//! length plus [`FRAME_OVERHEAD`], so that many small frames are bounded too.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// What one queued frame costs beyond its bytes: the queue entry and the frame header.
pub const FRAME_OVERHEAD: usize = 64;

/// One text frame for a client. Cheap to clone, so one broadcast is encoded once and shared.
#[derive(Debug, Clone)]
pub struct Text(Utf8Bytes);

impl Text {
    /// Encodes a message as the JSON text of one frame. `None` for a value JSON cannot hold
    /// (a map with non-string keys, say), which is a bug of the caller.
    pub fn json(message: &impl Serialize) -> Option<Text> {
        match crate::json::to_string(message) {
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

/// What the writer takes from an outbox.
#[derive(Debug)]
pub(crate) enum Frame {
    Text(Text),
    /// A WebSocket ping, to see whether the client is still there.
    Ping,
}

/// A queued frame and the room it holds in the outbox, given back once it is written.
#[derive(Debug)]
pub(crate) struct Queued {
    pub frame: Frame,
    pub cost: u32,
}

/// A queue that held more frames than this, once empty, gives its memory back: a burst
/// (thousands of progress reports, say) must not leave every idle connection holding room
/// for it.
const SHRINK_ABOVE: usize = 32;

/// One connection's queue, shared by its outbox handles and its writer. A plain deque under
/// a mutex, rather than a channel: it allocates nothing until a frame is queued, where
/// tokio's unbounded channel allocated 1.8 KiB per connection up front (docs/PERFORMANCE.md,
/// "An idle connection's memory").
#[derive(Debug)]
struct Queue {
    frames: Mutex<Frames>,
    /// Wakes the writer when a frame is queued, or the last handle is gone.
    ready: Notify,
    /// Outbox handles alive: the writer stops once there are none and the queue is empty.
    handles: AtomicUsize,
    /// Bytes the queue may still take; the writer gives them back as it writes.
    room: Semaphore,
}

#[derive(Debug, Default)]
struct Frames {
    queued: VecDeque<Queued>,
    /// The writer is gone: frames are refused.
    closed: bool,
}

impl Queue {
    fn frames(&self) -> MutexGuard<'_, Frames> {
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pop(&self) -> Option<Queued> {
        let mut frames = self.frames();
        let queued = frames.queued.pop_front();
        if frames.queued.is_empty() && frames.queued.capacity() > SHRINK_ABOVE {
            frames.queued = VecDeque::new();
        }
        queued
    }
}

/// The receiving end of an outbox, for the connection's writer.
#[derive(Debug)]
pub(crate) struct Drain {
    queue: Arc<Queue>,
}

impl Drain {
    /// The next frame, once one is queued; `None` once every outbox handle is gone. Safe to
    /// cancel: a frame is taken only when it is returned.
    pub async fn next(&mut self) -> Option<Queued> {
        loop {
            if let Some(queued) = self.queue.pop() {
                return Some(queued);
            }
            if self.queue.handles.load(Ordering::Acquire) == 0 {
                return self.queue.pop();
            }
            // A frame queued (or the last handle dropped) since the look left a permit: this
            // returns at once then.
            self.queue.ready.notified().await;
        }
    }

    /// The next frame if one is queued now.
    pub fn try_next(&mut self) -> Option<Queued> {
        self.queue.pop()
    }

    /// Gives back the room of a frame that was written (or thrown away).
    pub fn written(&self, cost: u32) {
        self.queue.room.add_permits(cost as usize);
    }
}

impl Drop for Drain {
    /// The connection is over: frames are refused, what was queued is freed, and sends
    /// waiting for room fail now, instead of for ever.
    fn drop(&mut self) {
        let mut frames = self.queue.frames();
        frames.closed = true;
        frames.queued = VecDeque::new();
        drop(frames);
        self.queue.room.close();
    }
}

/// A handle to one connection's outgoing queue. Cheap to clone; it outlives the connection
/// harmlessly (sends then report `false`).
#[derive(Debug)]
pub struct Outbox {
    id: u64,
    peer: SocketAddr,
    address: IpAddr,
    /// The queue the connection's writer drains; closed once the connection is.
    queue: Arc<Queue>,
    /// The whole budget: a frame larger than it costs this much, so it can still go alone.
    budget: usize,
}

impl Clone for Outbox {
    fn clone(&self) -> Outbox {
        self.queue.handles.fetch_add(1, Ordering::Relaxed);
        Outbox {
            id: self.id,
            peer: self.peer,
            address: self.address,
            queue: Arc::clone(&self.queue),
            budget: self.budget,
        }
    }
}

impl Drop for Outbox {
    /// The last handle gone, the writer ends once it has written what is queued.
    fn drop(&mut self) {
        if self.queue.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.queue.ready.notify_one();
        }
    }
}

impl Outbox {
    /// The connection's id, unique for the server's run (`connection_id` in `hello`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The address the connection comes from (a trusted proxy's own, for a proxied client).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The client's address: the peer's, or the one a trusted proxy named.
    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// Sends a message (a protocol [`crate::protocol::Reply`], or any serializable value an
    /// application defines), waiting while the outbox is full. Returns `false` if the
    /// connection has closed.
    pub async fn send(&self, message: &impl Serialize) -> bool {
        match Text::json(message) {
            Some(text) => self.send_text(text).await,
            None => false,
        }
    }

    /// Sends one frame as it is, waiting while the outbox is full. Returns `false` if the
    /// connection has closed.
    pub async fn send_text(&self, text: Text) -> bool {
        let cost = self.cost(&text);
        // Room is there nearly always: take it without making a waiting future.
        if let Ok(permit) = self.queue.room.try_acquire_many(cost) {
            permit.forget();
            return self.enqueue(Frame::Text(text), cost);
        }
        match self.queue.room.acquire_many(cost).await {
            Ok(permit) => {
                permit.forget();
                self.enqueue(Frame::Text(text), cost)
            }
            Err(_) => false,
        }
    }

    /// Queues one frame if there is room now, else drops it: for messages that a later one
    /// supersedes (progress, list updates) or that the client only watches (broadcasts),
    /// where waiting is worse than missing one. Returns whether it was queued.
    pub fn offer(&self, text: Text) -> bool {
        let cost = self.cost(&text);
        self.offer_frame(Frame::Text(text), cost)
    }

    /// Queues a ping if there is room.
    pub(crate) fn ping(&self) -> bool {
        self.offer_frame(Frame::Ping, FRAME_OVERHEAD as u32)
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.queue.frames().closed
    }

    fn offer_frame(&self, frame: Frame, cost: u32) -> bool {
        match self.queue.room.try_acquire_many(cost) {
            Ok(permit) => {
                permit.forget();
                self.enqueue(frame, cost)
            }
            Err(_) => false,
        }
    }

    fn enqueue(&self, frame: Frame, cost: u32) -> bool {
        let mut frames = self.queue.frames();
        // Refused once the writer is gone: the room no longer matters then.
        if frames.closed {
            return false;
        }
        frames.queued.push_back(Queued { frame, cost });
        drop(frames);
        self.queue.ready.notify_one();
        true
    }

    fn cost(&self, text: &Text) -> u32 {
        let cost = (text.as_str().len() + FRAME_OVERHEAD).min(self.budget);
        u32::try_from(cost).unwrap_or(u32::MAX)
    }
}

/// The open connections' outboxes, for `stats`, broadcasts and sending to one connection.
/// Std mutex: held to insert, remove or copy the handles, never across an `.await`.
#[derive(Debug)]
pub struct Outboxes {
    next_id: AtomicU64,
    /// Bytes each outbox may hold (`--outbox-bytes`).
    budget: usize,
    open: Mutex<HashMap<u64, Outbox>>,
}

/// What a broadcast did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fanout {
    /// Connections whose outbox took the frame.
    pub reached: usize,
    /// Connections whose outbox was full: they missed it.
    pub missed: usize,
}

impl Outboxes {
    /// Outboxes of `budget` bytes each (at most `u32::MAX`).
    pub fn new(budget: usize) -> Outboxes {
        Outboxes {
            next_id: AtomicU64::new(0),
            budget: budget.clamp(FRAME_OVERHEAD, u32::MAX as usize),
            open: Mutex::default(),
        }
    }

    /// A new connection's outbox, and the receiving end its writer drains. It is not yet
    /// among the open ones (broadcasts do not reach it) until [`Outboxes::list`].
    pub(crate) fn open(&self, peer: SocketAddr, address: IpAddr) -> (Outbox, Drain) {
        let queue = Arc::new(Queue {
            frames: Mutex::default(),
            ready: Notify::new(),
            handles: AtomicUsize::new(1),
            room: Semaphore::new(self.budget),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let outbox = Outbox {
            id,
            peer,
            address,
            queue: Arc::clone(&queue),
            budget: self.budget,
        };
        (outbox, Drain { queue })
    }

    /// Counts `outbox` among the open connections, for broadcasts, `stats` and sending by id:
    /// after its `hello`, so that nothing reaches a client before it.
    pub(crate) fn list(&self, outbox: &Outbox) {
        self.lock().insert(outbox.id, outbox.clone());
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

    /// Offers one frame to every open connection: never waits, and a connection whose outbox
    /// is full misses it.
    pub fn broadcast(&self, text: &Text) -> Fanout {
        let mut fanout = Fanout::default();
        for outbox in self.all() {
            if outbox.offer(text.clone()) {
                fanout.reached += 1;
            } else if !outbox.is_closed() {
                fanout.missed += 1;
            }
        }
        fanout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Outbox>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outboxes(budget: usize) -> (Outboxes, Outbox, Drain) {
        let outboxes = Outboxes::new(budget);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (outbox, drain) = outboxes.open(peer, peer.ip());
        outboxes.list(&outbox);
        (outboxes, outbox, drain)
    }

    #[tokio::test]
    async fn offers_drop_when_full_and_sends_wait_for_room() {
        let (_outboxes, outbox, mut drain) = outboxes(2 * (100 + FRAME_OVERHEAD));
        let text = || Text::from("x".repeat(100));
        assert!(outbox.offer(text()));
        assert!(outbox.offer(text()));
        assert!(!outbox.offer(text()), "full: an offer is dropped");
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.send_text(text()).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "full: a send waits");
        let first = drain.next().await.unwrap();
        drain.written(first.cost);
        assert!(waiting.await.unwrap(), "room came back: the send went");
    }

    #[tokio::test]
    async fn waiting_sends_fail_once_the_connection_is_gone() {
        let (_outboxes, outbox, drain) = outboxes(FRAME_OVERHEAD + 10);
        assert!(outbox.offer(Text::from("0123456789".to_owned())));
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.send_text(Text::from("more".to_owned())).await }
        });
        drop(drain);
        assert!(!waiting.await.unwrap());
        let huge = Text::from("y".repeat(10_000));
        assert!(!outbox.offer(huge), "closed");
    }

    /// Senders on other threads, the writer waiting: every frame arrives once, in each
    /// sender's order, and the drain ends once every handle is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_from_many_threads_all_arrive_and_the_end_is_seen() {
        let (outboxes, outbox, mut drain) = outboxes(64 * (8 + FRAME_OVERHEAD));
        outboxes.close(outbox.id());
        let senders: Vec<_> = (0..4)
            .map(|sender| {
                let outbox = outbox.clone();
                tokio::spawn(async move {
                    for n in 0..2_000 {
                        assert!(outbox.send_text(Text::from(format!("{sender} {n}"))).await);
                    }
                })
            })
            .collect();
        drop(outbox);
        let mut next = [0; 4];
        while let Some(queued) = drain.next().await {
            drain.written(queued.cost);
            let Frame::Text(text) = queued.frame else {
                panic!("only texts were sent")
            };
            let (sender, n) = text.as_str().split_once(' ').unwrap();
            let sender: usize = sender.parse().unwrap();
            assert_eq!(
                n.parse::<usize>().unwrap(),
                next[sender],
                "sender {sender}'s order"
            );
            next[sender] += 1;
        }
        assert_eq!(next, [2_000; 4]);
        for sender in senders {
            sender.await.unwrap();
        }
    }

    #[tokio::test]
    async fn an_emptied_queue_gives_a_burst_s_memory_back() {
        let (_outboxes, outbox, mut drain) = outboxes(1 << 20);
        for _ in 0..1_000 {
            assert!(outbox.offer(Text::from("x".to_owned())));
        }
        assert!(drain.queue.frames().queued.capacity() >= 1_000);
        while let Some(queued) = drain.try_next() {
            drain.written(queued.cost);
        }
        assert_eq!(drain.queue.frames().queued.capacity(), 0);
    }

    #[test]
    fn a_broadcast_counts_who_missed_it() {
        let (outboxes, full, _drain) = outboxes(FRAME_OVERHEAD + 5);
        let peer: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let (reader, _reader_drain) = outboxes.open(peer, peer.ip());
        outboxes.list(&reader);
        assert!(full.offer(Text::from("12345".to_owned())));
        let fanout = outboxes.broadcast(&Text::from("hello".to_owned()));
        assert_eq!(
            fanout,
            Fanout {
                reached: 1,
                missed: 1
            }
        );
    }
}
