//! A task as the application sees it: the [`NewTask`] it asks for, the [`Job`] that runs, the
//! [`Outcome`] it ends with and the [`Report`] the `finish` callback receives.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use super::progress::ProgressThrottle;
use super::results::Tracked;
use crate::dispatch::Admission;
use crate::limits::{Limits, RequestedLimits};
use crate::outbox::Outbox;
use crate::outbox::Text;
use crate::protocol::{ErrorCode, Ref, Reply, TaskRequest, WireError};
use crate::registry::{Delivery, TaskModule};
use crate::sandbox::RunSpec;

/// A task to run, as a client's `task` message asks for one or as an application builds it
/// (`NewTask::new("fib", &30)`).
#[derive(Debug, Clone)]
pub struct NewTask {
    /// The task's name: a module in the tasks folder.
    pub task: String,
    /// The input as JSON text, for the module's stdin.
    pub input: Bytes,
    /// Limits that lower the task's own.
    pub limits: RequestedLimits,
    /// Echoed on every message about the task.
    pub reference: Option<Ref>,
    /// An idempotency key: while a task with the same key is queued, running or kept, this
    /// one does not run (see `docs/PROTOCOL.md`, `key`).
    pub key: Option<String>,
}

impl NewTask {
    /// Task `task` with `input` encoded as JSON.
    pub fn new(task: impl Into<String>, input: &impl Serialize) -> NewTask {
        let input = serde_json::to_vec(input).unwrap_or_else(|error| {
            tracing::error!(%error, "a task input JSON cannot hold; the task gets null");
            b"null".to_vec()
        });
        NewTask {
            task: task.into(),
            input: Bytes::from(input),
            limits: RequestedLimits::default(),
            reference: None,
            key: None,
        }
    }

    /// The same task with an idempotency key.
    pub fn with_key(mut self, key: impl Into<String>) -> NewTask {
        self.key = Some(key.into());
        self
    }

    /// The same task under lower limits.
    pub fn with_limits(mut self, limits: RequestedLimits) -> NewTask {
        self.limits = limits;
        self
    }

    /// The same task with a `ref`.
    pub fn with_reference(mut self, reference: Ref) -> NewTask {
        self.reference = Some(reference);
        self
    }
}

impl From<TaskRequest> for NewTask {
    fn from(request: TaskRequest) -> NewTask {
        let input = match request.input {
            Some(raw) => Bytes::from(String::from(Box::<str>::from(raw))),
            None => Bytes::from_static(b"null"),
        };
        NewTask {
            task: request.task,
            input,
            limits: request.limits,
            reference: request.reference,
            key: request.key,
        }
    }
}

/// One admitted task, as the `task` and `finish` callbacks see it.
#[derive(Debug)]
pub struct Job {
    /// Unique and increasing for the server's whole run.
    pub task_id: u64,
    /// The input as JSON text, for the module's stdin.
    pub input: Bytes,
    /// The effective limits: the task's own, lowered by what was asked.
    pub limits: Limits,
    /// The client's `ref`, echoed on every message about the task.
    pub reference: Option<Ref>,
    /// The connection that submitted the task, if a client did. It may have closed by the
    /// time the task ends.
    pub submitter: Option<Outbox>,
    /// The module version this task runs, held so a reload never touches it.
    pub(crate) module: Arc<TaskModule>,
    /// Where the task's progress reports go (to the submitter, rate-limited), if anywhere.
    pub(crate) progress: Option<Arc<ProgressThrottle>>,
    /// The attempt running now, from 1 (more after a retry, see the manifest's `retries`).
    pub(crate) attempt: AtomicU32,
    /// The attempt whose start was last said (`started`, the result store's state), 0 for
    /// none: said once an attempt, by `Ctx::start` for a task that found a worker free, else
    /// when the attempt's run begins.
    pub(crate) announced: AtomicU32,
}

impl Job {
    /// The task's name.
    pub fn name(&self) -> &str {
        &self.module.name
    }

    /// Where the task's manifest sends its result.
    pub fn delivery(&self) -> Delivery {
        self.module.deliver
    }

    /// The attempt running now, from 1: more than 1 when the task runs again after a
    /// failure its manifest retries.
    pub fn attempt(&self) -> u32 {
        self.attempt.load(Ordering::Relaxed)
    }

    /// Reports progress to the submitter as a `progress` message, rate-limited: for `task`
    /// callbacks that run code of their own (sandboxed modules report through their import).
    pub fn report_progress(&self, fraction: f64, message: &str) {
        if let Some(progress) = &self.progress {
            progress.report(fraction, message);
        }
    }

    /// Sends the last progress report held back by the rate limit, if any: due before the
    /// task's terminal message, and never dropped (it waits for room like the terminal
    /// message does).
    pub async fn flush_progress(&self) {
        if let Some(progress) = &self.progress {
            progress.flush().await;
        }
    }

    /// What the sandbox needs to run this job.
    pub(crate) fn run_spec(&self) -> RunSpec {
        RunSpec {
            name: self.module.name.clone(),
            input: self.module_input(),
            limits: self.limits,
            progress: self.progress.as_ref().map(ProgressThrottle::sink),
            capabilities: None,
        }
    }
}

