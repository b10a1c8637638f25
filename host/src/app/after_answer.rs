//! What a task's run leaves behind, held until its answer is on its way.
//!
//! A sandboxed run ends with a spent store, and dropping it resets the instance's pool slot:
//! 3-4 µs on a warm core, 6-17 µs on one that has just idled (the host index's
//! `sandbox_echo_idle_reset_us`; docs/PERFORMANCE.md, "where one echo at a time goes"). No
//! client need wait for that. So a task started by [`super::Ctx::start`] keeps its spent
//! store here, then its worker permit, and drops them as its future ends, right after the
//! `finish` callback has queued its terminal message. (Yielding once more first, so that in a
//! burst of ends every answer would go before any reset, was measured and not kept: see
//! docs/PERFORMANCE.md, "The store dropped after the answer".)
//!
//! Holding is never waiting: the first time the task's future would wait for anything (a
//! slow client's full outbox, say) what it holds is dropped first, so no client can keep a
//! worker or a slot by not reading. The permit goes after the store: the pool has one slot a
//! permit, so no permit is free while its slot is taken. Outside such a task (`task_wait`,
//! the cluster's workers) nothing is held: both are dropped where they were before.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::dispatch::Loan;
use crate::sandbox::Spent;

tokio::task_local! {
    /// The running task's holdings. Kept small: every task's future carries it, asleep or
    /// not (`context::tests::a_task_s_future_stays_small`), so what is held is boxed.
    static HOLDINGS: Holdings;
}

struct Holdings {
    /// `false` where nothing is held (a `task_wait` inside a task): dropped at once.
    enabled: bool,
    held: Cell<Option<Box<Held>>>,
}

/// What a task holds. Fields drop in order: the store (and its slot), then the permit.
struct Held {
    store: Spent,
    worker: Option<Loan>,
}

/// Runs `task` (a started task's whole life) holding what its run leaves until its answer
/// is queued; see the module's comment.
pub(super) fn holding<F: Future>(task: F) -> impl Future<Output = F::Output> {
    let holdings = Holdings {
        enabled: true,
        held: Cell::new(None),
    };
    HOLDINGS.scope(holdings, ReleaseBeforeWaiting { task })
}

pin_project_lite::pin_project! {
    /// Polls a task, dropping what it holds whenever it is about to wait. A struct, not an
    /// `async fn`: that would hold the task twice.
    struct ReleaseBeforeWaiting<F> {
        #[pin]
        task: F,
    }
}

impl<F: Future> Future for ReleaseBeforeWaiting<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let poll = self.project().task.poll(cx);
        if poll.is_pending() {
            let released = HOLDINGS.try_with(|holdings| holdings.held.take());
            drop(released);
        }
        poll
    }
}

/// Runs `task` with nothing held: what its runs leave is dropped at once. For work that
/// may run inside a task's life but answers no one itself (`task_wait`).
pub(super) fn not_holding<F: Future>(task: F) -> impl Future<Output = F::Output> {
    let holdings = Holdings {
        enabled: false,
        held: Cell::new(None),
    };
    HOLDINGS.scope(holdings, task)
}

/// Keeps a run's spent store until the answer is out, or drops it now outside a task
/// that holds. A store held from an earlier run of the same task is dropped.
pub(super) fn keep_store(spent: Spent) {
    // Outside any scope the closure, and the store with it, is dropped unrun.
    let refused = HOLDINGS.try_with(|holdings| {
        if !holdings.enabled {
            return Some(spent);
        }
        let held = match holdings.held.take() {
            Some(mut held) => {
                let earlier = std::mem::replace(&mut held.store, spent);
                holdings.held.set(Some(held));
                return Some(earlier);
            }
            None => Held {
                store: spent,
                worker: None,
            },
        };
        holdings.held.set(Some(Box::new(held)));
        None
    });
    drop(refused);
}

/// Keeps the worker permit a run had while its spent store is kept; otherwise drops it.
pub(super) fn keep_worker(worker: Option<Loan>) {
    let refused = HOLDINGS.try_with(|holdings| match holdings.held.take() {
        Some(mut held) => {
            let earlier = std::mem::replace(&mut held.worker, worker);
            holdings.held.set(Some(held));
            earlier
        }
        None => worker,
    });
    drop(refused);
}

