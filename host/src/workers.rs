//! Worker permits (`--task-workers` of them), handed out in turn across connections.
//!
//! Why not one first-come, first-served queue: then a connection with a backlog of
//! thousands of tasks makes every other connection's task wait behind all of them. Here
//! each connection waits in a line of its own, and a freed permit goes to the next
//! connection in turn (round robin): a connection's tasks still start in the order it
//! sent them, and a connection with one task waits for one permit, not for another's
//! backlog.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// The worker permits and the lines of tasks waiting for one.
pub struct Workers {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    free: usize,
    /// Each waiting connection's line, oldest first. A line exists only while not empty.
    lines: HashMap<u64, VecDeque<oneshot::Sender<Permit>>>,
    /// The connections with a line, in the order their turn comes.
    turns: VecDeque<u64>,
}

/// One worker permit, held while a task runs; dropping it hands it to the next waiting task.
pub struct Permit {
    /// `None` only for a permit that never reached its taker (see `Drop`).
    workers: Option<Arc<Mutex<Inner>>>,
}

impl Workers {
    pub fn new(count: usize) -> Workers {
        Workers {
            inner: Arc::new(Mutex::new(Inner {
                free: count,
                lines: HashMap::new(),
                turns: VecDeque::new(),
            })),
        }
    }

    /// Workers nobody holds.
    pub fn free(&self) -> usize {
        lock(&self.inner).free
    }

    /// A free permit, if there is one now.
    pub fn try_take(&self) -> Option<Permit> {
        let mut inner = lock(&self.inner);
        if inner.free == 0 {
            return None;
        }
        inner.free -= 1;
        Some(self.permit())
    }

    /// A permit for a task of connection `owner`: at once if one is free, else when its turn
    /// comes. Dropping the future gives up the place in line.
    pub async fn take(&self, owner: u64) -> Permit {
        let handed = {
            let mut inner = lock(&self.inner);
            if inner.free > 0 {
                inner.free -= 1;
                return self.permit();
            }
            let (give, handed) = oneshot::channel();
            if !inner.lines.contains_key(&owner) {
                inner.turns.push_back(owner);
            }
            inner.lines.entry(owner).or_default().push_back(give);
            handed
        };
        // The sender lives in `inner` until it is used, and `inner` outlives `self`.
        handed
            .await
            .expect("a waiting task's sender is only dropped once it has sent")
    }

    fn permit(&self) -> Permit {
        Permit {
            workers: Some(Arc::clone(&self.inner)),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(workers) = self.workers.take() else {
            return;
        };
        let mut inner = lock(&workers);
        loop {
            let Some(owner) = inner.turns.pop_front() else {
                inner.free += 1;
                return;
            };
            let line = inner.lines.get_mut(&owner).expect("a turn has a line");
            let give = line.pop_front().expect("a line is never empty");
            if line.is_empty() {
                inner.lines.remove(&owner);
            } else {
                inner.turns.push_back(owner);
            }
            let slot = Permit {
                workers: Some(Arc::clone(&workers)),
            };
            match give.send(slot) {
                Ok(()) => return,
                // The task stopped waiting (cancelled): the permit goes to the next in turn.
                // Emptied so that its own drop does nothing while this lock is held.
                Err(mut unsent) => {
                    unsent.workers = None;
                }
            }
        }
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Poisoning needs a panic while the lock is held; the counts stay usable.
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn freed_slots_go_to_connections_in_turn() {
        let slots = Arc::new(Workers::new(1));
        let held = slots.try_take().unwrap();
        assert!(slots.try_take().is_none());
        let (order, mut started) = tokio::sync::mpsc::unbounded_channel();
        // Connection 1 queues three tasks, then connection 2 one.
        for (owner, task) in [(1, "1a"), (1, "1b"), (1, "1c"), (2, "2a")] {
            let (slots, order) = (Arc::clone(&slots), order.clone());
            tokio::spawn(async move {
                let slot = slots.take(owner).await;
                order.send(task).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(slot);
            });
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(held);
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(started.recv().await.unwrap());
        }
        assert_eq!(
            seen,
            ["1a", "2a", "1b", "1c"],
            "connection 2 waits for one turn"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(slots.free(), 1, "the last task gave its slot back");
    }

    #[tokio::test]
    async fn a_task_that_stops_waiting_does_not_keep_its_slot() {
        let slots = Arc::new(Workers::new(1));
        let held = slots.try_take().unwrap();
        let waiting = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.take(1).await }
        });
        tokio::task::yield_now().await;
        waiting.abort();
        let _ = waiting.await;
        drop(held);
        assert_eq!(
            slots.free(),
            1,
            "the slot came back instead of going to nobody"
        );
    }
}
