//! Broadcasts and topic publishes across nodes: each is delivered on its own node at once
//! and published on a core NATS subject with the node's name; every other node delivers it
//! to its own connections. Like a broadcast on one node, it is offered, never awaited: a
//! node that is disconnected at that moment misses it.

use std::sync::Arc;

use async_nats::HeaderMap;
use futures_util::StreamExt;
use serde_json::value::RawValue;

use super::super::App;
use super::super::context::Ctx;
use super::super::topics::Topics;
use super::Cluster;
use super::envelope::{NODE_HEADER, TOPIC_HEADER};
use crate::capabilities::{Fanout, Publisher};
use crate::outbox::Text;

/// Offers a broadcast frame to the other nodes.
pub(super) fn broadcast(cluster: &Cluster, text: &Text) {
    let Some(link) = cluster.link.get() else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(NODE_HEADER, cluster.subjects.node.as_str());
    let client = link.client.clone();
    let subject = cluster.subjects.broadcast();
    let payload = bytes::Bytes::copy_from_slice(text.as_str().as_bytes());
    tokio::spawn(async move {
        // Offered: a broker that is away loses it, as a full outbox would.
        if let Err(error) = client.publish_with_headers(subject, headers, payload).await {
            tracing::debug!(%error, "a broadcast did not reach the other nodes");
        }
    });
}

/// Tasks' publishes: to this node's subscribers, then to the other nodes'.
pub(crate) struct ClusterPublisher {
    pub topics: Arc<Topics>,
    pub cluster: Arc<Cluster>,
}

impl Publisher for ClusterPublisher {
    fn publish(&self, topic: &str, data: &RawValue) -> Fanout {
        let fanout = self.topics.publish(topic, data);
        if let Some(link) = self.cluster.link.get() {
            let mut headers = HeaderMap::new();
            headers.insert(NODE_HEADER, self.cluster.subjects.node.as_str());
            headers.insert(TOPIC_HEADER, topic);
            let client = link.client.clone();
            let subject = self.cluster.subjects.topics();
            let payload = bytes::Bytes::copy_from_slice(data.get().as_bytes());
            tokio::spawn(async move {
                if let Err(error) = client.publish_with_headers(subject, headers, payload).await {
                    tracing::debug!(%error, "a publish did not reach the other nodes");
                }
            });
        }
        fanout
    }
}

/// Delivers the other nodes' broadcasts and publishes here.
pub(super) fn start<A: App>(cluster: &Arc<Cluster>, ctx: &Ctx<A>) {
    let Some(link) = cluster.link.get() else {
        return;
    };
    let client = link.client.clone();
    let (cluster, ctx) = (Arc::clone(cluster), ctx.clone());
    tokio::spawn(async move {
        let broadcasts = client.subscribe(cluster.subjects.broadcast()).await;
        let publishes = client.subscribe(cluster.subjects.topics()).await;
        let (Ok(broadcasts), Ok(publishes)) = (broadcasts, publishes) else {
            tracing::error!(
                "could not subscribe to the other nodes' broadcasts; they will not reach this node's connections"
            );
            return;
        };
        let mut messages = futures_util::stream::select(broadcasts, publishes);
        loop {
            let message = tokio::select! {
                () = ctx.stopping().cancelled() => return,
                message = messages.next() => match message { Some(m) => m, None => return },
            };
            let headers = message.headers.as_ref();
            tracing::debug!(subject = %message.subject, "a broadcast or publish from another node");
            let from = headers.and_then(|h| h.get(NODE_HEADER)).map(|v| v.as_str());
            if from == Some(cluster.subjects.node.as_str()) {
                continue;
            }
            let Ok(text) = std::str::from_utf8(&message.payload) else {
                continue;
            };
            match headers.and_then(|h| h.get(TOPIC_HEADER)) {
                Some(topic) => {
                    if let Ok(data) = serde_json::from_str::<&RawValue>(text) {
                        ctx.publish_raw(topic.as_str(), data);
                    }
                }
                None => {
                    ctx.broadcast_here(&Text::from(text.to_owned()));
                }
            }
        }
    });
}
