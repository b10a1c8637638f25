//! A task's progress on its way to the submitter: at most one `progress` message per
//! [`PROGRESS_INTERVAL`], so a chatty module cannot flood its client. A report that comes too
//! soon is held, not lost: the latest one held goes out when the next may, or just before the
//! task's terminal message, so the client always sees where the task got to.
//!
//! The same reports go to the connections attached to the task (`attach`, or a repeated
//! `key`); the throttle holds them until the task ends.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::outbox::{Outbox, Text};
use crate::protocol::{Ref, Reply};
use crate::sandbox::ProgressSink;

/// The shortest time between two `progress` messages of one task.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// The progress channel of one task: to its submitter, if a client submitted it, and to the
/// connections attached to it.
#[derive(Debug)]
pub struct ProgressThrottle {
    submitter: Option<Outbox>,
    task_id: u64,
    /// The task's name, for `started`.
    task: std::sync::Arc<str>,
    reference: Option<Ref>,
    /// Std mutex: held to compare times and swap the held report, never across an await.
    state: Mutex<Throttle>,
}

#[derive(Debug, Default)]
struct Throttle {
    last_sent: Option<Instant>,
    /// The latest report that came too soon after the previous one.
    held: Option<(f64, String)>,
    /// Connections attached to the task (not its submitter), until it ends.
    watchers: Vec<Outbox>,
}

impl ProgressThrottle {
    pub fn new(
        submitter: Option<Outbox>,
        task_id: u64,
        task: std::sync::Arc<str>,
        reference: Option<Ref>,
    ) -> Self {
        ProgressThrottle {
            submitter,
            task_id,
            task,
            reference,
            state: Mutex::new(Throttle::default()),
        }
    }

    /// A sink for the sandbox that reports through this throttle.
    pub fn sink(self: &std::sync::Arc<Self>) -> ProgressSink {
        let throttle = std::sync::Arc::clone(self);
        ProgressSink::new(move |fraction, message| throttle.report(fraction, message))
    }

    /// Sends the report now if the interval has passed, else holds it. A report the outbox had
    /// no room for is held too, so the last one still goes out before the task's end.
    pub fn report(&self, fraction: f64, message: &str) {
        {
            let mut state = self.lock();
            let now = Instant::now();
            if state
                .last_sent
                .is_some_and(|at| now.duration_since(at) < PROGRESS_INTERVAL)
            {
                state.held = Some((fraction, message.to_owned()));
                return;
            }
            state.last_sent = Some(now);
            state.held = None;
        }
        self.send(fraction, message);
    }

    /// Tells the submitter that attempt `attempt` of the task begins: `started`. Offered, not
    /// awaited, so a client that does not read never holds a worker idle; it may then miss
    /// it, but a later `progress` or the terminal message says the same and more.
    pub fn started(&self, attempt: u32) {
        let reply = Reply::Started {
            task_id: self.task_id,
            task: &self.task,
            reference: self.reference.as_ref(),
            attempt,
        };
        // A client that misses it learns the same from what follows (see above).
        let _ = self.offer_to_audience(Text::from(reply.to_json()));
    }

    /// Whether connection `id` is attached to the task.
    pub fn is_watching(&self, id: u64) -> bool {
        self.lock().watchers.iter().any(|w| w.id() == id)
    }

    /// Attaches a connection: it gets the task's reports from now on.
    pub fn watch(&self, outbox: Outbox) {
        self.lock().watchers.push(outbox);
    }

    /// Detaches every attached connection, at the task's end: they are owed its terminal
    /// message.
    pub fn take_watchers(&self) -> Vec<Outbox> {
        std::mem::take(&mut self.lock().watchers)
    }

    /// Offers `text` to the attached connections and the submitter. The watchers are copied
    /// out of the lock, which allocates nothing when none is attached (nearly every task):
    /// this runs for every task's `started`. Returns whether every one of them had room for
    /// it.
    fn offer_to_audience(&self, text: Text) -> bool {
        let watchers = self.lock().watchers.clone();
        let mut all_took_it = true;
        for watcher in &watchers {
            all_took_it &= watcher.offer(text.clone());
        }
        if let Some(submitter) = &self.submitter {
            all_took_it &= submitter.offer(text);
        }
        all_took_it
    }

    /// Sends the held report, if any, waiting for room in the outbox: called before the
    /// task's terminal message, so the client always sees where the task got to.
    pub async fn flush(&self) {
        let held = self.lock().held.take();
        if let Some((fraction, message)) = held {
            let text = self.text(fraction, &message);
            // Attached connections get it if they have room: none of them may hold up the
            // submitter's terminal message.
            for watcher in self.lock().watchers.clone() {
                watcher.offer(text.clone());
            }
            if let Some(submitter) = &self.submitter {
                submitter.send_text(text).await;
            }
        }
    }

    fn send(&self, fraction: f64, message: &str) {
        // Progress is superseded by the next report: a client not reading misses some, but
        // not the last (see `flush`).
        let text = self.text(fraction, message);
        if !self.offer_to_audience(text) {
            self.lock().held = Some((fraction, message.to_owned()));
        }
    }

    fn text(&self, fraction: f64, message: &str) -> Text {
        let reply = Reply::Progress {
            task_id: self.task_id,
            reference: self.reference.as_ref(),
            progress: fraction,
            message,
        };
        Text::from(reply.to_json())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Frame, Outboxes};

    #[tokio::test]
    async fn the_last_report_survives_a_full_outbox() {
        let outboxes = Outboxes::new(400);
        let peer = "127.0.0.1:1".parse().unwrap();
        let (outbox, mut drain) = outboxes.open(peer, "127.0.0.1".parse().unwrap());
        // Something else fills the outbox: the report finds no room and is dropped.
        assert!(outbox.offer(Text::from("x".repeat(300))));
        let throttle = ProgressThrottle::new(Some(outbox), 7, "t".into(), None);
        throttle.report(1.0, "done");
        let filler = drain.next().await.unwrap();
        assert!(drain.try_next().is_none(), "the report did not fit");
        drain.written(filler.cost);
        // Before the terminal message, the dropped report goes out after all.
        throttle.flush().await;
        let Frame::Text(text) = drain.next().await.unwrap().frame else {
            panic!("a text frame")
        };
        assert!(text.as_str().contains("\"done\""), "{}", text.as_str());
    }
}
