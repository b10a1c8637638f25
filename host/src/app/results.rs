//! Results that outlive the connection: every task from its admission to its end (who
//! submitted it, its idempotency key, which connections are attached to it), and its
//! terminal message kept afterwards for `--result-ttl`, bounded by `--result-bytes` (the
//! oldest go first). `attach` and a repeated `key` read it.
//!
//! Design: one std mutex over the whole store, held to look up, insert or move an entry,
//! never across an `.await`; messages are sent after it is released. A task's progress
//! goes out through its [`ProgressThrottle`], which holds the attached connections (lock
//! order: the store, then the throttle; the throttle never calls the store). An attach is
//! done in two steps, [`ResultStore::peek`] and then [`ResultStore::attach`], so that the
//! answer (`attached` or `accepted`) is queued for the client before anything about the
//! task can reach it.

use std::collections::{BTreeMap, HashMap, VecDeque};

// Task ids are the server's own counter, never a client's choice: a fast hash of them cannot
// be steered into collisions. The live tasks' map uses it; the kept results' index is
// ordered instead (`Kept::places`).
use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::progress::ProgressThrottle;
use crate::limits::Limits;
use crate::outbox::{FRAME_OVERHEAD, Outbox, Text};
use crate::protocol::Ref;

/// What an entry costs beyond its message and key: the maps' and the queue's entries, its
/// fields and their allocations (measured: about 500 bytes of resident memory per kept echo
/// result, whose message is about 120).
const ENTRY_OVERHEAD: u64 = FRAME_OVERHEAD as u64 + 320;

/// The bounds of the store.
#[derive(Debug, Clone, Copy)]
pub struct ResultBounds {
    /// How long a terminal message is kept after the task ended (`--result-ttl`).
    pub ttl: Duration,
    /// Bytes of kept terminal messages (`--result-bytes`); past it the oldest go.
    pub bytes: u64,
    /// Running tasks one connection may be attached to at once (`--max-attached`).
    pub attached_per_connection: usize,
}

/// Where a task stands, as [`crate::Ctx::task_record`] reports it.
#[derive(Debug, Clone)]
pub enum RunState {
    /// Admitted, waiting for a worker.
    Queued,
    /// Running attempt `attempt` (from 1).
    Running { attempt: u32 },
    /// Attempt `attempt - 1` failed; waiting out the backoff before attempt `attempt`.
    Retrying { attempt: u32 },
    /// Ended; its terminal message is kept.
    Ended {
        /// `finished` or the failure code.
        outcome: &'static str,
        /// The terminal message as the submitter got it (JSON text).
        message: Text,
        ended_at: SystemTime,
    },
}

impl RunState {
    /// The state's name in `attached`: `queued`, `running`, `retrying` or `ended`.
    pub fn name(&self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running { .. } => "running",
            RunState::Retrying { .. } => "retrying",
            RunState::Ended { .. } => "ended",
        }
    }
}

/// One task as the store knows it: read-only, for `attach` and for applications (an
/// operators' dashboard, say).
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub task_id: u64,
    pub task: String,
    /// The submitter's `ref`.
    pub reference: Option<Ref>,
    /// The idempotency key it was submitted with.
    pub key: Option<String>,
    pub limits: Limits,
    pub state: RunState,
}

/// The store's size, for `/metrics` and applications.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResultsSummary {
    /// Tasks admitted and not ended.
    pub live: usize,
    /// Terminal messages kept.
    pub kept: usize,
    /// Bytes they hold, out of `--result-bytes`.
    pub kept_bytes: u64,
    /// Idempotency keys in force.
    pub keys: usize,
}

/// What [`ResultStore::attach`] did.
#[derive(Debug)]
pub enum Attach {
    /// The connection will get the task's remaining progress and its terminal message.
    Watching,
    /// The connection gets these already: it submitted the task or is attached to it.
    AlreadyHears,
    /// The task has ended: here is its terminal message.
    Ended(Text),
    /// Unknown or expired.
    NotFound,
    /// The connection is attached to as many running tasks as it may be.
    AtLimit(usize),
}

/// Why a task could not be registered: its key already names a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyTaken {
    pub task_id: u64,
}

/// Entries evicted from the store, by reason, since the last call: for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Evicted {
    pub expired: u64,
    pub over_bytes: u64,
}

