//! Worker permits (`--task-workers` of them), handed out in turn: first across client
//! addresses, then across each address's connections.
//!
//! Why not one first-come, first-served queue: then a connection with a backlog of
//! thousands of tasks makes every other connection's task wait behind all of them. Here
//! each connection waits in a line of its own, and a freed permit goes to the next address
//! in turn, and within it to the next connection in turn (round robin at both levels). A
//! connection's tasks still start in the order it sent them; a connection with one task
//! waits for one permit, not for another's backlog; and a client that opens many
//! connections from one address gets no more turns than a client with one.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// Where a waiting task stands: its address's line, and its connection's line within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub address: IpAddr,
    pub connection: u64,
}

/// The worker permits and the lines of tasks waiting for one.
pub struct Workers {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    free: usize,
    /// Each address with waiting tasks, its connections' lines. Exists only while not empty.
    addresses: HashMap<IpAddr, AddressLine>,
    /// The addresses with waiting tasks, in the order their turn comes.
    turns: VecDeque<IpAddr>,
    next_waiter: u64,
}

/// One address's waiting tasks.
#[derive(Default)]
struct AddressLine {
    /// Each connection's waiting tasks, oldest first, each with its waiter id. A line exists
    /// only while not empty.
    lines: HashMap<u64, VecDeque<(u64, oneshot::Sender<Permit>)>>,
    /// The connections with a line, in the order their turn comes.
    turns: VecDeque<u64>,
}

impl Inner {
    /// Takes the next waiter in turn, if any.
    fn next_waiter(&mut self) -> Option<oneshot::Sender<Permit>> {
        let address = self.turns.pop_front()?;
        let line = self.addresses.get_mut(&address).expect("a turn has a line");
        let connection = line
            .turns
            .pop_front()
            .expect("an address line is never empty");
        let waiting = line.lines.get_mut(&connection).expect("a turn has a line");
        let (_, give) = waiting.pop_front().expect("a line is never empty");
        if waiting.is_empty() {
            line.lines.remove(&connection);
        } else {
            line.turns.push_back(connection);
        }
        if line.lines.is_empty() {
            self.addresses.remove(&address);
        } else {
            self.turns.push_back(address);
        }
        Some(give)
    }

    /// Removes waiter `id` of `place`, if it is still waiting.
    fn leave(&mut self, place: Place, id: u64) {
        let Some(line) = self.addresses.get_mut(&place.address) else {
            return;
        };
        if let Some(waiting) = line.lines.get_mut(&place.connection) {
            waiting.retain(|(waiter, _)| *waiter != id);
            if waiting.is_empty() {
                line.lines.remove(&place.connection);
                line.turns.retain(|c| *c != place.connection);
            }
        }
        if line.lines.is_empty() {
            self.addresses.remove(&place.address);
            self.turns.retain(|a| *a != place.address);
        }
    }
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
                addresses: HashMap::new(),
                turns: VecDeque::new(),
                next_waiter: 0,
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

    /// A task's turn at `place`, taken now: a free permit, or its place at the end of its
    /// connection's line. Taking it where tasks are started, rather than in each task's own
    /// future, keeps a connection's tasks in the order it sent them whichever thread polls
    /// them first. Dropping the ticket gives up the place (or the permit).
    pub fn join(&self, place: Place) -> Ticket {
        let mut inner = lock(&self.inner);
        if inner.free > 0 {
            inner.free -= 1;
            return Ticket::Now(self.permit());
        }
        let (give, handed) = oneshot::channel();
        inner.next_waiter += 1;
        let id = inner.next_waiter;
        if !inner.addresses.contains_key(&place.address) {
            inner.turns.push_back(place.address);
        }
        let line = inner.addresses.entry(place.address).or_default();
        if !line.lines.contains_key(&place.connection) {
            line.turns.push_back(place.connection);
        }
        line.lines
            .entry(place.connection)
            .or_default()
            .push_back((id, give));
        Ticket::InLine(Waiting {
            handed,
            waiter: Waiter {
                workers: Arc::clone(&self.inner),
                place,
                id,
                served: false,
            },
        })
    }

    fn permit(&self) -> Permit {
        Permit {
            workers: Some(Arc::clone(&self.inner)),
        }
    }
}

/// A task's turn for a worker (see [`Workers::join`]).
pub enum Ticket {
    /// A permit was free.
    Now(Permit),
    /// In line: the permit comes when the task's turn does.
    InLine(Waiting),
}

/// A task waiting in its line for a permit.
pub struct Waiting {
    handed: oneshot::Receiver<Permit>,
    waiter: Waiter,
}

