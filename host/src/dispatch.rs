//! Admission and scheduling of tasks: task ids, the queue bound, the running-task permits,
//! cancel handles and the shutdown of tasks.
//!
//! Design: a task is first *admitted* ([`Dispatcher::admit`]), which takes a place in the queue and
//! an id and registers its cancel token; the caller then announces it (`accepted`), takes its
//! turn for a worker ([`Admission::take_turn`], in the order the connection sent its tasks)
//! and hands it to [`Dispatcher::run`], which waits for one of `task_workers` permits
//! ([`crate::workers`]: each connection's tasks start in order, and connections take turns),
//! runs it, and races it against its cancel token. When the shutdown grace period ends,
//! [`Dispatcher::stop_running`] cancels every admitted task's token, so one `select!` serves
//! both a client's cancel and the shutdown. (Each token stands alone, not as a child of a
//! server-wide one: a child token links itself into its parent under the parent's lock,
//! which every task on every thread took twice.) Queued tasks also watch
//! `stop_starting`, cancelled when the shutdown begins, so they fail at once.
//!
//! Background work that needs a worker permit (warming the sandbox pool) borrows one with
//! [`Dispatcher::lend`] and gives it back when [`Dispatcher::reclaimed`] fires: as soon as a
//! task has to wait for a permit, or the server stops. Tasks never wait on a loan.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tokio_util::sync::CancellationToken;

use crate::workers::{Permit, Place, Ticket, Workers};

/// How much longer than its wall-clock limit a task may run before the dispatcher ends it,
/// for `task` callbacks that do not enforce the limit themselves.
pub const TIMEOUT_BACKSTOP: Duration = Duration::from_millis(50);

/// Who submitted a task, as the dispatcher counts and orders tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The connection: the only one allowed to cancel the task.
    pub connection: u64,
    /// The client's address: tasks wait for a worker in one line per address, so that
    /// opening many connections gets a client no more turns.
    pub address: IpAddr,
}

/// The dispatcher's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Tasks running at once.
    pub task_workers: usize,
    /// Tasks waiting beyond those running.
    pub queue: usize,
    /// Tasks one connection may have admitted at once (0: no limit).
    pub per_connection: usize,
    /// Tasks one address may have admitted at once; `None`: `per_connection` for addresses
    /// off this machine, no limit for loopback (and for the application's own tasks).
    pub per_address: Option<usize>,
    /// Bytes of task input admitted tasks may hold together.
    pub input_bytes: u64,
}

/// A task's cancel handle, kept while it is queued or running.
struct CancelHandle {
    owner: Owner,
    /// Its input's size, counted against [`Caps::input_bytes`].
    bytes: u64,
    token: CancellationToken,
}

pub struct Dispatcher {
    /// The next task id: unique and increasing for the server's whole run.
    next_task_id: AtomicU64,
    task_workers: usize,
    /// Workers for running tasks; a queued task waits here, in its address's line.
    workers: Workers,
    /// Cancelled when a task waits for a permit or the server stops: permits lent to
    /// background work must come back.
    reclaim: CancellationToken,
    /// Permits out that run no task: lent to background work, or kept by a task past its
    /// run ([`Dispatcher::run_keeping_worker`]). `load` does not count them as running.
    lent: Arc<AtomicUsize>,
    /// Tasks admitted and not yet ended (queued or running), and the most there may be.
    admitted: AtomicUsize,
    capacity: usize,
    /// Std mutex: held only to insert, remove or look up a handle, never across an `.await`.
    handles: Mutex<Handles>,
    /// Bounds per connection, per address and on input bytes, so that no client can take
    /// the whole pool and queue.
    caps: Caps,
    /// Cancelled when the server stops taking tasks: new ones are refused with `shutdown`.
    stop_admitting: CancellationToken,
    /// Cancelled when the grace period ends: queued tasks end with `shutdown`.
    stop_starting: CancellationToken,
    /// Cancelled when the grace period ends, with every admitted task's own token (running
    /// tasks end with `shutdown`); a task admitted after it finds its token cancelled.
    stop_running: CancellationToken,
}

