//! What the layers below report, said in the protocol's terms: the sandbox's [`Failure`]s,
//! the dispatcher's refusals and stops, and the registry's lookup errors become wire codes
//! and messages that tell a person what happened and what to do (naming the server's flags
//! and the `limits` a client may ask for). The lower layers know neither.

use std::time::Duration;

use crate::dispatch::{Refusal, Stopped};
use crate::protocol::{ErrorCode, WireError};
use crate::registry::LookupError;
use crate::sandbox::{Failure, RunEnd};

use super::job::Outcome;

impl From<RunEnd> for Outcome {
    fn from(end: RunEnd) -> Outcome {
        match end.result {
            Ok(result) => Outcome::Finished {
                result,
                fuel_used: end.fuel_used.unwrap_or(0),
            },
            Err(failure) => Outcome::Failed {
                error: failure_error(failure),
                fuel_used: end.fuel_used,
            },
        }
    }
}

/// A sandbox failure as the client is told it.
fn failure_error(failure: Failure) -> WireError {
    match failure {
        Failure::Timeout { limit_ms } => timeout_error(limit_ms),
        Failure::FuelExhausted { limit } => WireError::new(
            ErrorCode::FuelExhausted,
            format!(
                "the task used all its fuel ({limit} units) before finishing; ask for more \
                 `limits.fuel` (up to the server's --fuel) or give it less work"
            ),
        ),
        Failure::MemoryLimit {
            limit_bytes,
            asked_bytes,
        } => {
            let asked = asked_bytes
                .map(|bytes| format!(" (it asked for {bytes} bytes)"))
                .unwrap_or_default();
            WireError::new(
                ErrorCode::MemoryLimit,
                format!(
                    "the task needed more memory than its limit of {limit_bytes} bytes{asked} \
                     (its memories and tables together); ask for a higher \
                     `limits.memory_bytes` (up to the server's --memory) or use less memory"
                ),
            )
        }
        Failure::MemoryBudget {
            budget_bytes,
            asked_bytes,
        } => WireError::new(
            ErrorCode::MemoryLimit,
            format!(
                "the server is busy: its running tasks together hold its memory budget of \
                 {budget_bytes} bytes (--memory-budget), and this task could not have \
                 {asked_bytes} bytes within its own limit; retry later, when other tasks have \
                 ended"
            ),
        ),
        Failure::OutputTooLarge { limit_bytes } => WireError::new(
            ErrorCode::OutputTooLarge,
            format!(
                "the task wrote more than the server's output limit of {limit_bytes} bytes \
                 (--max-output, stdout and stderr together) and was stopped; return a smaller \
                 result"
            ),
        ),
        Failure::Trap { trap, stderr } if stderr.is_empty() => {
            WireError::new(ErrorCode::Trap, format!("the task trapped: {trap}"))
        }
        Failure::Trap { trap, stderr } => WireError::new(
            ErrorCode::Trap,
            format!("the task trapped: {trap}; its stderr ends with: {stderr}"),
        ),
        Failure::Exit { status, stderr } if stderr.is_empty() => WireError::new(
            ErrorCode::Exit,
            format!("the task exited with status {status} and wrote nothing to stderr"),
        ),
        Failure::Exit { status, stderr } => WireError::new(
            ErrorCode::Exit,
            format!("the task exited with status {status}: {stderr}"),
        ),
        Failure::Instantiation { error } => WireError::new(
            ErrorCode::ModuleError,
            format!("the module could not be instantiated: {error}"),
        ),
        Failure::Host { error } => WireError::internal(error),
    }
}

fn timeout_error(limit_ms: u64) -> WireError {
    WireError::new(
        ErrorCode::Timeout,
        format!(
            "the task was still running after its wall-clock limit of {limit_ms} ms; ask for a \
             higher `limits.timeout_ms` (up to the server's --timeout-ms) or give it less work"
        ),
    )
}

/// A task the dispatcher stopped before it ended by itself.
pub(crate) fn stopped(stopped: Stopped) -> Outcome {
    let error = match stopped {
        Stopped::Cancelled => WireError::new(
            ErrorCode::Cancelled,
            "the task was cancelled at your request",
        ),
        Stopped::Shutdown => WireError::new(
            ErrorCode::Shutdown,
            "the server shut down before the task could finish; submit it again once the \
             server is back",
        ),
        Stopped::TimedOut { limit } => timeout_error(limit.as_millis() as u64),
    };
    Outcome::Failed {
        error,
        fuel_used: None,
    }
}

/// A task the dispatcher would not admit.
pub(crate) fn refusal(refusal: Refusal) -> WireError {
    match refusal {
        Refusal::ShuttingDown => WireError::new(
            ErrorCode::Shutdown,
            "the server is shutting down and takes no new tasks; reconnect once it is back",
        ),
        Refusal::AtCapacity { running, waiting } => WireError::new(
            ErrorCode::QueueFull,
            format!(
                "the server is at capacity ({running} running, {waiting} waiting); retry later"
            ),
        ),
        Refusal::ConnectionAtLimit { limit } => WireError::new(
            ErrorCode::QueueFull,
            format!(
                "this connection already has {limit} tasks queued or running, the most one \
                 connection may have (--max-connection-tasks); wait for some to end"
            ),
        ),
        Refusal::AddressAtLimit { limit } => WireError::new(
            ErrorCode::QueueFull,
            format!(
                "your address already has {limit} tasks queued or running over all its \
                 connections, the most one address may have (--max-address-tasks); wait for \
                 some to end"
            ),
        ),
        Refusal::InputBytesFull { limit } => WireError::new(
            ErrorCode::QueueFull,
            format!(
                "the server holds as much task input as it may ({limit} bytes, \
                 --queue-bytes); retry later, or send smaller inputs"
            ),
        ),
    }
}

