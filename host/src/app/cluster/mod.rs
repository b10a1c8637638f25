//! Nodes sharing work through NATS JetStream (`--nats`; the semantics are docs/SCALING.md).
//!
//! - [`submit`]: a node queues a client's task in the work-queue stream; the stream sequence
//!   is the task's id (unique across nodes and restarts), and a repeated idempotency key is
//!   a duplicate `Nats-Msg-Id`, whose ack names the first task.
//! - [`worker`]: every node pulls from one durable consumer, one pull per free worker, runs
//!   the task through the same dispatcher and sandbox as on one node, heartbeats it, keeps
//!   its terminal message in the results bucket (the first one kept wins) and acks it.
//! - `follow` and [`attach`]: events travel back to the submitter's node on core NATS
//!   subjects; each node hands them to its connections, one terminal message per task.
//! - `fanout`: broadcasts and topic publishes reach the connections of every node.
//! - `link`: the connection and the stream, consumer and bucket, set up in the background.

pub(super) mod attach;
mod envelope;
mod fanout;
mod follow;
mod link;
mod publish;
pub(super) mod submit;
mod worker;

pub(crate) use fanout::ClusterPublisher;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::App;
use super::context::Ctx;
use super::failures;
use crate::config::NatsSettings;
use crate::metrics::ClusterCounters;
use crate::protocol::WireError;
use envelope::Subjects;
use follow::Following;
use link::{Bounds, Link};

/// This node's part in the cluster. Built with the server; joins the broker in the
/// background once it serves.
pub(crate) struct Cluster {
    settings: NatsSettings,
    subjects: Subjects,
    bounds: Bounds,
    /// Set once the stream, consumer and bucket are set up; the client reconnects by itself
    /// after that.
    link: OnceLock<Link>,
    following: Arc<Following>,
    counters: ClusterCounters,
}

impl Cluster {
    pub(crate) fn new(
        settings: NatsSettings,
        result_ttl: Duration,
        result_bytes: u64,
        counters: ClusterCounters,
    ) -> Cluster {
        Cluster {
            subjects: Subjects::new(&settings),
            settings,
            bounds: Bounds {
                result_ttl,
                result_bytes,
            },
            link: OnceLock::new(),
            following: Arc::default(),
            counters,
        }
    }

    /// The broker, if it is set up and connected now; else the wire error that says so.
    fn link(&self) -> Result<&Link, WireError> {
        match self.link.get() {
            Some(link) if link.is_connected() => Ok(link),
            Some(_) => Err(failures::broker_unavailable(
                self.settings.url.shown(),
                "the connection is down; the node is reconnecting",
            )),
            None => Err(failures::broker_unavailable(
                self.settings.url.shown(),
                "the node has not joined it yet",
            )),
        }
    }

    /// Joins the broker (retrying until it can), then starts the event router, the
    /// fan-out, the sweep and the workers.
    pub(crate) fn start<A: App>(self: &Arc<Self>, ctx: &Ctx<A>) {
        let cluster = Arc::clone(self);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let link = tokio::select! {
                () = ctx.stopping().cancelled() => return,
                link = link::connect(&cluster.settings, &cluster.subjects, &cluster.bounds, cluster.counters.clone()) => link,
            };
            if cluster.link.set(link).is_err() {
                return;
            }
            tokio::spawn(attach::route_own_events(Arc::clone(&cluster), ctx.clone()));
            tokio::spawn(attach::sweep(Arc::clone(&cluster), ctx.clone()));
            fanout::start(&cluster, &ctx);
            worker::start(&cluster, &ctx);
        });
    }

    /// Offers a broadcast frame to the other nodes' connections (this node's got it already).
    pub(crate) fn broadcast(&self, text: &crate::outbox::Text) {
        fanout::broadcast(self, text);
    }

    /// How often a followed task's result is looked for in the bucket, in case its terminal
    /// event was lost (core NATS drops what it cannot deliver, say while the broker restarts).
    fn sweep_interval(&self) -> Duration {
        (self.settings.ack_wait / 2).clamp(Duration::from_millis(250), Duration::from_secs(5))
    }
}
