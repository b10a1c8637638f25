//! The memory caps: one per task, and one for the whole server. Wasmtime asks a task's
//! [`MemoryCap`] before any linear memory or table of the task is created or grown; it
//! refuses a growth that would take the task's memories and tables together past the task's
//! `memory_bytes`, or all running tasks together past the server's [`MemoryBudget`]
//! (`--memory-budget`), and remembers that it did.
//!
//! Per task, not per memory: a component has a core instance per module, each with its own
//! memory and tables, so a cap on each memory alone would let one task hold several times
//! its limit. Wasm GC is off (`engine.rs`), so there is no GC heap to count; were it on, its
//! growth would come through here too.
//!
//! Remembering matters: a Rust guest whose allocation fails aborts, which looks like any other
//! trap (or a non-zero exit). The refusal recorded here lets the outcome say `memory_limit`.
//!
//! The budget counts what the caps granted, not what the process has mapped: the instance
//! pool keeps some memory of a freed slot resident for the next task, which no task holds.
//! A task's share goes back when its store (and so its cap) is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::ResourceLimiter;

/// Host pointer size: what a table element costs, for counting tables against the memory cap.
const TABLE_ELEMENT_BYTES: usize = size_of::<usize>();

/// The bytes of memories and tables that all running tasks may hold at once
/// (`--memory-budget`), and how many they hold now. Shared by the caps of all tasks: one
/// atomic update per growth, none per task otherwise.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    reserved: AtomicU64,
}

impl MemoryBudget {
    pub fn new(limit_bytes: u64) -> MemoryBudget {
        MemoryBudget {
            limit: limit_bytes,
            reserved: AtomicU64::new(0),
        }
    }

    /// Bytes that running tasks hold now.
    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Relaxed)
    }

    /// Takes `bytes` from the budget if they fit; says whether they did.
    fn reserve(&self, bytes: u64) -> bool {
        if bytes == 0 {
            return true;
        }
        // Relaxed: the count guards no other memory; only its own total matters.
        self.reserved
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |reserved| {
                reserved
                    .checked_add(bytes)
                    .filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `bytes` taken with [`MemoryBudget::reserve`].
    fn release(&self, bytes: u64) {
        if bytes > 0 {
            self.reserved.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}

/// Why a growth was refused, and the bytes the task would have held in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Past the task's own limit; `asked` is 0 when wasmtime failed a growth the cap allowed
    /// (past a memory's declared maximum, say) and the size is not known.
    Task { asked: u64 },
    /// Past the server's budget (`budget` bytes), with other tasks holding the rest.
    Server { asked: u64, budget: u64 },
}

/// One task's cap, in its store.
#[derive(Debug)]
pub struct MemoryCap {
    limit_bytes: usize,
    /// Bytes of the task's memories and tables that this cap granted, and took from the
    /// budget. A growth wasmtime fails after the cap allowed it (rare: the host could not map
    /// the memory) stays counted until the task ends.
    held: usize,
    budget: Arc<MemoryBudget>,
    /// The last growth that was refused, if any.
    refused: Option<Refusal>,
}

impl MemoryCap {
    pub fn new(limit_bytes: u64, budget: Arc<MemoryBudget>) -> Self {
        MemoryCap {
            limit_bytes: usize::try_from(limit_bytes).unwrap_or(usize::MAX),
            held: 0,
            budget,
            refused: None,
        }
    }

    /// Whether the task was refused memory, and why.
    pub fn refused(&self) -> Option<Refusal> {
        self.refused
    }

    /// Grants or refuses growing one memory or table from `current` to `desired` units of
    /// `unit` bytes, whose own maximum is `maximum` units.
    fn grow(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
        unit: usize,
    ) -> bool {
        let added = desired.saturating_sub(current).saturating_mul(unit);
        let total = self.held.saturating_add(added);
        if total > self.limit_bytes {
            self.refused = Some(Refusal::Task {
                asked: total as u64,
            });
            return false;
        }
        if maximum.is_some_and(|maximum| desired > maximum) {
            // Wasmtime fails this growth itself after we agree (and tells `*_grow_failed`):
            // there is nothing to count.
            return true;
        }
        if !self.budget.reserve(added as u64) {
            self.refused = Some(Refusal::Server {
                asked: total as u64,
                budget: self.budget.limit,
            });
            return false;
        }
        self.held = total;
        true
    }
}

impl Drop for MemoryCap {
    /// The task's store is gone, and its memories and tables with it.
    fn drop(&mut self) {
        self.budget.release(self.held as u64);
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired, maximum, 1))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // The limiter agreed but the instance pool could not provide the memory: for the task
        // it is the same as a refusal.
        self.refused.get_or_insert(Refusal::Task { asked: 0 });
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired, maximum, TABLE_ELEMENT_BYTES))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.refused.get_or_insert(Refusal::Task { asked: 0 });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn memories_and_tables_of_a_task_count_together() {
        let budget = Arc::new(MemoryBudget::new(u64::MAX));
        let mut cap = MemoryCap::new(4 * MIB as u64, Arc::clone(&budget));
        assert!(cap.memory_growing(0, 3 * MIB, None).unwrap());
        assert!(!cap.memory_growing(0, 3 * MIB, None).unwrap());
        assert_eq!(
            cap.refused(),
            Some(Refusal::Task {
                asked: 6 * MIB as u64
            })
        );
        assert!(cap.table_growing(0, 1000, None).unwrap());
        assert_eq!(budget.reserved(), (3 * MIB + 8000) as u64);
        drop(cap);
        assert_eq!(
            budget.reserved(),
            0,
            "a task's share goes back when it ends"
        );
    }

    #[test]
    fn a_growth_past_the_budget_is_refused_until_others_end() {
        let budget = Arc::new(MemoryBudget::new(3 * MIB as u64));
        let caps: Vec<MemoryCap> = (0..3)
            .map(|_| {
                let mut cap = MemoryCap::new(u64::MAX, Arc::clone(&budget));
                assert!(cap.memory_growing(0, MIB, None).unwrap());
                cap
            })
            .collect();
        let mut late = MemoryCap::new(u64::MAX, Arc::clone(&budget));
        assert!(!late.memory_growing(0, MIB, None).unwrap());
        assert_eq!(
            late.refused(),
            Some(Refusal::Server {
                asked: MIB as u64,
                budget: 3 * MIB as u64
            })
        );
        drop(caps);
        assert!(late.memory_growing(0, MIB, None).unwrap());
    }

    #[test]
    fn growths_past_a_declared_maximum_are_not_counted() {
        let budget = Arc::new(MemoryBudget::new(u64::MAX));
        let mut cap = MemoryCap::new(4 * MIB as u64, Arc::clone(&budget));
        // Wasmtime fails it after the cap agrees, then reports the failure.
        assert!(cap.memory_growing(0, 2 * MIB, Some(MIB)).unwrap());
        cap.memory_grow_failed(wasmtime::format_err!("past its maximum"))
            .unwrap();
        assert_eq!(budget.reserved(), 0);
        assert_eq!(cap.refused(), Some(Refusal::Task { asked: 0 }));
    }
}
