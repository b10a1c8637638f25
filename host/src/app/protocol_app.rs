//! The default application: `docs/PROTOCOL.md`, event by event. [`ProtocolApp`] is what the
//! `taskhost` binary runs; each function is public so that an application overriding a
//! callback can still call the default for the cases it keeps.

use crate::clip::clip;
use crate::outbox::Outbox;
use crate::protocol::{
    ErrorCode, PROTOCOL_VERSION, Ref, Reply, Request, TaskRequest, WireError, unknown_type,
};
use crate::registry::Delivery;

use super::App;
use super::context::{Ctx, Refused};
use super::failures;
use super::job::{NewTask, Outcome, Report};
use super::results::{Attach, TaskRecord};

/// The application the `taskhost` binary runs: `docs/PROTOCOL.md`, unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProtocolApp;

impl App for ProtocolApp {
    type Session = ();
}

/// `open`: greets the client with `hello`.
pub async fn greet<A: App>(ctx: &Ctx<A>, client: &Outbox) {
    client
        .send(&Reply::Hello {
            connection_id: client.id(),
            tasks: ctx.task_names(),
            version: PROTOCOL_VERSION,
        })
        .await;
}

/// `message`: answers one request: `task`, `cancel`, `attach`, `list`, `stats`, `watch`,
/// `subscribe` and `unsubscribe`; any other type is a `bad_request`.
pub async fn answer<A: App>(ctx: &Ctx<A>, client: &Outbox, request: Request) {
    match request {
        Request::Task(task) => match ctx.cluster() {
            Some(cluster) => super::cluster::submit::submit(ctx, cluster, client, task).await,
            None => submit(ctx, client, task).await,
        },
        Request::Cancel { task_id } => {
            if let Err(error) = ctx.cancel(client, task_id) {
                client.send(&Reply::Error { error: &error }).await;
            }
        }
        Request::Attach { task_id } => match ctx.cluster() {
            Some(cluster) => {
                super::cluster::attach::attach(ctx, cluster, client, task_id).await;
            }
            None => attach(ctx, client, task_id).await,
        },
        Request::Dead => {
            let dead = ctx.dead_letters();
            client.send(&Reply::Dead(&dead)).await;
        }
        Request::List => {
            let tasks = ctx.tasks();
            client.send(&Reply::List { tasks: &tasks }).await;
        }
        Request::Stats => {
            client.send(&Reply::Stats(&ctx.stats())).await;
        }
        Request::Watch => ctx.watch(client).await,
        Request::Subscribe { topic } => match ctx.subscribe(client, &topic) {
            Ok(()) => {
                client.send(&Reply::Subscribed { topic: &topic }).await;
            }
            Err(error) => {
                client.send(&Reply::Error { error: &error }).await;
            }
        },
        Request::Unsubscribe { topic } => {
            ctx.unsubscribe(client.id(), &topic);
            client.send(&Reply::Unsubscribed { topic: &topic }).await;
        }
        Request::Custom { kind, .. } => {
            let error = unknown_type(&kind);
            client.send(&Reply::Error { error: &error }).await;
        }
    }
}

/// Admits a task and starts it, or rejects it: exactly one `accepted` or `rejected`, and
/// `accepted` is queued for the client before the task can start.
pub async fn submit<A: App>(ctx: &Ctx<A>, client: &Outbox, request: TaskRequest) {
    let plain_text = request.plain_text;
    let mut task = NewTask::from(request);
    // A key whose task's result expires between the look-up and the attach is free again:
    // the task is admitted after all (a few tries, for a key that keeps changing hands).
    let mut tries = 0;
    let admitted = loop {
        tries += 1;
        let refused = match ctx.try_admit(task, Some(client)) {
            Ok(admitted) => break admitted,
            Err(refused) => *refused,
        };
        let (mut error, refused_task) = match refused {
            Refused::SameKey {
                task_id,
                task: same,
            } => match join_same_key(ctx, client, task_id, same).await {
                Some(back) if tries < 3 => {
                    task = back;
                    continue;
                }
                Some(back) => (failures::key_taken(task_id), back),
                None => return,
            },
            Refused::Error(error, task) => (error, task),
        };
        if plain_text && error.code == ErrorCode::UnknownTask {
            error.message = format!(
                "a frame that is not a JSON object runs the default task (--default-task), \
                 {}, which cannot run: {}",
                clip(&refused_task.task),
                error.message
            );
        }
        return reject(ctx, client, refused_task.reference.as_ref(), error).await;
    };
    let job = admitted.job();
    client
        .send(&Reply::Accepted {
            task_id: job.task_id,
            task: job.name(),
            reference: job.reference.as_ref(),
            limits: job.limits,
        })
        .await;
    ctx.start(admitted);
}