/// The tasks admitted and not ended: their cancel handles, how many each connection and each
/// address has, and the bytes of input they hold.
#[derive(Default)]
struct Handles {
    // Task and connection ids are the server's own counters, never a client's choice, so a
    // fast hash of them cannot be steered into collisions; addresses keep std's keyed hash
    // (a client with an IPv6 prefix chooses many).
    by_task: FxHashMap<u64, CancelHandle>,
    per_connection: FxHashMap<u64, usize>,
    per_address: HashMap<IpAddr, usize>,
    bytes: u64,
}

/// One less for `key` in `counts`, forgetting keys that reach zero.
fn decrement<K: Hash + Eq, S: BuildHasher>(counts: &mut HashMap<K, usize, S>, key: &K) {
    if let Some(count) = counts.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(key);
        }
    }
}

/// A task that holds a place in the queue and an id, not yet running. Dropping it frees the
/// place.
pub struct Admission {
    dispatcher: Arc<Dispatcher>,
    pub task_id: u64,
    /// Who submitted the task: its address's line is where it waits for a permit.
    owner: Owner,
    token: CancellationToken,
    /// Its turn for a worker, once taken ([`Admission::take_turn`]) and until it runs.
    turn: Option<Ticket>,
}

impl Admission {
    /// Takes the task's turn for a worker now: a free permit, or its place in its
    /// connection's line. Called where a connection's tasks are started, one after another,
    /// so that they start in the order it sent them: taken in each task's own future, the
    /// turn went to whichever future a thread polled first.
    pub fn take_turn(&mut self) {
        let turn = self.turn();
        self.turn = Some(turn);
    }

    /// Whether the turn taken ([`Admission::take_turn`]) is a worker: the task runs as soon
    /// as a thread polls it, without waiting in line.
    pub fn has_worker(&self) -> bool {
        matches!(self.turn, Some(Ticket::Now(_)))
    }

    /// The turn taken before, or a new one: a free permit, or the end of the line.
    fn turn(&mut self) -> Ticket {
        self.turn.take().unwrap_or_else(|| {
            self.dispatcher.workers.join(Place {
                address: self.owner.address,
                connection: self.owner.connection,
            })
        })
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("task_id", &self.task_id)
            .finish()
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut handles = self.dispatcher.lock_handles();
        if let Some(handle) = handles.by_task.remove(&self.task_id) {
            decrement(&mut handles.per_connection, &handle.owner.connection);
            decrement(&mut handles.per_address, &handle.owner.address);
            handles.bytes -= handle.bytes;
        }
        drop(handles);
        self.dispatcher.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A worker permit that runs no task: lent to background work, or kept by a task past its
/// run until its answer is out. It counts as no running task; dropping it gives it back.
pub struct Loan {
    _permit: Permit,
    lent: Arc<AtomicUsize>,
}

impl Drop for Loan {
    fn drop(&mut self) {
        self.lent.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a task was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server is shutting down.
    ShuttingDown,
    /// Every worker is busy and the queue is full.
    AtCapacity { running: usize, waiting: usize },
    /// The submitting connection has `limit` tasks queued or running already.
    ConnectionAtLimit { limit: usize },
    /// The submitting address has `limit` tasks queued or running already.
    AddressAtLimit { limit: usize },
    /// Admitted tasks hold `limit` bytes of input between them already.
    InputBytesFull { limit: u64 },
}

/// Why a task stopped before its own end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Its submitter cancelled it.
    Cancelled,
    /// The server shut down before it could finish.
    Shutdown,
    /// It ran past its wall-clock limit (plus [`TIMEOUT_BACKSTOP`]) without ending itself.
    TimedOut { limit: Duration },
}

/// The counts `stats` and `/metrics` report.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub queued: u64,
    pub running: u64,
}

impl Dispatcher {
    /// A dispatcher within `caps`.
    pub fn new(caps: Caps) -> Dispatcher {
        let stop_admitting = CancellationToken::new();
        Dispatcher {
            next_task_id: AtomicU64::new(1),
            task_workers: caps.task_workers,
            workers: Workers::new(caps.task_workers),
            reclaim: stop_admitting.child_token(),
            lent: Arc::new(AtomicUsize::new(0)),
            admitted: AtomicUsize::new(0),
            capacity: caps.task_workers.saturating_add(caps.queue),
            handles: Mutex::new(Handles::default()),
            caps,
            stop_admitting,
            stop_starting: CancellationToken::new(),
            stop_running: CancellationToken::new(),
        }
    }

    pub fn task_workers(&self) -> usize {
        self.task_workers
    }

