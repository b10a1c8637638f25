//! The tasks this node follows for its connections, whichever node runs them: the
//! submitter's and the attached connections' outboxes, and the events on their way to them.
//!
//! Exactly one terminal message per task reaches each connection: the first terminal event
//! (from the runner, or read from the results bucket by the sweep) ends the entry, and any
//! later one (a task run twice, a redelivered event) finds no entry and is dropped.
//!
//! Design: one std mutex over the map, never held across an `.await`. Events for a task not
//! yet registered (they can overtake the publish ack that tells the submitter's node the
//! task's id) wait a few seconds in a bounded buffer.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tokio_util::sync::CancellationToken;

use crate::outbox::{Outbox, Text};
use crate::protocol::Ref;

/// How long events for an unknown task wait for it to be registered.
const EARLY_WAIT: Duration = Duration::from_secs(10);
/// Tasks whose early events are held at once; past it the oldest go.
const MAX_EARLY: usize = 10_000;
/// Events held for one task before it is registered (or while an `accepted` goes out).
const MAX_HELD_EVENTS: usize = 64;

/// One message about a task, as its runner sent it.
#[derive(Debug, Clone)]
pub(super) struct Event {
    pub text: Text,
    pub terminal: bool,
}

/// Who gets an event now.
pub(super) enum Route {
    /// A progress or `started`: offer it to each.
    Progress(Vec<Outbox>),
    /// The terminal message: owed to each, once.
    Terminal(Vec<Outbox>),
    /// Held or dropped.
    Nobody,
}

/// What is known of a followed task, for `attached`.
#[derive(Debug, Clone)]
pub(super) struct Known {
    pub task: String,
    pub reference: Option<Ref>,
    pub state: &'static str,
}

struct Followed {
    known: Known,
    audience: Vec<Outbox>,
    /// While an `accepted` or `attached` goes out: the events that arrive meanwhile.
    held: Option<Vec<Event>>,
    /// When the entry was made, or last swept.
    checked: Instant,
    /// Cancelled when the entry ends: the task's own subscription (an attach here to a task
    /// submitted elsewhere) stops.
    ended: CancellationToken,
}

#[derive(Default)]
struct Inner {
    tasks: FxHashMap<u64, Followed>,
    early: FxHashMap<u64, (Instant, Vec<Event>)>,
}

/// See the module docs.
#[derive(Default)]
pub(super) struct Following {
    inner: Mutex<Inner>,
}

impl Following {
    /// An event for task `task_id`: who gets it.
    pub fn route(&self, task_id: u64, event: Event) -> Route {
        let mut inner = self.lock();
        let Some(followed) = inner.tasks.get_mut(&task_id) else {
            hold_early(&mut inner, task_id, event);
            return Route::Nobody;
        };
        if let Some(held) = &mut followed.held {
            if held.len() < MAX_HELD_EVENTS || event.terminal {
                held.push(event);
            }
            return Route::Nobody;
        }
        if !event.terminal {
            if event.text.as_str().starts_with(r#"{"type":"started""#) {
                followed.known.state = "running";
            }
            return Route::Progress(followed.audience.clone());
        }
        let followed = inner.tasks.remove(&task_id).expect("looked up above");
        followed.ended.cancel();
        Route::Terminal(followed.audience)
    }

    /// Starts following task `task_id`, holding its events until [`Following::open`]; takes
    /// those that came early. `false` if it is followed already.
    pub fn begin(&self, task_id: u64, known: Known) -> Option<CancellationToken> {
        let mut inner = self.lock();
        if inner.tasks.contains_key(&task_id) {
            return None;
        }
        let early = inner
            .early
            .remove(&task_id)
            .map(|(_, events)| events)
            .unwrap_or_default();
        let ended = CancellationToken::new();
        inner.tasks.insert(
            task_id,
            Followed {
                known,
                audience: Vec::new(),
                held: Some(early),
                checked: Instant::now(),
                ended: ended.clone(),
            },
        );
        Some(ended)
    }

    /// Adds `client` to the task's audience once its answer went out, and gives it the
    /// events held meanwhile; `None` if the task is not followed (it ended since).
    pub fn open(&self, task_id: u64, client: &Outbox) -> Option<Vec<Event>> {
        let mut inner = self.lock();
        let followed = inner.tasks.get_mut(&task_id)?;
        followed.audience.push(client.clone());
        let held = followed.held.take().unwrap_or_default();
        if held.iter().any(|event| event.terminal) {
            // It ended while its answer went out: the entry goes, the events are the client's.
            if let Some(followed) = inner.tasks.remove(&task_id) {
                followed.ended.cancel();
            }
        }
        Some(held)
    }

    /// What is known of a followed task, if it is followed.
    pub fn known(&self, task_id: u64) -> Option<Known> {
        self.lock().tasks.get(&task_id).map(|f| f.known.clone())
    }

    /// Adds `client` to a followed task's audience: `false` if it is not followed.
    pub fn join(&self, task_id: u64, client: &Outbox) -> bool {
        let mut inner = self.lock();
        let Some(followed) = inner.tasks.get_mut(&task_id) else {
            return false;
        };
        if !followed.audience.iter().any(|o| o.id() == client.id()) {
            followed.audience.push(client.clone());
        }
        true
    }

    /// Ends a task's entry without an event (it is gone from the broker): its audience.
    pub fn end(&self, task_id: u64) -> Vec<Outbox> {
        match self.lock().tasks.remove(&task_id) {
            Some(followed) => {
                followed.ended.cancel();
                followed.audience
            }
            None => Vec::new(),
        }
    }

    /// The tasks not checked for `interval`, now marked checked: the sweep reads their
    /// results from the bucket, in case their terminal event was lost.
    pub fn due(&self, interval: Duration) -> Vec<u64> {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut due = Vec::new();
        for (&task_id, followed) in &mut inner.tasks {
            if followed.held.is_none() && now.duration_since(followed.checked) >= interval {
                followed.checked = now;
                due.push(task_id);
            }
        }
        inner
            .early
            .retain(|_, (since, _)| now.duration_since(*since) < EARLY_WAIT);
        due
    }

    /// Tasks followed now.
    pub fn len(&self) -> usize {
        self.lock().tasks.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Poisoning needs a panic while the lock is held; the map stays usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn hold_early(inner: &mut Inner, task_id: u64, event: Event) {
    let now = Instant::now();
    if inner.early.len() >= MAX_EARLY && !inner.early.contains_key(&task_id) {
        inner
            .early
            .retain(|_, (since, _)| now.duration_since(*since) < EARLY_WAIT);
        if inner.early.len() >= MAX_EARLY {
            return;
        }
    }
    let (_, events) = inner
        .early
        .entry(task_id)
        .or_insert_with(|| (now, Vec::new()));
    if events.len() < MAX_HELD_EVENTS || event.terminal {
        events.push(event);
    }
}

/// Sends a route's event: progress offered (a slow reader misses some), the terminal
/// message awaited apart, so that one slow connection holds up nobody else's.
pub(super) fn deliver(route: Route, text: Text) {
    match route {
        Route::Progress(audience) => {
            for outbox in audience {
                outbox.offer(text.clone());
            }
        }
        Route::Terminal(audience) => {
            tokio::spawn(async move {
                for outbox in audience {
                    // A closed connection cannot be told; it can attach again.
                    outbox.send_text(text.clone()).await;
                }
            });
        }
        Route::Nobody => {}
    }
}