/// A task whose key names task `task_id`: it does not run again. Its `accepted` carries
/// that task's id, and the client gets that task's outcome as `attach` would give it.
/// Gives the task back if that task is gone after all (its result just expired).
async fn join_same_key<A: App>(
    ctx: &Ctx<A>,
    client: &Outbox,
    task_id: u64,
    task: NewTask,
) -> Option<NewTask> {
    let record = match ctx.results().prepare_attach(task_id, client) {
        Ok(record) => record,
        Err(Attach::AtLimit(limit)) => {
            ctx.metrics().attach("refused");
            reject(
                ctx,
                client,
                task.reference.as_ref(),
                failures::attach_limit(limit),
            )
            .await;
            return None;
        }
        Err(_) => return Some(task),
    };
    ctx.metrics().attach("same_key");
    client
        .send(&Reply::Accepted {
            task_id,
            task: &record.task,
            reference: task.reference.as_ref(),
            limits: record.limits,
        })
        .await;
    follow(ctx, client, &record).await;
    None
}

/// `attach`: the task's state as `attached`, then its remaining progress and its terminal
/// message (at once, for a task that has ended); `not_found` for an unknown or expired id.
pub async fn attach<A: App>(ctx: &Ctx<A>, client: &Outbox, task_id: u64) {
    let record = match ctx.results().prepare_attach(task_id, client) {
        Ok(record) => record,
        Err(Attach::AtLimit(limit)) => {
            ctx.metrics().attach("refused");
            let error = failures::attach_limit(limit);
            client.send(&Reply::Error { error: &error }).await;
            return;
        }
        Err(_) => {
            ctx.metrics().attach("not_found");
            let error = failures::unknown_task_id(task_id);
            client.send(&Reply::Error { error: &error }).await;
            return;
        }
    };
    ctx.metrics().attach(record.state.name());
    client
        .send(&Reply::Attached {
            task_id,
            task: &record.task,
            reference: record.reference.as_ref(),
            state: record.state.name(),
        })
        .await;
    follow(ctx, client, &record).await;
}

/// The second step of an attach, once the client has its answer: from now on it gets the
/// task's messages, or at once its terminal message.
async fn follow<A: App>(ctx: &Ctx<A>, client: &Outbox, record: &TaskRecord) {
    match ctx.results().attach(record.task_id, client) {
        Attach::Watching | Attach::AlreadyHears => {}
        Attach::Ended(message) => {
            client.send_text(message).await;
        }
        // Expired between the two steps: the answer said it was there, so say it is gone.
        Attach::NotFound | Attach::AtLimit(_) => {
            let error = failures::unknown_task_id(record.task_id);
            client.send(&Reply::Error { error: &error }).await;
        }
    }
}

/// Answers a task frame with `rejected`, and counts it.
pub async fn reject<A: App>(
    ctx: &Ctx<A>,
    client: &Outbox,
    reference: Option<&Ref>,
    error: WireError,
) {
    ctx.metrics().task_rejected(error.code.as_str());
    tracing::info!(code = %error.code, error = %clip(&error.message), "task rejected");
    client
        .send(&Reply::Rejected {
            reference,
            error: &error,
        })
        .await;
}

/// `finish`: sends `finished` or `failed` to the submitting connection, if it is still open;
/// a task delivered by `broadcast` also sends its result to every open connection first.
pub async fn deliver<A: App>(ctx: &Ctx<A>, report: Report) {
    let job = &report.job;
    job.flush_progress().await;
    if let (Delivery::Broadcast, Outcome::Finished { result, .. }) =
        (job.delivery(), &report.outcome)
    {
        // Offered, never awaited: a reader that is behind misses it, and the submitter's
        // terminal message below never waits on the others.
        ctx.broadcast(&Reply::Broadcast {
            task_id: job.task_id,
            task: job.name(),
            result,
        });
    }
    // A closed connection cannot be told; the outcome is already logged and counted.
    if let Some(submitter) = &job.submitter {
        submitter.send_text(report.terminal_text()).await;
    }
}

/// The `finished` or `failed` message for a task's end.
pub fn terminal_reply(report: &Report) -> Reply<'_> {
    report.terminal_reply()
}
