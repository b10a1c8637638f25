//! Where a task of a module writes first in its memory, guessed from the module's layout, so
//! that pool warming can ready those pages (`sandbox/warm.rs`).
//!
//! LLVM's linker (Rust, C, Zig) lays a module's memory out as its stack (growing down from
//! its first global, `__stack_pointer`), its read-only data, its writable data (`.data`), then
//! its zeroed data (`.bss`) and the heap; only the data is in the image. And wasi-libc's
//! `malloc`, which every C and Rust WASI program uses, takes the rest of the initial memory
//! as its first chunk and writes a footer at its end. So a task's first writes land on:
//! - the stack's top page;
//! - the page holding the image's last byte (`.data`, the start of `.bss`) and the page after
//!   it (the rest of `.bss`, the allocator's first chunk), most of them after a read of the
//!   same page;
//! - the initial memory's last page.
//!
//! In a fresh slot each is a page fault; where a read came first, the write replaces a
//! read-only page-table entry, which interrupts every other core running the server to flush
//! it. Measured, those faults were the largest cost of starting 10,000 sleepers
//! (docs/PERFORMANCE.md, "The pages a task writes first, written in warming"). For a module
//! laid out otherwise the guess misses and costs a few pages a warmed slot, nothing more.

use std::ops::Range;

use wasmparser::{DataKind, Operator, Parser, Payload, ValType};

/// Pages at and after the image's end that warming writes.
const PAGES_WRITTEN_FIRST: u64 = 2;

/// What a module's binary says of where its tasks write first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layout {
    /// The end of memory 0's data image: the largest `offset + length` of its active data
    /// segments with a constant offset.
    pub image_end: Option<u64>,
    /// The stack pointer's initial value: the constant a module's first global, mutable and
    /// of the address type, starts at (LLVM's `__stack_pointer`).
    pub stack_top: Option<u64>,
}