/// Drops what the task holds now: before it waits (a retry's backoff), and before another
/// run takes a slot.
pub(super) fn release() {
    let held = HOLDINGS.try_with(|holdings| holdings.held.take());
    drop(held);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::FutureExt;

    use super::{holding, keep_store, keep_worker, not_holding};
    use crate::dispatch::{Caps, Dispatcher};
    use crate::limits::Limits;
    use crate::sandbox::{EngineSettings, RunSpec, Sandbox, Spent, WasmModule};

    /// A sandbox with one instance slot, and a module that ends at once with `null`.
    fn one_slot() -> (Sandbox, WasmModule) {
        let settings = EngineSettings {
            instances: 1,
            max_memory_bytes: 64 << 20,
            memory_budget_bytes: 1 << 30,
            cache_dir: None,
            perf_map: false,
        };
        let sandbox = Sandbox::new(&settings, 1 << 16).unwrap();
        let module = sandbox
            .compile(br#"(module (memory 1) (func (export "_start")))"#)
            .unwrap();
        (sandbox, module)
    }

    /// Runs the module once if that takes no waiting: its spent store if it ran, `None` if
    /// it could not (the one slot is taken).
    fn run_now(sandbox: &Sandbox, module: &WasmModule) -> Option<Spent> {
        let spec = RunSpec {
            name: Arc::from("noop"),
            input: bytes::Bytes::new(),
            limits: Limits {
                timeout_ms: 5_000,
                fuel: 1_000_000,
                memory_bytes: 64 << 20,
            },
            progress: None,
            capabilities: None,
        };
        let (end, spent) = sandbox
            .run(module, spec)
            .now_or_never()
            .expect("a run of an empty module does not wait");
        end.result.is_ok().then_some(spent)
    }

    /// Runs the module and keeps its store, then takes the one worker and keeps it, as a
    /// task's run does.
    fn keep_a_run(sandbox: &Sandbox, module: &WasmModule, workers: &Dispatcher) {
        keep_store(run_now(sandbox, module).expect("the slot is free"));
        keep_worker(workers.lend());
    }

    /// A dispatcher with one worker.
    fn one_worker() -> Dispatcher {
        Dispatcher::new(Caps {
            task_workers: 1,
            queue: 1,
            per_connection: 0,
            per_address: None,
            input_bytes: u64::MAX,
        })
    }

    /// Whether the one worker is free (taken and given back at once to find out).
    fn worker_free(workers: &Dispatcher) -> bool {
        workers.lend().is_some()
    }

    /// The store (its slot) and the worker permit stay taken for as long as the task runs
    /// without waiting, and are given back when it ends.
    #[tokio::test]
    async fn a_task_holds_its_store_and_worker_until_it_ends() {
        let (sandbox, module) = one_slot();
        let workers = one_worker();
        holding(async {
            keep_a_run(&sandbox, &module, &workers);
            assert!(!worker_free(&workers), "the worker is held");
            assert!(run_now(&sandbox, &module).is_none(), "the slot is held");
        })
        .await;
        assert!(worker_free(&workers), "the worker is back at the end");
        assert!(run_now(&sandbox, &module).is_some(), "the slot is back");
    }

    /// A task that is about to wait (a slow client's full outbox, say) gives both back
    /// first: no client can keep a worker by not reading.
    #[tokio::test]
    async fn a_task_that_waits_gives_back_what_it_holds_first() {
        let (sandbox, module) = one_slot();
        let workers = one_worker();
        holding(async {
            keep_a_run(&sandbox, &module, &workers);
            tokio::task::yield_now().await;
            assert!(worker_free(&workers), "the worker was given back");
            assert!(
                run_now(&sandbox, &module).is_some(),
                "the slot was given back"
            );
        })
        .await;
    }

    /// A second run in the same task gives back the first run's slot; a worker is kept only
    /// beside a store; and where nothing is held (a `task_wait`) both go back at once.
    #[tokio::test]
    async fn only_a_holding_task_holds_and_only_one_store() {
        let (sandbox, module) = one_slot();
        let workers = one_worker();
        holding(async {
            keep_worker(workers.lend());
            assert!(worker_free(&workers), "no store held: the worker goes back");
            keep_store(run_now(&sandbox, &module).expect("the slot is free"));
            super::release();
            keep_store(run_now(&sandbox, &module).expect("released: the slot is free"));
        })
        .await;
        for scope in [true, false] {
            let task = async {
                keep_a_run(&sandbox, &module, &workers);
                assert!(worker_free(&workers), "the worker went back at once");
                assert!(run_now(&sandbox, &module).is_some(), "so did the slot");
            };
            if scope {
                not_holding(task).await;
            } else {
                task.await;
            }
        }
    }
}
