//! Publish and subscribe: which connections listen to which topics, and the [`Publisher`]
//! the capabilities publish through. Clients `subscribe` and `unsubscribe`; a task's
//! publish reaches every subscriber of its topic as a `published` message.
//!
//! A published message is offered, never awaited, like a broadcast: a subscriber whose
//! outbox (`--outbox-bytes`) is full misses it, counted in `/metrics`, and nobody else
//! waits for it. A connection holds at most [`MAX_TOPICS_PER_CONNECTION`] topics.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use serde_json::value::RawValue;

use crate::capabilities::{Fanout, Publisher};
use crate::outbox::{Outbox, Text};
use crate::protocol::Reply;

/// Most topics one connection may subscribe to at once.
pub const MAX_TOPICS_PER_CONNECTION: usize = 64;

/// Why a `subscribe` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeRefusal {
    BadTopic(String),
    TooManyTopics,
}

/// The subscriptions of every open connection. Std mutex: held to look up or change the
/// maps, never across an `.await`.
#[derive(Debug, Default)]
pub struct Topics {
    inner: Mutex<Subscriptions>,
}

#[derive(Debug, Default)]
struct Subscriptions {
    /// Topic → the subscribed connections' outboxes, by connection id.
    by_topic: HashMap<String, HashMap<u64, Outbox>>,
    /// Connection id → its topics.
    by_connection: HashMap<u64, BTreeSet<String>>,
}

impl Topics {
    /// Subscribes `client` to `topic`; subscribing again is no change.
    pub fn subscribe(&self, client: &Outbox, topic: &str) -> Result<(), SubscribeRefusal> {
        crate::capabilities::check_topic(topic).map_err(SubscribeRefusal::BadTopic)?;
        let mut inner = self.lock();
        let topics = inner.by_connection.entry(client.id()).or_default();
        if !topics.contains(topic) && topics.len() >= MAX_TOPICS_PER_CONNECTION {
            return Err(SubscribeRefusal::TooManyTopics);
        }
        topics.insert(topic.to_owned());
        inner
            .by_topic
            .entry(topic.to_owned())
            .or_default()
            .insert(client.id(), client.clone());
        Ok(())
    }

    /// Unsubscribes connection `id` from `topic`; returns whether it was subscribed.
    pub fn unsubscribe(&self, id: u64, topic: &str) -> bool {
        let mut inner = self.lock();
        let was = inner
            .by_connection
            .get_mut(&id)
            .is_some_and(|topics| topics.remove(topic));
        if inner.by_connection.get(&id).is_some_and(BTreeSet::is_empty) {
            inner.by_connection.remove(&id);
        }
        if let Some(subscribers) = inner.by_topic.get_mut(topic) {
            subscribers.remove(&id);
            if subscribers.is_empty() {
                inner.by_topic.remove(topic);
            }
        }
        was
    }

    /// Forgets every subscription of a connection that closed.
    pub fn leave(&self, id: u64) {
        let mut inner = self.lock();
        for topic in inner.by_connection.remove(&id).unwrap_or_default() {
            if let Some(subscribers) = inner.by_topic.get_mut(&topic) {
                subscribers.remove(&id);
                if subscribers.is_empty() {
                    inner.by_topic.remove(&topic);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Subscriptions> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Publisher for Topics {
    fn publish(&self, topic: &str, data: &RawValue) -> Fanout {
        let subscribers: Vec<Outbox> = match self.lock().by_topic.get(topic) {
            Some(subscribers) => subscribers.values().cloned().collect(),
            None => return Fanout::default(),
        };
        let Some(text) = Text::json(&Reply::Published { topic, data }) else {
            return Fanout::default();
        };
        let mut fanout = Fanout::default();
        for outbox in subscribers {
            if outbox.offer(text.clone()) {
                fanout.reached += 1;
            } else if !outbox.is_closed() {
                fanout.missed += 1;
            }
        }
        fanout
    }
}