impl Layout {
    /// Reads the layout from a module's binary; what it cannot tell (or a binary that does
    /// not parse, which a module that compiled does not do) is `None`.
    pub fn of(binary: &[u8]) -> Layout {
        let mut layout = Layout::default();
        for payload in Parser::new(0).parse_all(binary) {
            match payload {
                Ok(Payload::GlobalSection(reader)) => {
                    layout.stack_top = reader.into_iter().next().and_then(|global| {
                        let global = global.ok()?;
                        let address = matches!(global.ty.content_type, ValType::I32 | ValType::I64);
                        (global.ty.mutable && address)
                            .then(|| constant(global.init_expr.get_operators_reader().read()))
                            .flatten()
                    });
                }
                Ok(Payload::DataSection(reader)) => {
                    for data in reader.into_iter().flatten() {
                        let DataKind::Active {
                            memory_index: 0,
                            offset_expr,
                        } = data.kind
                        else {
                            continue;
                        };
                        // An offset from an imported global is not known before instantiation.
                        let Some(offset) = constant(offset_expr.get_operators_reader().read())
                        else {
                            continue;
                        };
                        let end = offset.saturating_add(data.data.len() as u64);
                        layout.image_end = layout.image_end.max(Some(end));
                    }
                }
                Ok(Payload::End(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        layout
    }
}

/// The value of a constant expression's first operator, if it is a constant address.
fn constant(operator: wasmparser::Result<Operator<'_>>) -> Option<u64> {
    match operator {
        Ok(Operator::I32Const { value }) => Some(u64::from(value.cast_unsigned())),
        Ok(Operator::I64Const { value }) => Some(value.cast_unsigned()),
        _ => None,
    }
}

/// The byte ranges of a memory of `memory_bytes` that warming writes, page-aligned, within
/// the memory, in order and apart (see the module docs): the stack's top page, the page
/// holding the image's last byte and the one after it, and the memory's last page. Nothing
/// for a module whose layout tells neither its image nor its stack.
pub fn written_first(layout: Layout, page_bytes: u64, memory_bytes: u64) -> Vec<Range<u64>> {
    let memory_end = memory_bytes / page_bytes * page_bytes;
    let page_holding = |byte: u64| byte / page_bytes * page_bytes;
    let mut wanted = Vec::new();
    if let Some(top) = layout.stack_top.filter(|&top| top > 0) {
        wanted.push((page_holding(top - 1), 1));
    }
    if let Some(end) = layout.image_end {
        wanted.push((page_holding(end.saturating_sub(1)), PAGES_WRITTEN_FIRST));
    }
    if !wanted.is_empty() {
        wanted.push((memory_end.saturating_sub(page_bytes), 1));
    }
    wanted.sort_unstable();
    let mut pages: Vec<Range<u64>> = Vec::new();
    for (start, count) in wanted {
        let end = start.saturating_add(count * page_bytes).min(memory_end);
        match pages.last_mut() {
            _ if start >= end => {}
            Some(last) if start <= last.end => last.end = last.end.max(end),
            _ => pages.push(start..end),
        }
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(text: &str) -> Vec<u8> {
        wat::parse_str(text).unwrap()
    }

    #[test]
    fn the_layout_names_the_image_s_end_and_the_stack_s_top() {
        let module = binary(
            r#"(module
                 (import "env" "base" (global $base i32))
                 (memory 2)
                 (global $sp (mut i32) (i32.const 65536))
                 (global $other (mut i32) (i32.const 4))
                 (data (i32.const 70000) "late")
                 (data (i32.const 1024) "early")
                 (data (global.get $base) "not known before instantiation")
                 (data "passive"))"#,
        );
        let layout = Layout::of(&module);
        assert_eq!(layout.image_end, Some(70_004));
        assert_eq!(layout.stack_top, Some(65_536));
        // A first global that is constant, or not an address, is no stack pointer.
        for global in [
            "(global i32 (i32.const 8))",
            "(global (mut f32) (f32.const 1))",
        ] {
            let module = binary(&format!(
                "(module {global} (global (mut i32) (i32.const 9)))"
            ));
            assert_eq!(Layout::of(&module).stack_top, None, "{global}");
        }
        assert_eq!(
            Layout::of(&binary("(module (memory 1))")),
            Layout::default()
        );
        assert_eq!(Layout::of(b"not wasm"), Layout::default());
    }

    #[test]
    fn warming_writes_the_stack_s_top_the_image_s_end_and_the_memory_s_last_page() {
        const PAGE: u64 = 4096;
        // `slow`: its stack below 1 MiB, a 20,080-byte image at 1 MiB, in a memory of 17 wasm
        // pages.
        let memory = 17 * 65_536;
        let slow = Layout {
            image_end: Some(1_048_576 + 20_080),
            stack_top: Some(1_048_576),
        };
        assert_eq!(
            written_first(slow, PAGE, memory),
            vec![
                1_048_576 - PAGE..1_048_576,
                1_048_576 + 4 * PAGE..1_048_576 + 6 * PAGE,
                memory - PAGE..memory,
            ]
        );
        // An image ending on a page boundary: its last page and the first after it; pages
        // that meet are one range.
        let image_only = Layout {
            image_end: Some(3 * PAGE),
            stack_top: None,
        };
        assert_eq!(
            written_first(image_only, PAGE, 4 * PAGE),
            vec![2 * PAGE..4 * PAGE]
        );
        // At the end of the memory, only what is in it.
        let at_the_end = Layout {
            image_end: Some(memory),
            stack_top: Some(memory + PAGE),
        };
        assert_eq!(
            written_first(at_the_end, PAGE, memory),
            vec![memory - PAGE..memory]
        );
        // Nothing known, nothing written; nor in a memory of no pages.
        assert!(written_first(Layout::default(), PAGE, memory).is_empty());
        assert!(written_first(slow, PAGE, 0).is_empty());
    }
}
