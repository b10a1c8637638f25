//! What travels through the broker: a task as a node queues it ([`Envelope`], the stream
//! message's body), and the subjects and headers the nodes agree on ([`Subjects`]).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::NatsSettings;
use crate::limits::Limits;
use crate::protocol::Ref;

/// Header on an event: `terminal` on a task's `finished` or `failed`, absent on the rest.
pub(super) const EVENT_HEADER: &str = "Taskhost-Event";
/// Header naming the node a broadcast or a publish came from: the node itself skips it.
pub(super) const NODE_HEADER: &str = "Taskhost-Node";
/// Header naming the topic of a publish.
pub(super) const TOPIC_HEADER: &str = "Taskhost-Topic";

/// A task on its way to whichever node pulls it: everything that node needs to run it and to
/// send its messages back. Its id is the stream sequence the broker gave it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Envelope {
    pub task: String,
    /// The module version accepted at submission (short hex SHA-256): only a node that has
    /// it runs the task.
    pub hash: String,
    pub input: Box<RawValue>,
    /// The effective limits, as `accepted` reported them.
    pub limits: Limits,
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Ref>,
    /// The node holding the submitter's connection: progress and the outcome go there.
    pub origin: String,
}

/// The names the nodes share, all under the stream's name.
#[derive(Debug, Clone)]
pub(super) struct Subjects {
    pub stream: String,
    pub node: String,
}

impl Subjects {
    pub fn new(settings: &NatsSettings) -> Subjects {
        Subjects {
            stream: settings.stream.clone(),
            node: settings.node.clone(),
        }
    }

    /// The work-queue stream's one subject.
    pub fn tasks(&self) -> String {
        format!("{}.tasks", self.stream)
    }

    /// Where task `task_id`'s messages go: to the node holding its submitter.
    pub fn events(&self, origin: &str, task_id: u64) -> String {
        format!("{}.ev.{origin}.{task_id}", self.stream)
    }

    /// Every event for this node's own tasks.
    pub fn own_events(&self) -> String {
        format!("{}.ev.{}.*", self.stream, self.node)
    }

    /// Task `task_id`'s events, whichever node submitted it: for an `attach` elsewhere.
    pub fn any_events(&self, task_id: u64) -> String {
        format!("{}.ev.*.{task_id}", self.stream)
    }

    pub fn broadcast(&self) -> String {
        format!("{}.broadcast", self.stream)
    }

    pub fn topics(&self) -> String {
        format!("{}.topic", self.stream)
    }

    /// The durable pull consumer every node shares.
    pub fn consumer(&self) -> String {
        format!("{}_workers", self.stream)
    }

    /// The key-value bucket of terminal messages (its stream is `KV_<bucket>`).
    pub fn bucket(&self) -> String {
        format!("{}_results", self.stream)
    }

    /// Task `task_id`'s key in the bucket.
    pub fn result_key(task_id: u64) -> String {
        format!("t.{task_id}")
    }

    /// The task id and the origin node named by an event's subject.
    pub fn parse_event(subject: &str) -> Option<(&str, u64)> {
        let mut tokens = subject.rsplitn(3, '.');
        let task_id = tokens.next()?.parse().ok()?;
        let origin = tokens.next()?;
        Some((origin, task_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_subject_names_its_origin_and_task() {
        assert_eq!(
            Subjects::parse_event("taskhost.ev.node-1.42"),
            Some(("node-1", 42))
        );
        assert_eq!(Subjects::parse_event("taskhost.ev.node-1.x"), None);
    }
}
