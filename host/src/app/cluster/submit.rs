//! A client's task queued in the broker: checked against this node's registry (the module
//! version accepted is the one that runs), published to the work-queue stream, and answered
//! with `accepted` carrying the stream sequence as the task's id. Refused with
//! `broker_unavailable` when the broker cannot take it: never accepted and lost (and
//! `publish` says when a refused task may still run).

use serde_json::value::RawValue;

use super::super::App;
use super::super::context::Ctx;
use super::super::failures;
use super::super::job::NewTask;
use super::super::protocol_app::reject;
use super::Cluster;
use super::envelope::Envelope;
use super::follow::{self, Known};
use crate::outbox::{Outbox, Text};
use crate::protocol::{Reply, TaskRequest};

/// Queues `request` for whichever node pulls it first, or rejects it.
pub(crate) async fn submit<A: App>(
    ctx: &Ctx<A>,
    cluster: &Cluster,
    client: &Outbox,
    request: TaskRequest,
) {
    let task = NewTask::from(request);
    let module = match ctx.registry().get(&task.task) {
        Ok(module) => module,
        Err(error) => {
            return reject(
                ctx,
                client,
                task.reference.as_ref(),
                failures::lookup(error),
            )
            .await;
        }
    };
    let link = match cluster.link() {
        Ok(link) => link,
        Err(error) => return reject(ctx, client, task.reference.as_ref(), error).await,
    };
    let limits = module.limits.lowered_by(task.limits);
    let input = std::str::from_utf8(&task.input)
        .ok()
        .and_then(|text| RawValue::from_string(text.to_owned()).ok());
    let Some(input) = input else {
        let error = crate::protocol::WireError::new(
            crate::protocol::ErrorCode::BadRequest,
            "the task's input is not JSON text",
        );
        return reject(ctx, client, task.reference.as_ref(), error).await;
    };
    let envelope = Envelope {
        task: module.name.to_string(),
        hash: module.hash.clone(),
        input,
        limits,
        reference: task.reference.clone(),
        origin: cluster.subjects.node.clone(),
    };
    let payload = match serde_json::to_vec(&envelope) {
        Ok(payload) => payload,
        Err(error) => {
            let error = crate::protocol::WireError::internal(format!(
                "could not encode the task for the broker: {error}"
            ));
            return reject(ctx, client, task.reference.as_ref(), error).await;
        }
    };
    let published = super::publish::publish_task(cluster, link, task.key.as_deref(), payload);
    let ack = match published.await {
        Ok(ack) => ack,
        Err(error) => {
            tracing::warn!(error = %error.message, task = %module.name, "the broker did not take a task");
            return reject(ctx, client, task.reference.as_ref(), error).await;
        }
    };
    let task_id = ack.sequence;
    let accepted = Reply::Accepted {
        task_id,
        task: &module.name,
        reference: task.reference.as_ref(),
        limits,
    };
    if ack.duplicate {
        // The key names task `task_id`: this one is that one, as on one node.
        ctx.metrics().attach("same_key");
        client.send(&accepted).await;
        super::attach::follow_quietly(ctx, cluster, client, task_id).await;
        return;
    }
    let known = Known {
        task: module.name.to_string(),
        reference: task.reference.clone(),
        state: "queued",
    };
    // Events may have come before the ack: they are held until `accepted` is out.
    cluster.following.begin(task_id, known);
    client.send(&accepted).await;
    if let Some(held) = cluster.following.open(task_id, client) {
        send_held(client, held).await;
    }
}

/// Sends the events held for a client while its answer went out, in order.
pub(super) async fn send_held(client: &Outbox, held: Vec<follow::Event>) {
    for event in held {
        if event.terminal {
            client.send_text(event.text).await;
            return;
        }
        client.offer(event.text);
    }
}

/// Events as text frames for [`follow::deliver`].
pub(super) fn text_of(payload: &[u8]) -> Option<Text> {
    std::str::from_utf8(payload)
        .ok()
        .map(|text| Text::from(text.to_owned()))
}