/// Every task from admission to the end of its kept result. See the module docs.
pub struct ResultStore {
    bounds: ResultBounds,
    /// Std mutex: short critical sections, never held across an `.await`.
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    live: FxHashMap<u64, Live>,
    kept: Kept,
    bytes: u64,
    keys: HashMap<String, u64>,
    /// Running tasks each connection is attached to (only non-zero counts are kept).
    attached: HashMap<u64, usize>,
    evicted: Evicted,
}

struct Live {
    record: Record,
    submitter: Option<u64>,
    state: RunState,
    /// The task's audience: the submitter and the attached connections.
    audience: Arc<ProgressThrottle>,
}

/// The kept results, in the order their tasks ended, and where each one is by task id.
///
/// Results leave only from the front (expiry and eviction both take the oldest), so they
/// live in one queue, in order: the oldest is read without a lookup, and the index holds
/// an id and a place a task rather than the whole entry. Under load it holds hundreds of
/// thousands: with the entries in a hash map, the lookups of every task's end missed the
/// cache (the store was 7% of the echo server's CPU, docs/PERFORMANCE.md).
#[derive(Default)]
struct Kept {
    queue: VecDeque<(u64, Ended)>,
    /// Task id -> its place, counted from the first result ever kept. Ordered by id, not
    /// hashed: ids are handed out in order and tasks mostly end in it, so a new result's id
    /// goes in at the map's high end and the oldest one's comes out near its low end, both
    /// on paths of the tree that the last task's insert and removal left in the cache. In a
    /// hash map of hundreds of thousands, each of them was a cache miss (over half of `end`'s
    /// own time, docs/PERFORMANCE.md).
    places: BTreeMap<u64, u64>,
    /// The place of the queue's front.
    first: u64,
}

impl Kept {
    fn get(&self, task_id: u64) -> Option<&Ended> {
        let place = *self.places.get(&task_id)?;
        let index = usize::try_from(place - self.first).ok()?;
        self.queue.get(index).map(|(_, ended)| ended)
    }

    fn oldest(&self) -> Option<&Ended> {
        self.queue.front().map(|(_, ended)| ended)
    }

    /// Keeps the result of a task that just ended (task ids are never reused).
    fn push(&mut self, task_id: u64, ended: Ended) {
        self.places
            .insert(task_id, self.first + self.queue.len() as u64);
        self.queue.push_back((task_id, ended));
    }

    fn pop_oldest(&mut self) -> Option<(u64, Ended)> {
        let (task_id, ended) = self.queue.pop_front()?;
        self.first += 1;
        self.places.remove(&task_id);
        Some((task_id, ended))
    }

    fn len(&self) -> usize {
        self.queue.len()
    }

    /// Oldest first.
    fn iter(&self) -> impl Iterator<Item = (u64, &Ended)> {
        self.queue.iter().map(|(task_id, ended)| (*task_id, ended))
    }
}

struct Ended {
    record: Record,
    outcome: &'static str,
    message: Text,
    ended_at: SystemTime,
    expires: Instant,
    bytes: u64,
}

/// What every entry keeps about its task.
#[derive(Clone)]
struct Record {
    task: Arc<str>,
    reference: Option<Ref>,
    key: Option<String>,
    limits: Limits,
}

/// A task registered in the store: dropping it before [`ResultStore::end`] (a task that
/// never ran, a `task_wait` that timed out) forgets the task and frees its key.
pub struct Tracked {
    store: Arc<ResultStore>,
    task_id: u64,
    ended: bool,
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("task_id", &self.task_id)
            .finish()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.ended {
            self.store.forget(self.task_id);
        }
    }
}

/// A new task for [`ResultStore::open`].
pub struct Opening<'a> {
    pub task_id: u64,
    pub task: &'a Arc<str>,
    pub reference: Option<&'a Ref>,
    pub key: Option<&'a str>,
    pub limits: Limits,
    pub submitter: Option<u64>,
    pub audience: Arc<ProgressThrottle>,
}

impl ResultStore {
    pub fn new(bounds: ResultBounds) -> ResultStore {
        ResultStore {
            bounds,
            inner: Mutex::default(),
        }
    }

    /// The task that `key` names, if one is queued, running or kept.
    pub fn task_for_key(&self, key: &str) -> Option<u64> {
        let inner = self.lock_at(Instant::now());
        inner.keys.get(key).copied()
    }

