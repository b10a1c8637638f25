//! Where a module's data image ends in its memory, read from its data segments, so that pool
//! warming can ready the pages a task of it writes first (`sandbox/warm.rs`).
//!
//! LLVM's linker (Rust, C, Zig) lays a module's memory out as its stack, its read-only data,
//! its writable data (`.data`), then its zeroed data (`.bss`) and the heap; only the first
//! three are in the image. So a task's first writes land on the page holding the image's
//! last byte (`.data`, the start of `.bss`) and the page after it (the rest of `.bss`, the
//! allocator's first chunk), and most of them after a read of the same page. In a fresh slot
//! such a write replaces a read-only page-table entry, which interrupts every other core
//! running the server to flush it: measured, the largest single cost of starting 10,000
//! sleepers (docs/PERFORMANCE.md, "The pages a task writes first, written in warming"). For
//! a module laid out otherwise the guess misses and costs two pages a warmed slot, nothing
//! more.

use std::ops::Range;

use wasmparser::{DataKind, Operator, Parser, Payload};

/// Pages at and after the image's end that warming writes.
const PAGES_WRITTEN_FIRST: u64 = 2;

/// The end of memory 0's data image: the largest `offset + length` of its active data
/// segments with a constant offset. `None` when it has none (or the bytes do not parse,
/// which a module that compiled does not do).
pub fn image_end(binary: &[u8]) -> Option<u64> {
    let mut end = None;
    for payload in Parser::new(0).parse_all(binary) {
        let reader = match payload {
            Ok(Payload::DataSection(reader)) => reader,
            Ok(Payload::End(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        for data in reader.into_iter().flatten() {
            let DataKind::Active {
                memory_index: 0,
                offset_expr,
            } = data.kind
            else {
                continue;
            };
            // An offset from an imported global is not known before instantiation.
            let offset = match offset_expr.get_operators_reader().read() {
                Ok(Operator::I32Const { value }) => u64::from(value.cast_unsigned()),
                Ok(Operator::I64Const { value }) => value.cast_unsigned(),
                _ => continue,
            };
            end = end.max(Some(offset.saturating_add(data.data.len() as u64)));
        }
    }
    end
}

/// The byte range of a memory of `memory_bytes` that warming writes: the host page holding
/// the image's last byte and the one after it, page-aligned, within the memory.
pub fn written_first(image_end: u64, page_bytes: u64, memory_bytes: u64) -> Range<u64> {
    let start = image_end.saturating_sub(1) / page_bytes * page_bytes;
    let end = start
        .saturating_add(PAGES_WRITTEN_FIRST * page_bytes)
        .min(memory_bytes / page_bytes * page_bytes);
    start.min(end)..end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(text: &str) -> Vec<u8> {
        wat::parse_str(text).unwrap()
    }

    #[test]
    fn the_image_ends_after_its_last_constant_segment() {
        let module = binary(
            r#"(module
                 (import "env" "base" (global $base i32))
                 (memory 2)
                 (data (i32.const 70000) "late")
                 (data (i32.const 1024) "early")
                 (data (global.get $base) "not known before instantiation")
                 (data "passive"))"#,
        );
        assert_eq!(image_end(&module), Some(70_004));
        assert_eq!(image_end(&binary("(module (memory 1))")), None);
        assert_eq!(image_end(b"not wasm"), None);
    }

    #[test]
    fn warming_writes_the_image_s_last_page_and_the_next_within_the_memory() {
        const PAGE: u64 = 4096;
        // `slow`: a 20,080-byte image at 1 MiB, in a memory of 17 wasm pages.
        let memory = 17 * 65_536;
        let end = 1_048_576 + 20_080;
        assert_eq!(
            written_first(end, PAGE, memory),
            1_048_576 + 4 * PAGE..1_048_576 + 6 * PAGE
        );
        // An image ending on a page boundary: its last page and the first after it.
        assert_eq!(written_first(3 * PAGE, PAGE, memory), 2 * PAGE..4 * PAGE);
        // At the end of the memory, only what is in it.
        assert_eq!(written_first(memory, PAGE, memory), memory - PAGE..memory);
        assert!(written_first(memory + PAGE, PAGE, memory).is_empty());
        assert!(written_first(10, PAGE, 0).is_empty());
    }
}