impl Waiting {
    /// The permit, once the task's turn comes. Dropping the future gives up the place.
    pub async fn permit(mut self) -> Permit {
        let permit = (&mut self.handed)
            .await
            .expect("a waiting task's sender is only dropped once it has sent");
        // Served: its entry is gone already.
        self.waiter.served = true;
        permit
    }
}

/// A task's place in its line; dropped unserved (the task was cancelled), it leaves the line.
struct Waiter {
    workers: Arc<Mutex<Inner>>,
    place: Place,
    id: u64,
    served: bool,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if !self.served {
            lock(&self.workers).leave(self.place, self.id);
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
            let Some(give) = inner.next_waiter() else {
                inner.free += 1;
                return;
            };
            let permit = Permit {
                workers: Some(Arc::clone(&workers)),
            };
            match give.send(permit) {
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

    /// A permit for a task at `place`: at once if one is free, else when its turn comes.
    async fn take(workers: &Workers, place: Place) -> Permit {
        match workers.join(place) {
            Ticket::Now(permit) => permit,
            Ticket::InLine(waiting) => waiting.permit().await,
        }
    }

    fn place(address: &str, connection: u64) -> Place {
        Place {
            address: address.parse().unwrap(),
            connection,
        }
    }

    /// Turns taken in a connection's order are served in that order, whichever task's
    /// future is polled first (as two runtime threads may).
    #[tokio::test]
    async fn turns_are_served_in_the_order_they_were_taken() {
        let workers = Workers::new(1);
        let held = workers.try_take().unwrap();
        let first = workers.join(place("10.0.0.1", 1));
        let second = workers.join(place("10.0.0.1", 1));
        let (Ticket::InLine(first), Ticket::InLine(second)) = (first, second) else {
            panic!("no permit was free");
        };
        let second = tokio::spawn(second.permit());
        tokio::task::yield_now().await;
        drop(held);
        let first = tokio::time::timeout(Duration::from_secs(5), first.permit())
            .await
            .expect("the first turn is served first");
        assert!(!second.is_finished(), "the second waits for the first");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), second).await;
        assert!(second.is_ok(), "then the second is served");
    }

    /// Queues tasks at `places` behind one held permit, frees it, and returns the order in
    /// which the tasks started.
    async fn start_order(places: &[(Place, &'static str)]) -> Vec<&'static str> {
        let workers = Arc::new(Workers::new(1));
        let held = workers.try_take().unwrap();
        let (order, mut started) = tokio::sync::mpsc::unbounded_channel();
        for &(place, task) in places {
            let (workers, order) = (Arc::clone(&workers), order.clone());
            tokio::spawn(async move {
                let permit = take(&workers, place).await;
                order.send(task).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(permit);
            });
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(held);
        let mut seen = Vec::new();
        for _ in 0..places.len() {
            seen.push(started.recv().await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(workers.free(), 1, "the last task gave its permit back");
        seen
    }

    #[tokio::test]
    async fn freed_permits_go_to_connections_in_turn() {
        let a = "192.0.2.1";
        // Connection 1 queues three tasks, then connection 2 (same address) one.
        let seen = start_order(&[
            (place(a, 1), "1a"),
            (place(a, 1), "1b"),
            (place(a, 1), "1c"),
            (place(a, 2), "2a"),
        ])
        .await;
        assert_eq!(
            seen,
            ["1a", "2a", "1b", "1c"],
            "connection 2 waits for one turn"
        );
    }

    #[tokio::test]
    async fn many_connections_from_one_address_get_one_turn() {
        let (a, b) = ("192.0.2.1", "198.51.100.2");
        // Address a opens three connections with two tasks each; address b has one task.
        let seen = start_order(&[
            (place(a, 1), "a1"),
            (place(a, 2), "a2"),
            (place(a, 3), "a3"),
            (place(a, 1), "a1'"),
            (place(b, 9), "b"),
        ])
        .await;
        assert_eq!(
            seen[..2],
            ["a1", "b"],
            "b waits for one turn, not for a's connections"
        );
    }

    #[tokio::test]
    async fn a_task_that_stops_waiting_does_not_keep_its_permit_or_its_entry() {
        let workers = Arc::new(Workers::new(1));
        let held = workers.try_take().unwrap();
        let waiting = tokio::spawn({
            let workers = Arc::clone(&workers);
            async move { take(&workers, place("192.0.2.1", 1)).await }
        });
        tokio::task::yield_now().await;
        waiting.abort();
        let _ = waiting.await;
        {
            let inner = lock(&workers.inner);
            assert!(
                inner.addresses.is_empty() && inner.turns.is_empty(),
                "a cancelled waiter leaves no entry behind"
            );
        }
        drop(held);
        assert_eq!(
            workers.free(),
            1,
            "the permit came back instead of going to nobody"
        );
    }
}