impl Job {
    /// The module's stdin: the input, or with the manifest's `attempt_envelope`,
    /// `{"attempt": N, "input": …}`.
    fn module_input(&self) -> Bytes {
        if !self.module.manifest.attempt_envelope {
            return self.input.clone();
        }
        let mut envelope = format!("{{\"attempt\":{},\"input\":", self.attempt()).into_bytes();
        envelope.extend_from_slice(&self.input);
        envelope.push(b'}');
        Bytes::from(envelope)
    }
}

/// A task that holds its place in the queue and its id, not started yet: announce it (the
/// default application sends `accepted`), then hand it to `Ctx::start`. Dropping it gives the
/// place back.
#[derive(Debug)]
pub struct Admitted {
    pub(crate) admission: Admission,
    pub(crate) job: Job,
    /// Its entry in the result store, forgotten if it never ends.
    pub(crate) tracked: Tracked,
    /// The longest terminal message its destination carries, in bytes, if it has a limit
    /// of its own (a cluster's broker, `max_payload`): a longer `finished` ends the task
    /// `output_too_large` instead, before the end is counted or kept.
    pub(crate) terminal_limit: Option<usize>,
}

impl Admitted {
    pub fn job(&self) -> &Job {
        &self.job
    }
}

/// How a task ended, as the `finish` callback and `task_wait` receive it.
#[derive(Debug)]
pub enum Outcome {
    Finished {
        result: Box<RawValue>,
        /// 0 for tasks that did not run in the sandbox.
        fuel_used: u64,
    },
    Failed {
        error: WireError,
        /// Known when the task ran in a sandbox and got as far as being metered.
        fuel_used: Option<u64>,
    },
}

impl Outcome {
    /// A result computed outside the sandbox (no fuel).
    pub fn finished(result: &impl Serialize) -> Outcome {
        match serde_json::value::to_raw_value(result) {
            Ok(result) => Outcome::Finished {
                result,
                fuel_used: 0,
            },
            Err(error) => Outcome::failed(
                ErrorCode::Internal,
                format!("could not encode the result: {error}"),
            ),
        }
    }

    pub fn failed(code: ErrorCode, message: impl Into<String>) -> Outcome {
        Outcome::Failed {
            error: WireError::new(code, message),
            fuel_used: None,
        }
    }

    /// The outcome label for logs and metrics: `finished` or the error code.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Finished { .. } => "finished",
            Outcome::Failed { error, .. } => error.code.as_str(),
        }
    }

    pub fn fuel_used(&self) -> Option<u64> {
        match self {
            Outcome::Finished { fuel_used, .. } => Some(*fuel_used),
            Outcome::Failed { fuel_used, .. } => *fuel_used,
        }
    }

    /// The result, if the task finished.
    pub fn result(&self) -> Option<&RawValue> {
        match self {
            Outcome::Finished { result, .. } => Some(result),
            Outcome::Failed { .. } => None,
        }
    }
}

/// A task's end, as the `finish` callback receives it.
#[derive(Debug)]
pub struct Report {
    pub job: Job,
    pub outcome: Outcome,
    /// Time from the start of the task's last attempt to its end; time in the queue (and
    /// between attempts) does not count.
    pub elapsed: Duration,
    /// How many times the task ran: 1, or more when its manifest let it retry.
    pub attempts: u32,
    /// The terminal message as encoded for the result store, so that the submitter's copy
    /// is the same bytes and is not encoded a second time.
    pub(crate) terminal: Option<Text>,
}

impl Report {
    /// Fails a finished task whose `finished` message would be longer than `limit` bytes:
    /// `output_too_large`, saying both sizes. A `failed` message is short and passes. Says
    /// whether it failed the task.
    pub(crate) fn fail_if_longer_than(&mut self, limit: usize) -> bool {
        if !matches!(self.outcome, Outcome::Finished { .. }) {
            return false;
        }
        // Encoding a reply of plain fields cannot fail (see `Reply::to_json`); if it did,
        // the message would be kept as the error reply, which is short.
        let length = crate::json::encoded_len(&self.terminal_reply()).unwrap_or(0);
        if length <= limit {
            return false;
        }
        self.outcome = Outcome::Failed {
            error: super::failures::result_over_broker_limit(length, limit),
            fuel_used: self.outcome.fuel_used(),
        };
        true
    }

    /// The `finished` or `failed` message as a frame: the one kept for `attach` when there
    /// is one, else freshly encoded.
    pub fn terminal_text(&self) -> Text {
        match &self.terminal {
            Some(text) => text.clone(),
            None => Text::from(self.terminal_reply().to_json()),
        }
    }

    /// The `finished` or `failed` message for the task's end.
    pub fn terminal_reply(&self) -> Reply<'_> {
        let job = &self.job;
        let elapsed_ms = u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX);
        match &self.outcome {
            Outcome::Finished { result, fuel_used } => Reply::Finished {
                task_id: job.task_id,
                task: job.name(),
                reference: job.reference.as_ref(),
                result,
                elapsed_ms,
                fuel_used: *fuel_used,
                attempts: self.attempts,
            },
            Outcome::Failed { error, fuel_used } => Reply::Failed {
                task_id: job.task_id,
                task: job.name(),
                reference: job.reference.as_ref(),
                error,
                elapsed_ms,
                fuel_used: *fuel_used,
                attempts: self.attempts,
            },
        }
    }
}
