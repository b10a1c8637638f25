//! The per-task memory cap. Wasmtime asks it before a linear memory or table is created or
//! grown; it refuses past the task's `memory_bytes` and remembers that it did.
//!
//! Remembering matters: a Rust guest whose allocation fails aborts, which looks like any other
//! trap (or a non-zero exit). The refusal recorded here lets the outcome say `memory_limit`.

use wasmtime::ResourceLimiter;

/// Host pointer size: what a table element costs, for counting tables against the memory cap.
const TABLE_ELEMENT_BYTES: usize = size_of::<usize>();

#[derive(Debug)]
pub struct MemoryCap {
    limit_bytes: usize,
    /// The growth that was refused, `(current, desired)` in bytes, if any.
    refused: Option<(usize, usize)>,
}

impl MemoryCap {
    pub fn new(limit_bytes: u64) -> Self {
        MemoryCap {
            limit_bytes: usize::try_from(limit_bytes).unwrap_or(usize::MAX),
            refused: None,
        }
    }

    /// Whether the task was refused memory, and how much it asked for.
    pub fn refused(&self) -> Option<(usize, usize)> {
        self.refused
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit_bytes {
            self.refused = Some((current, desired));
            return Ok(false);
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // The limiter agreed but the instance pool could not provide the memory: for the task
        // it is the same as a refusal.
        self.refused.get_or_insert((0, 0));
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired.saturating_mul(TABLE_ELEMENT_BYTES) > self.limit_bytes {
            self.refused = Some((
                current * TABLE_ELEMENT_BYTES,
                desired.saturating_mul(TABLE_ELEMENT_BYTES),
            ));
            return Ok(false);
        }
        Ok(true)
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.refused.get_or_insert((0, 0));
        Ok(())
    }
}