    /// Registers an admitted task, or says which task its key already names.
    pub fn open(self: &Arc<Self>, task: Opening<'_>) -> Result<Tracked, KeyTaken> {
        let mut inner = self.lock_at(Instant::now());
        if let Some(key) = task.key {
            if let Some(&task_id) = inner.keys.get(key) {
                return Err(KeyTaken { task_id });
            }
            inner.keys.insert(key.to_owned(), task.task_id);
        }
        inner.live.insert(
            task.task_id,
            Live {
                record: Record {
                    task: Arc::clone(task.task),
                    reference: task.reference.cloned(),
                    key: task.key.map(str::to_owned),
                    limits: task.limits,
                },
                submitter: task.submitter,
                state: RunState::Queued,
                audience: task.audience,
            },
        );
        Ok(Tracked {
            store: Arc::clone(self),
            task_id: task.task_id,
            ended: false,
        })
    }

    /// Records that the task is running attempt `attempt`.
    pub fn running(&self, task_id: u64, attempt: u32) {
        self.set_state(task_id, RunState::Running { attempt });
    }

    /// Records that the task waits out a backoff before attempt `attempt`.
    pub fn retrying(&self, task_id: u64, attempt: u32) {
        self.set_state(task_id, RunState::Retrying { attempt });
    }

    fn set_state(&self, task_id: u64, state: RunState) {
        if let Some(live) = self.lock().live.get_mut(&task_id) {
            live.state = state;
        }
    }

    /// The task as it stands, if it is known and not expired.
    pub fn peek(&self, task_id: u64) -> Option<TaskRecord> {
        let inner = self.lock_at(Instant::now());
        if let Some(live) = inner.live.get(&task_id) {
            return Some(live.record.to_task(task_id, live.state.clone()));
        }
        inner.kept.get(task_id).map(|ended| ended.to_task(task_id))
    }

    /// Every task known, live ones first, then kept ones oldest first.
    pub fn records(&self) -> Vec<TaskRecord> {
        let inner = self.lock_at(Instant::now());
        let mut records: Vec<TaskRecord> = inner
            .live
            .iter()
            .map(|(&id, live)| live.record.to_task(id, live.state.clone()))
            .collect();
        records.sort_by_key(|record| record.task_id);
        records.extend(inner.kept.iter().map(|(id, ended)| ended.to_task(id)));
        records
    }

    /// The task, if `outbox` may attach to it: the first step of an attach (see the module
    /// docs). `Err` is [`Attach::NotFound`] or [`Attach::AtLimit`].
    pub fn prepare_attach(&self, task_id: u64, outbox: &Outbox) -> Result<TaskRecord, Attach> {
        let inner = self.lock_at(Instant::now());
        if let Some(ended) = inner.kept.get(task_id) {
            return Ok(ended.to_task(task_id));
        }
        let Some(live) = inner.live.get(&task_id) else {
            return Err(Attach::NotFound);
        };
        let connection = outbox.id();
        let hears = live.submitter == Some(connection) || live.audience.is_watching(connection);
        let attached = inner.attached.get(&connection).copied().unwrap_or(0);
        let limit = self.bounds.attached_per_connection;
        if !hears && attached >= limit {
            return Err(Attach::AtLimit(limit));
        }
        Ok(live.record.to_task(task_id, live.state.clone()))
    }

    /// Attaches `outbox` to task `task_id`, the second step: see [`Attach`].
    pub fn attach(&self, task_id: u64, outbox: &Outbox) -> Attach {
        let mut inner = self.lock_at(Instant::now());
        if let Some(ended) = inner.kept.get(task_id) {
            return Attach::Ended(ended.message.clone());
        }
        let connection = outbox.id();
        let attached = inner.attached.get(&connection).copied().unwrap_or(0);
        let Some(live) = inner.live.get(&task_id) else {
            return Attach::NotFound;
        };
        if live.submitter == Some(connection) || live.audience.is_watching(connection) {
            return Attach::AlreadyHears;
        }
        let limit = self.bounds.attached_per_connection;
        if attached >= limit {
            return Attach::AtLimit(limit);
        }
        live.audience.watch(outbox.clone());
        *inner.attached.entry(connection).or_default() += 1;
        Attach::Watching
    }