    /// Numbers this dispatcher's own ids from `first`: with `--nats`, the broker numbers the
    /// clients' tasks from 1, and an application's own tasks must not take their ids.
    pub fn number_from(&self, first: u64) {
        self.next_task_id.store(first, Ordering::Relaxed);
    }

    pub fn load(&self) -> Load {
        let admitted = self.admitted.load(Ordering::Acquire);
        // Read apart, the two counts can be a loan out of step: never below zero.
        let running = (self.task_workers - self.workers.free())
            .saturating_sub(self.lent.load(Ordering::Acquire));
        Load {
            queued: admitted.saturating_sub(running) as u64,
            running: running as u64,
        }
    }

    /// Takes a place in the queue and an id for a task from `owner` with `input_bytes` of
    /// input, or says why not.
    pub fn admit(self: &Arc<Self>, owner: Owner, input_bytes: u64) -> Result<Admission, Refusal> {
        self.admit_as(owner, input_bytes, None)
    }

    /// [`Dispatcher::admit`] under an id given from outside (`--nats`: the broker's), or
    /// the next of this dispatcher's own with `None`.
    pub fn admit_as(
        self: &Arc<Self>,
        owner: Owner,
        input_bytes: u64,
        task_id: Option<u64>,
    ) -> Result<Admission, Refusal> {
        if self.stop_admitting.is_cancelled() {
            return Err(Refusal::ShuttingDown);
        }
        let reserved = self
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(Refusal::AtCapacity {
                running: self.task_workers,
                waiting: self.capacity - self.task_workers,
            });
        }
        let mut handles = self.lock_handles();
        if let Err(refusal) = self.within_caps(&handles, owner, input_bytes) {
            drop(handles);
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(refusal);
        }
        *handles.per_connection.entry(owner.connection).or_default() += 1;
        *handles.per_address.entry(owner.address).or_default() += 1;
        handles.bytes += input_bytes;
        let task_id = task_id.unwrap_or_else(|| self.next_task_id.fetch_add(1, Ordering::Relaxed));
        let token = CancellationToken::new();
        // Checked under the handles' lock, which `stop_running` takes to cancel every token:
        // either it finds this task, or this task finds the server stopped.
        if self.stop_running.is_cancelled() {
            token.cancel();
        }
        handles.by_task.insert(
            task_id,
            CancelHandle {
                owner,
                bytes: input_bytes,
                token: token.clone(),
            },
        );
        drop(handles);
        Ok(Admission {
            dispatcher: Arc::clone(self),
            task_id,
            owner,
            token,
            turn: None,
        })
    }

    /// Whether one more task from `owner` fits the per-connection, per-address and byte caps.
    fn within_caps(
        &self,
        handles: &Handles,
        owner: Owner,
        input_bytes: u64,
    ) -> Result<(), Refusal> {
        let caps = &self.caps;
        let connection_count = handles.per_connection.get(&owner.connection).copied();
        if caps.per_connection > 0 && connection_count.unwrap_or(0) >= caps.per_connection {
            return Err(Refusal::ConnectionAtLimit {
                limit: caps.per_connection,
            });
        }
        let local = owner.address.is_loopback() || owner.address.is_unspecified();
        let per_address = match caps.per_address {
            Some(limit) => limit,
            None if local => 0,
            None => caps.per_connection,
        };
        let address_count = handles.per_address.get(&owner.address).copied();
        if per_address > 0 && address_count.unwrap_or(0) >= per_address {
            return Err(Refusal::AddressAtLimit { limit: per_address });
        }
        if handles.bytes.saturating_add(input_bytes) > caps.input_bytes {
            return Err(Refusal::InputBytesFull {
                limit: caps.input_bytes,
            });
        }
        Ok(())
    }

    /// [`Dispatcher::run_keeping_worker`], the permit dropped at once.
    #[cfg(test)]
    pub async fn run<F: Future>(
        &self,
        admission: &mut Admission,
        timeout: Duration,
        task: F,
    ) -> (Result<F::Output, Stopped>, Duration) {
        let (output, elapsed, _worker) = self.run_keeping_worker(admission, timeout, task).await;
        (output, elapsed)
    }

