//! The node's workers: one pull loop per task worker, so a node takes only as many tasks as
//! it has free workers. Each task runs through the dispatcher and the sandbox as on one
//! node; its `started` and progress travel to the submitter's node as they happen.
//!
//! A task is acked only after its terminal message is kept in the bucket and sent: a node
//! killed before that leaves it unacked, and the broker hands it to another node after the
//! ack wait (at-least-once; `attempts` counts the deliveries). While it runs, a heartbeat
//! every third of the ack wait tells the broker the node is alive. The first terminal
//! message kept wins: a task that ran twice reports the kept one both times.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::kv::CreateErrorKind;
use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::super::App;
use super::super::context::Ctx;
use super::super::job::Outcome;
use super::Cluster;
use super::envelope::{EVENT_HEADER, Envelope, Subjects};
use super::link::Link;
use super::submit::text_of;
use crate::outbox::{Frame, Text};
use crate::protocol::ErrorCode;

/// How long one pull waits for a task before it asks again.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// After a failed pull (the broker away), before the next.
const PULL_RETRY: Duration = Duration::from_secs(1);
/// How long a task whose module version is missing here waits before the broker offers it
/// again (to this node or another).
const MISSING_MODULE_DELAY: Duration = Duration::from_secs(1);
/// Deliveries after which a task whose module version no node has fails (`unknown_task`),
/// rather than going round for ever.
const MISSING_MODULE_DELIVERIES: i64 = 60;
/// Between two tries to keep a terminal message while the broker is away.
const KEEP_RETRY: Duration = Duration::from_millis(500);

/// Starts one pull loop per task worker.
pub(super) fn start<A: App>(cluster: &Arc<Cluster>, ctx: &Ctx<A>) {
    for _ in 0..ctx.config().task_workers {
        tokio::spawn(pull_loop(Arc::clone(cluster), ctx.clone()));
    }
}

/// Pulls one task at a time and runs it, until the server stops taking work.
async fn pull_loop<A: App>(cluster: Arc<Cluster>, ctx: Ctx<A>) {
    loop {
        if ctx.stopping().is_cancelled() {
            return;
        }
        let Ok(link) = cluster.link() else {
            tokio::time::sleep(PULL_RETRY).await;
            continue;
        };
        let link = link.clone();
        let pull = link
            .consumer
            .batch()
            .max_messages(1)
            .expires(PULL_EXPIRES)
            .messages();
        let mut batch = tokio::select! {
            () = ctx.stopping().cancelled() => return,
            batch = pull => match batch {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::debug!(%error, "could not pull a task; trying again");
                    tokio::time::sleep(PULL_RETRY).await;
                    continue;
                }
            },
        };
        // A pull the broker forgot (it restarted) never ends by itself: give up on it a
        // little after its expiry and pull again.
        while let Ok(Some(message)) =
            tokio::time::timeout(PULL_EXPIRES + PULL_RETRY * 2, batch.next()).await
        {
            match message {
                Ok(message) => run(&cluster, &ctx, &link, message).await,
                Err(error) => {
                    tracing::debug!(%error, "a pull ended with an error");
                    tokio::time::sleep(PULL_RETRY).await;
                }
            }
        }
    }
}

