//! The default behaviour on each event: `docs/PROTOCOL.md`. Each function is public so that
//! an application overriding a callback can still call the default for the cases it keeps.

use std::sync::Arc;

use bytes::Bytes;

use crate::connection::Connection;
use crate::protocol::{Delivery, PROTOCOL_VERSION, Ref, Reply, Request, TaskRequest, WireError};
use crate::sandbox::Outcome;
use crate::server::Server;

use super::progress::ProgressThrottle;
use super::{Job, Report};

/// `open`: greets the client with `hello`.
pub async fn greet(server: &Server, connection: &Connection) {
    connection
        .send(&Reply::Hello {
            connection_id: connection.id(),
            tasks: server.registry().ready_names(),
            version: PROTOCOL_VERSION,
        })
        .await;
}

/// `message`: answers one request.
pub async fn serve(server: &Server, connection: &Connection, request: Request) {
    match request {
        Request::Task(task) => submit(server, connection, task).await,
        Request::Cancel { task_id } => {
            if let Err(error) = server.dispatcher().cancel(connection.id(), task_id) {
                connection.send(&Reply::Error { error: &error }).await;
            }
        }
        Request::List => {
            let tasks = server.registry().listing();
            connection.send(&Reply::List { tasks: &tasks }).await;
        }
        Request::Stats => {
            connection.send(&Reply::Stats(&server.stats())).await;
        }
    }
}

/// Admits a task and starts it, or rejects it: exactly one `accepted` or `rejected`, and
/// `accepted` is queued for the client before the task can start.
pub async fn submit(server: &Server, connection: &Connection, request: TaskRequest) {
    let module = match server.registry().get(&request.task) {
        Ok(module) => module,
        Err(mut error) => {
            if request.plain_text {
                error.message = format!(
                    "a frame that is not a JSON object runs the default task (--default-task), \
                     {}, which cannot run: {}",
                    request.task, error.message
                );
            }
            return reject(server, connection, request.reference.as_ref(), error).await;
        }
    };
    let admission = match server.dispatcher().admit(connection.id()) {
        Ok(admission) => admission,
        Err(error) => return reject(server, connection, request.reference.as_ref(), error).await,
    };
    let limits = module.limits.lowered_by(request.limits);
    connection
        .send(&Reply::Accepted {
            task_id: admission.task_id,
            task: &module.name,
            reference: request.reference.as_ref(),
            limits,
        })
        .await;
    let input = match request.input {
        Some(raw) => Bytes::from(String::from(Box::<str>::from(raw))),
        None => Bytes::from_static(b"null"),
    };
    let progress = Arc::new(ProgressThrottle::new(
        connection.clone(),
        admission.task_id,
        request.reference.clone(),
    ));
    let job = Job {
        task_id: admission.task_id,
        module,
        input,
        limits,
        reference: request.reference,
        origin: connection.clone(),
        progress,
    };
    server.start_task(admission, job);
}

/// Answers a task frame with `rejected`.
pub async fn reject(
    server: &Server,
    connection: &Connection,
    reference: Option<&Ref>,
    error: WireError,
) {
    server.metrics().task_rejected(error.code.as_str());
    tracing::info!(code = %error.code, message = %error.message, "task rejected");
    connection
        .send(&Reply::Rejected {
            reference,
            error: &error,
        })
        .await;
}

/// `finish`: sends `finished` or `failed` to the submitting connection, if it is still open;
/// a task delivered by `broadcast` also sends its result to every open connection first.
pub async fn deliver(server: &Server, report: Report) {
    let job = &report.job;
    job.progress.flush();
    if let (Delivery::Broadcast, Outcome::Finished { result, .. }) =
        (job.module.deliver, &report.outcome)
    {
        let broadcast = Reply::Broadcast {
            task_id: job.task_id,
            task: job.name(),
            result,
        };
        server.connections().broadcast(broadcast.to_json()).await;
    }
    let elapsed_ms = u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX);
    let reply = match &report.outcome {
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
    };
    // A closed connection cannot be told; the outcome is already logged and counted.
    job.origin.send(&reply).await;
}