    /// Waits for a worker, runs `task` and returns its output, or why it stopped first, how
    /// long it ran (time in the queue excluded), and the worker permit it ran with (`None` if
    /// it stopped before it had one). A cancel or a shutdown drops the task's future, which
    /// stops a sandboxed guest at its next yield. So does the wall-clock limit `timeout`, for
    /// any `task` callback: the sandbox enforces it itself (to report the fuel used), so this
    /// one waits [`TIMEOUT_BACKSTOP`] longer and only catches callbacks that do not.
    ///
    /// The admission is only borrowed: a task that runs again (a retry) keeps its place and
    /// runs through here once per attempt, with the turn taken at its start
    /// ([`Admission::take_turn`]) the first time, and a new one each retry.
    ///
    /// The permit comes back for a caller that holds on to what the run left behind (a spent
    /// sandbox, whose pool slot the permit stands for) until the task's answer is out: drop
    /// it after that, and before the task waits for anything else. Once the run is over the
    /// permit counts as no running task (`stats` and /metrics say the task is not running as
    /// soon as its answer can reach anyone).
    pub async fn run_keeping_worker<F: Future>(
        &self,
        admission: &mut Admission,
        timeout: Duration,
        task: F,
    ) -> (Result<F::Output, Stopped>, Duration, Option<Loan>) {
        let permit = match admission.turn() {
            Ticket::Now(permit) => permit,
            Ticket::InLine(waiting) => {
                // Busy: whatever background work borrowed permits gives them back now.
                self.reclaim.cancel();
                tokio::select! {
                    biased;
                    () = admission.token.cancelled() => return (Err(self.why_stopped()), Duration::ZERO, None),
                    () = self.stop_starting.cancelled() => return (Err(self.why_stopped()), Duration::ZERO, None),
                    permit = waiting.permit() => permit,
                }
            }
        };
        let started = Instant::now();
        let output = tokio::select! {
            biased;
            () = admission.token.cancelled() => Err(self.why_stopped()),
            output = tokio::time::timeout(timeout + TIMEOUT_BACKSTOP, task) => {
                output.map_err(|_| Stopped::TimedOut { limit: timeout })
            }
        };
        (output, started.elapsed(), Some(self.idle(permit)))
    }

    /// Waits `delay` between two attempts of a task, holding its place in the queue but no
    /// worker; ends early, with why, if the task is cancelled or the server stops starting
    /// tasks.
    pub async fn pause(&self, admission: &Admission, delay: Duration) -> Result<(), Stopped> {
        tokio::select! {
            biased;
            () = admission.token.cancelled() => Err(self.why_stopped()),
            () = self.stop_starting.cancelled() => Err(self.why_stopped()),
            () = tokio::time::sleep(delay) => Ok(()),
        }
    }

    /// A free worker permit for background work, if no task needs it: `None` once the permits
    /// are reclaimed or none is free. Give it back when [`Dispatcher::reclaimed`] fires.
    pub fn lend(&self) -> Option<Loan> {
        if self.reclaim.is_cancelled() {
            return None;
        }
        let permit = self.workers.try_take()?;
        Some(self.idle(permit))
    }

    /// `permit`, counted from now on as running no task.
    fn idle(&self, permit: Permit) -> Loan {
        self.lent.fetch_add(1, Ordering::AcqRel);
        Loan {
            _permit: permit,
            lent: Arc::clone(&self.lent),
        }
    }

    /// Fires when lent permits must come back: a task is waiting for one, or the server stops.
    pub fn reclaimed(&self) -> CancellationToken {
        self.reclaim.clone()
    }

    /// Cancels task `task_id` for connection `connection`. Returns `false` when it has no
    /// such task queued or running.
    pub fn cancel(&self, connection: u64, task_id: u64) -> bool {
        match self.lock_handles().by_task.get(&task_id) {
            Some(handle) if handle.owner.connection == connection => {
                handle.token.cancel();
                true
            }
            _ => false,
        }
    }

    /// Takes no new tasks (they are refused with `shutdown`); queued ones still run.
    pub fn stop_admitting(&self) {
        self.stop_admitting.cancel();
    }

    /// Starts no more tasks: queued ones end with `shutdown`.
    pub fn stop_starting(&self) {
        self.stop_admitting.cancel();
        self.stop_starting.cancel();
    }

    /// Ends the grace period: running tasks end with `shutdown`.
    pub fn stop_running(&self) {
        self.stop_running.cancel();
        for handle in self.lock_handles().by_task.values() {
            handle.token.cancel();
        }
    }