    /// Records a task's end with its terminal message, and returns the connections attached
    /// to it, which are owed that message.
    pub fn end(&self, tracked: &mut Tracked, outcome: &'static str, message: Text) -> Vec<Outbox> {
        tracked.ended = true;
        let task_id = tracked.task_id;
        // Both clocks read before the lock (see `lock_at`).
        let (now, ended_at) = (Instant::now(), SystemTime::now());
        let mut inner = self.lock_at(now);
        let Some(live) = inner.live.remove(&task_id) else {
            return Vec::new();
        };
        let watchers = live.audience.take_watchers();
        release_attached(&mut inner, &watchers);
        let key_bytes = live.record.key.as_ref().map_or(0, |key| key.len() as u64);
        let bytes = message.as_str().len() as u64 + key_bytes + ENTRY_OVERHEAD;
        if bytes > self.bounds.bytes || self.bounds.ttl.is_zero() {
            // Too big to keep at all: the key goes with it.
            inner.evicted.over_bytes += 1;
            forget_key(&mut inner, live.record.key.as_deref(), task_id);
            return watchers;
        }
        inner.bytes += bytes;
        inner.kept.push(
            task_id,
            Ended {
                record: live.record,
                outcome,
                message,
                ended_at,
                expires: now + self.bounds.ttl,
                bytes,
            },
        );
        while inner.bytes > self.bounds.bytes && drop_oldest(&mut inner) {
            inner.evicted.over_bytes += 1;
        }
        watchers
    }

    /// Forgets a task that ended without [`ResultStore::end`].
    fn forget(&self, task_id: u64) {
        let mut inner = self.lock();
        if let Some(live) = inner.live.remove(&task_id) {
            let watchers = live.audience.take_watchers();
            release_attached(&mut inner, &watchers);
            forget_key(&mut inner, live.record.key.as_deref(), task_id);
        }
    }

    /// The store's size now; expired entries are dropped first.
    pub fn summary(&self) -> ResultsSummary {
        let inner = self.lock_at(Instant::now());
        ResultsSummary {
            live: inner.live.len(),
            kept: inner.kept.len(),
            kept_bytes: inner.bytes,
            keys: inner.keys.len(),
        }
    }

    /// Evictions since the last call.
    pub fn take_evicted(&self) -> Evicted {
        std::mem::take(&mut self.lock().evicted)
    }

    /// Drops the kept results whose time is up (the oldest end first, so they expire in
    /// order).
    fn expire(&self, inner: &mut Inner, now: Instant) {
        while inner
            .kept
            .oldest()
            .is_some_and(|oldest| oldest.expires <= now)
        {
            drop_oldest(inner);
            inner.evicted.expired += 1;
        }
    }

