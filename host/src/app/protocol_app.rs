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
use super::context::Ctx;
use super::job::{NewTask, Outcome, Report};

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

/// `message`: answers one request: `task`, `cancel`, `list`, `stats`, `subscribe` and
/// `unsubscribe`; any other type is a `bad_request`.
pub async fn answer<A: App>(ctx: &Ctx<A>, client: &Outbox, request: Request) {
    match request {
        Request::Task(task) => submit(ctx, client, task).await,
        Request::Cancel { task_id } => {
            if let Err(error) = ctx.cancel(client, task_id) {
                client.send(&Reply::Error { error: &error }).await;
            }
        }
        Request::List => {
            let tasks = ctx.tasks();
            client.send(&Reply::List { tasks: &tasks }).await;
        }
        Request::Stats => {
            client.send(&Reply::Stats(&ctx.stats())).await;
        }
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
    let admitted = match ctx.try_admit(NewTask::from(request), Some(client)) {
        Ok(admitted) => admitted,
        Err(refused) => {
            let (mut error, task) = *refused;
            if plain_text && error.code == ErrorCode::UnknownTask {
                error.message = format!(
                    "a frame that is not a JSON object runs the default task (--default-task), \
                     {}, which cannot run: {}",
                    clip(&task.task),
                    error.message
                );
            }
            return reject(ctx, client, task.reference.as_ref(), error).await;
        }
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
        submitter.send(&terminal_reply(&report)).await;
    }
}

/// The `finished` or `failed` message for a task's end.
pub fn terminal_reply(report: &Report) -> Reply<'_> {
    let job = &report.job;
    let elapsed_ms = u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX);
    match &report.outcome {
        Outcome::Finished { result, fuel_used } => Reply::Finished {
            task_id: job.task_id,
            task: job.name(),
            reference: job.reference.as_ref(),
            result,
            elapsed_ms,
            fuel_used: *fuel_used,
        },
        Outcome::Failed { error, fuel_used } => Reply::Failed {
            task_id: job.task_id,
            task: job.name(),
            reference: job.reference.as_ref(),
            error,
            elapsed_ms,
            fuel_used: *fuel_used,
        },
    }
}