    /// Why a task's token fired: the shutdown, or its submitter's cancel.
    fn why_stopped(&self) -> Stopped {
        if self.stop_starting.is_cancelled() {
            Stopped::Shutdown
        } else {
            Stopped::Cancelled
        }
    }

    fn lock_handles(&self) -> std::sync::MutexGuard<'_, Handles> {
        // Poisoning needs a panic while the lock is held; the maps stay usable.
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dispatcher(task_workers: usize, queue: usize, per_connection: usize) -> Arc<Dispatcher> {
        Arc::new(Dispatcher::new(Caps {
            task_workers,
            queue,
            per_connection,
            per_address: None,
            input_bytes: u64::MAX,
        }))
    }

    /// A connection from a loopback address (no per-address cap by default).
    fn local(connection: u64) -> Owner {
        Owner {
            connection,
            address: "127.0.0.1".parse().unwrap(),
        }
    }

    /// The end of the grace period stops every task admitted before it, running or queued,
    /// and any admitted after it (each task's token stands alone: `stop_running` cancels
    /// them one by one).
    #[tokio::test]
    async fn the_end_of_the_grace_period_stops_every_task() {
        let dispatcher = dispatcher(1, 10, 0);
        let mut running = dispatcher.admit(local(1), 0).unwrap();
        let queued = dispatcher.admit(local(2), 0).unwrap();
        let run = dispatcher.run(
            &mut running,
            Duration::from_secs(60),
            std::future::pending::<()>(),
        );
        tokio::pin!(run);
        assert!(
            futures_util::poll!(run.as_mut()).is_pending(),
            "it holds the worker"
        );
        dispatcher.stop_running();
        // Bounded: without the cancel, the task would run into its wall-clock limit instead.
        let (output, _) = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the running task stopped at once");
        assert!(
            matches!(output, Err(Stopped::Cancelled)),
            "the running task stopped"
        );
        assert!(queued.token.is_cancelled(), "so will the queued one");
        let late = dispatcher.admit(local(3), 0).unwrap();
        assert!(late.token.is_cancelled(), "and one admitted after");
    }

    #[test]
    fn ids_increase_and_the_queue_is_bounded() {
        let dispatcher = dispatcher(1, 1, 0);
        let first = dispatcher.admit(local(1), 0).unwrap();
        let second = dispatcher.admit(local(1), 0).unwrap();
        assert!(second.task_id > first.task_id);
        assert!(matches!(
            dispatcher.admit(local(1), 0).unwrap_err(),
            Refusal::AtCapacity { .. }
        ));
        drop(first);
        let third = dispatcher.admit(local(1), 0).unwrap();
        assert!(third.task_id > second.task_id);
    }

    #[test]
    fn one_connection_may_not_take_every_place() {
        let dispatcher = dispatcher(2, 10, 2);
        let first = dispatcher.admit(local(1), 0).unwrap();
        let _second = dispatcher.admit(local(1), 0).unwrap();
        let refused = dispatcher.admit(local(1), 0).unwrap_err();
        assert_eq!(refused, Refusal::ConnectionAtLimit { limit: 2 });
        let _other = dispatcher
            .admit(local(2), 0)
            .expect("another connection still gets in");
        drop(first);
        dispatcher
            .admit(local(1), 0)
            .expect("a place of its own came free");
    }

    #[test]
    fn many_connections_from_one_address_share_its_cap() {
        let dispatcher = dispatcher(2, 10, 2);
        let remote = |connection| Owner {
            connection,
            address: "192.0.2.1".parse().unwrap(),
        };
        let _a = dispatcher.admit(remote(1), 0).unwrap();
        let _b = dispatcher.admit(remote(2), 0).unwrap();
        assert_eq!(
            dispatcher.admit(remote(3), 0).unwrap_err(),
            Refusal::AddressAtLimit { limit: 2 },
            "a third connection gives the address no more room"
        );
        let _c = dispatcher
            .admit(local(4), 0)
            .expect("loopback has no address cap");
        let _d = dispatcher.admit(local(5), 0).unwrap();
        let _e = dispatcher.admit(local(6), 0).unwrap();
    }

