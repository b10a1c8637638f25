//! Following tasks for this node's connections: `attach` (and a repeated key) on any node,
//! the router of this node's own tasks' events, and the sweep that reads results from the
//! bucket when a terminal event was lost.
//!
//! An attach subscribes to the task's events first and then looks: in the bucket (ended),
//! then in the stream (queued or running, its message not yet acked), then in the bucket
//! again (it ended between the two looks); else `not_found`. A terminal message that comes
//! both ways reaches the client once (see `follow`).

use std::sync::Arc;

use futures_util::StreamExt;
use serde::Deserialize;

use super::super::App;
use super::super::context::Ctx;
use super::super::failures;
use super::Cluster;
use super::envelope::{EVENT_HEADER, Envelope, Subjects};
use super::follow::{Event, Known, deliver};
use super::link::Link;
use super::submit::{send_held, text_of};
use crate::outbox::{Outbox, Text};
use crate::protocol::{Ref, Reply, WireError};

/// `attach` with `--nats`: `attached`, then the task's remaining messages; `not_found` for
/// an id no node knows.
pub(crate) async fn attach<A: App>(ctx: &Ctx<A>, cluster: &Cluster, client: &Outbox, task_id: u64) {
    if let Err(error) = follow(ctx, cluster, client, task_id, true).await {
        client.send(&Reply::Error { error: &error }).await;
    }
}

/// Follows task `task_id` for a client that has its `accepted` already (a repeated key).
pub(super) async fn follow_quietly<A: App>(
    ctx: &Ctx<A>,
    cluster: &Cluster,
    client: &Outbox,
    task_id: u64,
) {
    if let Err(error) = follow(ctx, cluster, client, task_id, false).await {
        client.send(&Reply::Error { error: &error }).await;
    }
}

async fn follow<A: App>(
    ctx: &Ctx<A>,
    cluster: &Cluster,
    client: &Outbox,
    task_id: u64,
    announce: bool,
) -> Result<(), WireError> {
    let link = cluster.link()?;
    if let Some(known) = cluster.following.known(task_id) {
        if announce {
            attached(ctx, client, task_id, &known).await;
        }
        if cluster.following.join(task_id, client) {
            return Ok(());
        }
    }
    // Subscribed before looking, so that an event after the look is not missed.
    let events = link
        .client
        .subscribe(cluster.subjects.any_events(task_id))
        .await
        .map_err(|error| {
            failures::broker_unavailable(cluster.settings.url.shown(), &error.to_string())
        })?;
    if let Some(text) = kept_result(cluster, link, task_id).await? {
        return ended(ctx, client, task_id, text, announce).await;
    }
    let Some(envelope) = queued_task(link, task_id).await else {
        return match kept_result(cluster, link, task_id).await? {
            Some(text) => ended(ctx, client, task_id, text, announce).await,
            None => {
                ctx.metrics().attach("not_found");
                Err(failures::unknown_task_id(task_id))
            }
        };
    };
    let known = Known {
        task: envelope.task,
        reference: envelope.reference,
        state: "queued",
    };
    let Some(stop) = cluster.following.begin(task_id, known.clone()) else {
        // Followed here since the first look: join it.
        if announce {
            attached(ctx, client, task_id, &known).await;
        }
        cluster.following.join(task_id, client);
        return Ok(());
    };
    if announce {
        attached(ctx, client, task_id, &known).await;
    }
    if let Some(held) = cluster.following.open(task_id, client) {
        send_held(client, held).await;
    }
    let node = cluster.subjects.node.clone();
    let following = Arc::clone(&cluster.following);
    tokio::spawn(async move {
        let mut events = events;
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = events.next() => match message { Some(m) => m, None => return },
            };
            // This node's own tasks' events come through the router.
            match Subjects::parse_event(&message.subject) {
                Some((origin, _)) if origin != node => {}
                _ => continue,
            }
            route(&following, task_id, &message);
        }
    });
    Ok(())
}

/// Sends `attached` for a task followed here.
async fn attached<A: App>(ctx: &Ctx<A>, client: &Outbox, task_id: u64, known: &Known) {
    ctx.metrics().attach(known.state);
    client
        .send(&Reply::Attached {
            task_id,
            task: &known.task,
            reference: known.reference.as_ref(),
            state: known.state,
        })
        .await;
}