/// Runs one pulled task to its acked end (or leaves it to the broker).
async fn run<A: App>(
    cluster: &Cluster,
    ctx: &Ctx<A>,
    link: &Link,
    message: async_nats::jetstream::Message,
) {
    let Ok(info) = message.info() else {
        return;
    };
    let (task_id, delivered) = (info.stream_sequence, info.delivered);
    let envelope: Envelope = match serde_json::from_slice(&message.payload) {
        Ok(envelope) => envelope,
        Err(error) => {
            tracing::error!(task_id, %error, "a task in the stream is not one; dropped");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    if delivered > 1 {
        cluster.counters.redelivered.inc();
    }
    let events = cluster.subjects.events(&envelope.origin, task_id);
    // A redelivery of a task whose end was kept already (its node died before the ack).
    if let Ok(Some(kept)) = link.results.get(Subjects::result_key(task_id)).await {
        publish_terminal(link, &events, kept.to_vec()).await;
        let _ = message.double_ack().await;
        return;
    }
    let module = match ctx.registry().get(&envelope.task) {
        Ok(module) if module.hash == envelope.hash => module,
        other => {
            let here = other
                .map(|m| m.hash.clone())
                .unwrap_or_else(|_| "none".into());
            cluster.counters.module_missing.inc();
            tracing::warn!(
                task_id,
                task = %envelope.task,
                wanted = %envelope.hash,
                here = %here,
                delivered,
                "this node lacks the module version the task was accepted with; left to the \
                 nodes that have it (deploy the same tasks folder to every node)"
            );
            if delivered < MISSING_MODULE_DELIVERIES {
                let _ = message
                    .ack_with(AckKind::Nak(Some(MISSING_MODULE_DELAY)))
                    .await;
                return;
            }
            let error = crate::protocol::WireError::new(
                ErrorCode::UnknownTask,
                format!(
                    "no node ran task {} with the module version it was accepted with ({}) \
                     after {delivered} offers: deploy that version, and submit it again",
                    envelope.task, envelope.hash
                ),
            );
            let text = Text::from(
                crate::protocol::Reply::Failed {
                    task_id,
                    task: &envelope.task,
                    reference: envelope.reference.as_ref(),
                    error: &error,
                    elapsed_ms: 0,
                    fuel_used: None,
                    attempts: 0,
                }
                .to_json(),
            );
            finish(cluster, link, &message, &events, task_id, text).await;
            return;
        }
    };
    // The relay: an outbox no connection drains, whose frames go to the submitter's node.
    let (relay, mut drain) = ctx.connections().open(
        std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        std::net::Ipv4Addr::UNSPECIFIED.into(),
    );
    let (terminal_tx, terminal_rx) = oneshot::channel::<Text>();
    let relay_client = link.client.clone();
    let relay_subject = events.clone();
    let relaying = tokio::spawn(async move {
        let mut terminal_rx = terminal_rx;
        loop {
            tokio::select! {
                biased;
                queued = drain.next() => match queued {
                    Some(queued) => {
                        if let Frame::Text(text) = queued.frame {
                            let payload = bytes::Bytes::copy_from_slice(text.as_str().as_bytes());
                            // Progress is offered: lost with the broker, superseded by the next.
                            let _ = relay_client.publish(relay_subject.clone(), payload).await;
                        }
                        drain.written(queued.cost);
                    }
                    // Every handle is gone: what is left is the terminal message, if any.
                    None => return (&mut terminal_rx).await.ok(),
                },
                terminal = &mut terminal_rx => {
                    while let Some(queued) = drain.try_next() {
                        if let Frame::Text(text) = queued.frame {
                            let payload = bytes::Bytes::copy_from_slice(text.as_str().as_bytes());
                            let _ = relay_client.publish(relay_subject.clone(), payload).await;
                        }
                        drain.written(queued.cost);
                    }
                    return terminal.ok();
                }
            }
        }
    });
    let first_attempt = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
    let admitted = match ctx.admit_remote(
        task_id,
        module,
        bytes::Bytes::copy_from_slice(envelope.input.get().as_bytes()),
        envelope.limits,
        envelope.reference.clone(),
        first_attempt,
        &relay,
        largest_terminal(link),
    ) {
        Ok(admitted) => admitted,
        Err(error) => {
            tracing::debug!(task_id, code = %error.code, "cannot run a pulled task now; back to the broker");
            relaying.abort();
            let _ = message
                .ack_with(AckKind::Nak(Some(MISSING_MODULE_DELAY)))
                .await;
            return;
        }
    };
    let heartbeat = cluster.settings.ack_wait / 3;
    let report = with_heartbeat(&message, heartbeat, ctx.execute_admitted(admitted)).await;
    if let Outcome::Failed { error, .. } = &report.outcome
        && error.code == ErrorCode::Shutdown
    {
        // This node stops: another one runs it.
        relaying.abort();
        let _ = message.ack_with(AckKind::Nak(None)).await;
        return;
    }
    // Within the broker's message size: `execute_admitted` failed a longer `finished` as
    // `output_too_large` (kept and sent, the task fails; never kept, it would run again and
    // again).
    let terminal = report.terminal_text();
    let kept = with_heartbeat(&message, heartbeat, keep(cluster, link, task_id, terminal)).await;
    let Some(kept) = kept else {
        relaying.abort();
        return;
    };
    // The application's finish (a broadcast task's broadcast), before the submitter's terminal.
    let finish = ctx.app().on_finish(ctx, report);
    finish.await;
    // The relay drains every progress frame first, then sends the terminal message.
    let _ = terminal_tx.send(kept);
    drop(relay);
    if let Ok(Some(kept)) = relaying.await {
        publish_terminal(link, &events, kept.as_str().as_bytes().to_vec()).await;
    }
    ack(&message, task_id).await;
}

/// Room left in a broker message for the subject and headers of a key-value write.
const HEADER_ROOM: usize = 256;

/// The longest terminal message the broker carries: its `max_payload`, less header room.
fn largest_terminal(link: &Link) -> usize {
    link.client
        .server_info()
        .max_payload
        .saturating_sub(HEADER_ROOM)
}

/// Keeps a terminal message that needs no run (a task no node can run) and acks.
async fn finish(
    cluster: &Cluster,
    link: &Link,
    message: &async_nats::jetstream::Message,
    events: &str,
    task_id: u64,
    text: Text,
) {
    if let Some(kept) = keep(cluster, link, task_id, text).await {
        publish_terminal(link, events, kept.as_str().as_bytes().to_vec()).await;
        ack(message, task_id).await;
    }
}

/// Keeps the task's terminal message in the bucket unless one is kept already (the task ran
/// twice): the kept one is returned, and is the one every client gets. Retries while the
/// broker is away, for up to ten ack waits; `None` then, and the task runs again elsewhere.
async fn keep(cluster: &Cluster, link: &Link, task_id: u64, terminal: Text) -> Option<Text> {
    let key = Subjects::result_key(task_id);
    let deadline = Instant::now() + cluster.settings.ack_wait * 10;
    let value = bytes::Bytes::copy_from_slice(terminal.as_str().as_bytes());
    loop {
        let error = match link.results.create(&key, value.clone()).await {
            Ok(_) => return Some(terminal),
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {
                match read_kept(link, &key).await {
                    Ok(kept) => {
                        // Counted once, here: a read that failed comes back through `create`.
                        // Our own bytes are our own `create`, which the broker applied but
                        // whose answer was lost (the retry then finds it): not a second run.
                        // Two runs' messages always differ: each carries its `attempts`,
                        // counted from the broker's delivery of the run.
                        if kept.as_str() != terminal.as_str() {
                            cluster.counters.ran_twice.inc();
                        }
                        return Some(kept);
                    }
                    Err(error) => error,
                }
            }
            Err(error) => anyhow::Error::from(error),
        };
        if Instant::now() >= deadline {
            tracing::error!(task_id, error = %format!("{error:#}"), "could not keep a task's result; the broker will hand it to a node again");
            return None;
        }
        tracing::debug!(task_id, error = %format!("{error:#}"), "could not keep a task's result yet; retrying");
        tokio::time::sleep(KEEP_RETRY).await;
    }
}

/// The terminal message another run kept under `key`.
async fn read_kept(link: &Link, key: &str) -> anyhow::Result<Text> {
    let kept = link.results.get(key).await?;
    kept.as_deref()
        .and_then(text_of)
        .context("the kept result is gone or not text")
}

/// Sends the terminal message to the submitter's node (and any node attached).
async fn publish_terminal(link: &Link, events: &str, payload: Vec<u8>) {
    let mut headers = HeaderMap::new();
    headers.insert(EVENT_HEADER, "terminal");
    // Lost if the broker goes now: the nodes following the task read the bucket then.
    let _ = link
        .client
        .publish_with_headers(events.to_owned(), headers, payload.into())
        .await;
}

/// Acks the task, confirmed by the broker, trying a few times; a lost ack means the task is
/// offered again, and the next node finds its result kept.
async fn ack(message: &async_nats::jetstream::Message, task_id: u64) {
    for _ in 0..5 {
        match message.double_ack().await {
            Ok(()) => return,
            Err(error) => {
                tracing::debug!(task_id, %error, "an ack was not confirmed; retrying");
                tokio::time::sleep(KEEP_RETRY).await;
            }
        }
    }
}

/// Runs `work`, telling the broker every `period` that the task is still in hand.
async fn with_heartbeat<F: std::future::Future>(
    message: &async_nats::jetstream::Message,
    period: Duration,
    work: F,
) -> F::Output {
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tokio::pin!(work);
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = beat.tick() => {
                // A missed heartbeat at worst lets the task run twice (at-least-once).
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    }
}