    #[test]
    fn input_bytes_are_bounded_and_given_back() {
        let dispatcher = Arc::new(Dispatcher::new(Caps {
            task_workers: 1,
            queue: 100,
            per_connection: 0,
            per_address: None,
            input_bytes: 1000,
        }));
        let big = dispatcher.admit(local(1), 600).unwrap();
        assert_eq!(
            dispatcher.admit(local(2), 500).unwrap_err(),
            Refusal::InputBytesFull { limit: 1000 }
        );
        let _small = dispatcher.admit(local(2), 400).unwrap();
        drop(big);
        dispatcher
            .admit(local(2), 500)
            .expect("the bytes came back");
    }

    #[test]
    fn only_the_owner_may_cancel() {
        let dispatcher = dispatcher(1, 1, 0);
        let admission = dispatcher.admit(local(7), 0).unwrap();
        assert!(!dispatcher.cancel(8, admission.task_id));
        assert!(dispatcher.cancel(7, admission.task_id));
        drop(admission);
        assert!(!dispatcher.cancel(7, 1));
    }

    #[test]
    fn after_stop_admitting_queued_tasks_keep_their_places() {
        let dispatcher = dispatcher(1, 1, 0);
        let queued = dispatcher.admit(local(1), 0).unwrap();
        dispatcher.stop_admitting();
        assert_eq!(
            dispatcher.admit(local(1), 0).unwrap_err(),
            Refusal::ShuttingDown
        );
        assert!(!queued.token.is_cancelled());
    }

    /// A connection's tasks run in the order their turns were taken, though their futures
    /// are polled the other way round (as two runtime threads may poll them).
    #[tokio::test]
    async fn tasks_run_in_the_order_their_turns_were_taken() {
        let dispatcher = dispatcher(1, 3, 0);
        let mut running = dispatcher.admit(local(1), 0).unwrap();
        running.take_turn();
        let (mut first, mut second) = (
            dispatcher.admit(local(1), 0).unwrap(),
            dispatcher.admit(local(1), 0).unwrap(),
        );
        first.take_turn();
        second.take_turn();
        let order = std::sync::Mutex::new(Vec::new());
        let record = |task: &'static str| {
            let order = &order;
            async move { order.lock().unwrap().push(task) }
        };
        let timeout = Duration::from_secs(5);
        let second = dispatcher.run(&mut second, timeout, record("second"));
        let first = dispatcher.run(&mut first, timeout, record("first"));
        let free = async {
            tokio::task::yield_now().await;
            drop(running);
        };
        let ((second, _), (first, _), ()) = tokio::join!(second, first, free);
        assert_eq!((first, second), (Ok(()), Ok(())));
        assert_eq!(*order.lock().unwrap(), ["first", "second"]);
    }

    /// A worker kept past its run (until the task's answer is out) is held, but the task no
    /// longer counts as running: a client that has its answer and asks `stats` is told so.
    #[tokio::test]
    async fn a_worker_kept_past_its_run_runs_no_task() {
        let dispatcher = dispatcher(1, 1, 0);
        let mut admission = dispatcher.admit(local(1), 0).unwrap();
        let (output, _, worker) = dispatcher
            .run_keeping_worker(&mut admission, Duration::from_secs(5), async { "ran" })
            .await;
        assert_eq!(output, Ok("ran"));
        drop(admission);
        assert_eq!(dispatcher.load().running, 0, "the task has ended");
        assert_eq!(dispatcher.load().queued, 0);
        assert!(dispatcher.lend().is_none(), "its worker is still kept");
        drop(worker);
        assert!(dispatcher.lend().is_some(), "and given back when dropped");
    }

    #[tokio::test]
    async fn a_waiting_task_reclaims_lent_permits() {
        let dispatcher = dispatcher(1, 1, 0);
        let loan = dispatcher.lend().expect("a free permit is lent");
        assert_eq!(dispatcher.load().running, 0, "a loan is not a running task");
        let reclaimed = dispatcher.reclaimed();
        assert!(dispatcher.lend().is_none(), "only one permit exists");
        let mut admission = dispatcher.admit(local(1), 0).unwrap();
        let give_back = async {
            reclaimed.cancelled().await;
            drop(loan);
        };
        let run = dispatcher.run(&mut admission, Duration::from_secs(5), async { "ran" });
        let ((output, _), ()) = tokio::join!(run, give_back);
        assert_eq!(output, Ok("ran"));
        assert!(dispatcher.lend().is_none(), "no loans once reclaimed");
    }
}