/// An ended task: `attached` (unless its `accepted` went out instead) and its terminal
/// message.
async fn ended<A: App>(
    ctx: &Ctx<A>,
    client: &Outbox,
    task_id: u64,
    text: Text,
    announce: bool,
) -> Result<(), WireError> {
    if announce {
        #[derive(Deserialize)]
        struct Head {
            task: String,
            #[serde(rename = "ref", default)]
            reference: Option<Ref>,
        }
        let head: Head = serde_json::from_str(text.as_str())
            .map_err(|error| WireError::internal(format!("a kept result is not JSON: {error}")))?;
        let known = Known {
            task: head.task,
            reference: head.reference,
            state: "ended",
        };
        attached(ctx, client, task_id, &known).await;
    }
    client.send_text(text).await;
    Ok(())
}

/// The task's terminal message, if the bucket holds it.
async fn kept_result(
    cluster: &Cluster,
    link: &Link,
    task_id: u64,
) -> Result<Option<Text>, WireError> {
    let value = link
        .results
        .get(Subjects::result_key(task_id))
        .await
        .map_err(|error| {
            failures::broker_unavailable(cluster.settings.url.shown(), &error.to_string())
        })?;
    Ok(value.as_deref().and_then(text_of))
}

/// The task's message in the stream, while it is queued or running (acked ones are gone).
async fn queued_task(link: &Link, task_id: u64) -> Option<Envelope> {
    let message = link.tasks.get_raw_message(task_id).await.ok()?;
    serde_json::from_slice(&message.payload).ok()
}

/// One event message for `task_id`, to whoever follows it here.
fn route(following: &super::follow::Following, task_id: u64, message: &async_nats::Message) {
    let Some(text) = text_of(&message.payload) else {
        return;
    };
    let terminal = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(EVENT_HEADER))
        .is_some_and(|value| value.as_str() == "terminal");
    let event = Event {
        text: text.clone(),
        terminal,
    };
    deliver(following.route(task_id, event), text);
}

/// Delivers the events of the tasks this node's clients submitted.
pub(super) async fn route_own_events<A: App>(cluster: Arc<Cluster>, ctx: Ctx<A>) {
    let Some(link) = cluster.link.get() else {
        return;
    };
    let mut events = match link.client.subscribe(cluster.subjects.own_events()).await {
        Ok(events) => events,
        Err(error) => {
            tracing::error!(%error, "could not subscribe to this node's task events; clients get outcomes only through attach");
            return;
        }
    };
    let following = Arc::clone(&cluster.following);
    loop {
        let message = tokio::select! {
            () = ctx.stopping().cancelled() => return,
            message = events.next() => match message { Some(m) => m, None => return },
        };
        tracing::debug!(subject = %message.subject, headers = ?message.headers, "an event for a task submitted here");
        if let Some((_, task_id)) = Subjects::parse_event(&message.subject) {
            route(&following, task_id, &message);
        }
    }
}

/// Looks in the bucket for the results of followed tasks that have not ended here for a
/// while: their terminal event may have been lost. A task gone from both the bucket and the
/// stream (its result expired) ends its followers with `not_found`.
pub(super) async fn sweep<A: App>(cluster: Arc<Cluster>, ctx: Ctx<A>) {
    let interval = cluster.sweep_interval();
    // Whether a task is gone from the stream too is asked every tenth round only: it is
    // rare (a result expired while followed), and costs a request per task not ended.
    let mut round: u64 = 0;
    loop {
        round += 1;
        tokio::select! {
            () = ctx.stopping().cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let Ok(link) = cluster.link() else {
            continue;
        };
        cluster
            .counters
            .followed
            .set(cluster.following.len() as i64);
        for task_id in cluster.following.due(interval) {
            match kept_result(&cluster, link, task_id).await {
                Ok(Some(text)) => {
                    let event = Event {
                        text: text.clone(),
                        terminal: true,
                    };
                    deliver(cluster.following.route(task_id, event), text);
                }
                Ok(None) => {
                    if !round.is_multiple_of(10) || queued_task(link, task_id).await.is_some() {
                        continue;
                    }
                    if let Ok(None) = kept_result(&cluster, link, task_id).await {
                        let error = failures::unknown_task_id(task_id);
                        let text = Text::from(Reply::Error { error: &error }.to_json());
                        for outbox in cluster.following.end(task_id) {
                            outbox.offer(text.clone());
                        }
                    }
                }
                // The broker is away: the next sweep tries again.
                Err(_) => break,
            }
        }
    }
}