    /// The store, locked, with what expired by `now` dropped. `now` is read by the caller,
    /// before the lock: the network thread and every task thread take this lock, and a clock
    /// read was the slowest part of what it guarded.
    fn lock_at(&self, now: Instant) -> MutexGuard<'_, Inner> {
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        inner
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Poisoning needs a panic while the lock is held; the maps stay usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Drops the oldest kept result, with its key; false if none is kept.
fn drop_oldest(inner: &mut Inner) -> bool {
    let Some((task_id, ended)) = inner.kept.pop_oldest() else {
        return false;
    };
    inner.bytes -= ended.bytes;
    forget_key(inner, ended.record.key.as_deref(), task_id);
    true
}

fn forget_key(inner: &mut Inner, key: Option<&str>, task_id: u64) {
    if let Some(key) = key
        && inner.keys.get(key) == Some(&task_id)
    {
        inner.keys.remove(key);
    }
}

fn release_attached(inner: &mut Inner, watchers: &[Outbox]) {
    for watcher in watchers {
        if let Some(count) = inner.attached.get_mut(&watcher.id()) {
            *count -= 1;
            if *count == 0 {
                inner.attached.remove(&watcher.id());
            }
        }
    }
}

impl Record {
    fn to_task(&self, task_id: u64, state: RunState) -> TaskRecord {
        TaskRecord {
            task_id,
            task: self.task.to_string(),
            reference: self.reference.clone(),
            key: self.key.clone(),
            limits: self.limits,
            state,
        }
    }
}

impl Ended {
    fn to_task(&self, task_id: u64) -> TaskRecord {
        self.record.to_task(
            task_id,
            RunState::Ended {
                outcome: self.outcome,
                message: self.message.clone(),
                ended_at: self.ended_at,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outboxes;

    fn store(bytes: u64, ttl: Duration) -> Arc<ResultStore> {
        Arc::new(ResultStore::new(ResultBounds {
            ttl,
            bytes,
            attached_per_connection: 1,
        }))
    }

    fn open(
        store: &Arc<ResultStore>,
        outboxes: &Outboxes,
        id: u64,
        key: Option<&str>,
    ) -> Result<Tracked, KeyTaken> {
        let peer = "127.0.0.1:1".parse().unwrap();
        let (outbox, _drain) = outboxes.open(peer, peer.ip());
        store.open(Opening {
            task_id: id,
            task: &"t".into(),
            reference: None,
            key,
            limits: Limits {
                timeout_ms: 1,
                fuel: 1,
                memory_bytes: 1,
            },
            submitter: Some(outbox.id()),
            audience: Arc::new(ProgressThrottle::new(Some(outbox), id, "t".into(), None)),
        })
    }

    #[test]
    fn the_oldest_results_go_first_and_take_their_keys() {
        let outboxes = Outboxes::new(1 << 20);
        let message = || Text::from("x".repeat(100));
        let one_entry = 100 + ENTRY_OVERHEAD + 1;
        let store = store(2 * one_entry, Duration::from_secs(60));
        for id in 1..=3 {
            let mut tracked = open(&store, &outboxes, id, Some(&id.to_string())).unwrap();
            store.end(&mut tracked, "finished", message());
        }
        assert!(store.peek(1).is_none(), "the oldest went");
        assert!(store.task_for_key("1").is_none(), "with its key");
        assert!(matches!(
            store.peek(3).unwrap().state,
            RunState::Ended { .. }
        ));
        assert_eq!(store.summary().kept, 2);
        assert_eq!(store.take_evicted().over_bytes, 1);
    }

    /// Kept results are found by id after older ones have gone, whatever order the tasks
    /// ended in, and listed oldest first.
    #[test]
    fn kept_results_are_found_by_id_after_the_oldest_went() {
        let outboxes = Outboxes::new(1 << 20);
        let message = |id: u64| Text::from(format!("{id:0100}"));
        let one_entry = 100 + ENTRY_OVERHEAD + 1;
        let store = store(3 * one_entry, Duration::from_secs(60));
        let mut tracked: Vec<Tracked> = (1..=6)
            .map(|id| open(&store, &outboxes, id, None).unwrap())
            .collect();
        // They end out of the order they were opened in: 4, 2, 6, 1, 5, 3.
        for index in [3, 1, 5, 0, 4, 2] {
            let id = tracked[index].task_id;
            store.end(&mut tracked[index], "finished", message(id));
        }
        for gone in [4, 2, 6] {
            assert!(
                store.peek(gone).is_none(),
                "task {gone} was among the oldest"
            );
        }
        for kept in [1, 5, 3] {
            match store.peek(kept).map(|record| record.state) {
                Some(RunState::Ended { message: text, .. }) => {
                    assert_eq!(text.as_str(), message(kept).as_str(), "task {kept}");
                }
                other => panic!("task {kept}: {other:?}"),
            }
        }
        let listed: Vec<u64> = store.records().iter().map(|r| r.task_id).collect();
        assert_eq!(listed, [1, 5, 3], "oldest first");
        assert_eq!(store.take_evicted().over_bytes, 3);
    }

    #[test]
    fn a_key_names_one_task_until_it_is_forgotten() {
        let outboxes = Outboxes::new(1 << 20);
        let store = store(1 << 20, Duration::from_secs(60));
        let first = open(&store, &outboxes, 1, Some("k")).unwrap();
        assert_eq!(
            open(&store, &outboxes, 2, Some("k")).unwrap_err(),
            KeyTaken { task_id: 1 }
        );
        drop(first);
        assert!(
            store.peek(1).is_none(),
            "a task dropped before its end is forgotten"
        );
        open(&store, &outboxes, 3, Some("k")).expect("the key is free again");
    }

    #[test]
    fn results_expire() {
        let outboxes = Outboxes::new(1 << 20);
        let store = store(1 << 20, Duration::from_millis(1));
        let mut tracked = open(&store, &outboxes, 1, Some("k")).unwrap();
        store.end(&mut tracked, "finished", Text::from("{}".to_owned()));
        std::thread::sleep(Duration::from_millis(5));
        assert!(store.peek(1).is_none());
        assert!(store.task_for_key("k").is_none());
        assert_eq!(store.take_evicted().expired, 1);
    }
}