/// A task name the registry cannot serve.
pub(crate) fn lookup(error: LookupError) -> WireError {
    WireError::new(ErrorCode::UnknownTask, error.to_string())
}

/// A `cancel` for a task this connection does not have.
pub(crate) fn not_cancellable(task_id: u64) -> WireError {
    WireError::new(
        ErrorCode::NotFound,
        format!(
            "no task {task_id} of this connection is queued or running: it may have ended \
             already, or it belongs to another connection"
        ),
    )
}

/// A task an application admits whose idempotency key already names a task.
pub(crate) fn key_taken(task_id: u64) -> WireError {
    WireError::new(
        ErrorCode::BadRequest,
        format!(
            "the task's key already names task {task_id}, queued, running or ended within \
             --result-ttl: read that task's outcome (Ctx::task_record) instead of running \
             it again"
        ),
    )
}

/// An `attach` to a task the server does not know (any more).
pub(crate) fn unknown_task_id(task_id: u64) -> WireError {
    WireError::new(
        ErrorCode::NotFound,
        format!(
            "no task {task_id} is queued or running here, and no result of it is kept: the id \
             is wrong, or its result expired (--result-ttl) or was pushed out by newer ones \
             (--result-bytes)"
        ),
    )
}

/// `--nats`: the broker cannot take or answer for a task now.
pub(crate) fn broker_unavailable(url: &str, why: &str) -> WireError {
    WireError::new(
        ErrorCode::BrokerUnavailable,
        format!(
            "the task broker ({url}) is unavailable: {why}. Nothing was queued; send it again \
             in a moment (the node reconnects by itself), or to another node"
        ),
    )
}

/// A task without a key the broker did not confirm: it may have stored it.
pub(crate) fn broker_unconfirmed(url: &str, why: &str) -> WireError {
    WireError::new(
        ErrorCode::BrokerUnavailable,
        format!(
            "the task broker ({url}) did not confirm the task ({why}): it may have stored it, \
             and then the task runs once on some node without reporting here. Send tasks with \
             a `key` to be told for sure: the same key is never run twice"
        ),
    )
}

/// A keyed task the broker did not confirm in `waited`, sent again under its key meanwhile.
pub(crate) fn broker_unconfirmed_keyed(url: &str, why: &str, waited: Duration) -> WireError {
    WireError::new(
        ErrorCode::BrokerUnavailable,
        format!(
            "the task broker ({url}) did not confirm the task within {} s ({why}): it may \
             have stored it. Send it again with the same `key` once the broker is back: it is \
             accepted as the same task and runs once",
            waited.as_secs()
        ),
    )
}

/// A task over the broker's message size (with `--nats`).
pub(crate) fn task_over_broker_limit(why: &str) -> WireError {
    WireError::new(
        ErrorCode::TooLarge,
        format!(
            "the task is larger than the task broker carries ({why}): send a smaller input, \
             or raise max_payload in nats-server's configuration"
        ),
    )
}

/// A task's end over the broker's message size (with `--nats`): kept as a failure instead.
pub(crate) fn result_over_broker_limit(bytes: usize, limit: usize) -> WireError {
    WireError::new(
        ErrorCode::OutputTooLarge,
        format!(
            "the task's result message is {bytes} bytes, over the {limit} bytes the task \
             broker carries (nats-server's max_payload, less room for headers): return less, \
             or raise max_payload in nats-server's configuration"
        ),
    )
}

/// An `attach` past the connection's cap.
pub(crate) fn attach_limit(limit: usize) -> WireError {
    WireError::new(
        ErrorCode::AttachLimit,
        format!(
            "this connection is attached to {limit} running tasks, as many as one may be \
             (--max-attached): wait for some to end, or attach from another connection"
        ),
    )
}

/// A `task_wait` whose caller stopped waiting before the task ended.
pub(crate) fn wait_expired(waited_ms: u64) -> Outcome {
    Outcome::Failed {
        error: WireError::new(
            ErrorCode::Timeout,
            format!(
                "the task had not ended after the {waited_ms} ms its caller waited, time in \
                 the queue included; it was stopped"
            ),
        ),
        fuel_used: None,
    }
}

/// A callback that panicked, as its task's failure.
pub(crate) fn panicked(callback: &str, panic: &(dyn std::any::Any + Send)) -> Outcome {
    let message = panic_message(panic);
    tracing::error!(callback, panic = message, "a callback panicked");
    Outcome::Failed {
        error: WireError::internal(format!(
            "the server's {callback} callback failed ({message}); this is a bug in the server \
             or its application, not in your task: report it"
        )),
        fuel_used: None,
    }
}

/// What a panic said, when it said it as text.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}
