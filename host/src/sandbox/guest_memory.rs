//! The pointers a WASI call is given, checked and followed into the task's memory as
//! wasmtime-wasi's generated bindings (wiggle) check them: a pointer out of bounds or not
//! aligned for its type is a trap, not an errno (preview 1 says a function "shall trap"),
//! and an empty buffer is never checked, wherever it points.
//!
//! Records are read and written a field at a time at the offsets of
//! [`wasi_abi`](super::wasi_abi), so padding between fields is left as the task had it.

use wasmtime::format_err;

use super::wasi_abi::align;

/// `len` bytes at `pointer`, or a trap.
pub fn bytes(memory: &[u8], pointer: i32, len: usize) -> wasmtime::Result<&[u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    let start = pointer as u32 as usize;
    start
        .checked_add(len)
        .and_then(|end| memory.get(start..end))
        .ok_or_else(|| out_of_bounds(start, len, memory.len()))
}

pub fn bytes_mut(memory: &mut [u8], pointer: i32, len: usize) -> wasmtime::Result<&mut [u8]> {
    if len == 0 {
        return Ok(&mut []);
    }
    let start = pointer as u32 as usize;
    let size = memory.len();
    start
        .checked_add(len)
        .and_then(|end| memory.get_mut(start..end))
        .ok_or_else(|| out_of_bounds(start, len, size))
}

fn out_of_bounds(start: usize, len: usize, size: usize) -> wasmtime::Error {
    format_err!(
        "a WASI call was given {len} bytes at {start}, outside the module's memory of {size} bytes"
    )
}

/// Checks that `pointer` is aligned for a value of `align` bytes, as WASI requires.
pub fn aligned(pointer: i32, align: u32) -> wasmtime::Result<()> {
    if (pointer as u32).is_multiple_of(align) {
        Ok(())
    } else {
        Err(format_err!(
            "a WASI call was given a pointer {pointer:#x} not aligned to {align} bytes"
        ))
    }
}

/// The record of `size` bytes at `pointer`, which must be aligned to `align`, or a trap.
pub fn record(memory: &[u8], pointer: i32, size: usize, align: u32) -> wasmtime::Result<&[u8]> {
    aligned(pointer, align)?;
    bytes(memory, pointer, size)
}

pub fn record_mut(
    memory: &mut [u8],
    pointer: i32,
    size: usize,
    align: u32,
) -> wasmtime::Result<&mut [u8]> {
    aligned(pointer, align)?;
    bytes_mut(memory, pointer, size)
}

/// The address of element `index` of the array at `array`, of `size`-byte elements, or a
/// trap if it lies past the end of a 32-bit memory. Arrays are followed one element at a
/// time, as far as the call needs them: the rest may be anywhere.
pub fn element(array: i32, index: usize, size: usize) -> wasmtime::Result<i32> {
    index
        .checked_mul(size)
        .and_then(|offset| u32::try_from(offset).ok())
        .and_then(|offset| (array as u32).checked_add(offset))
        .map(|address| address as i32)
        .ok_or_else(|| {
            format_err!(
                "a WASI call was given an array at {array:#x} whose element {index} lies past \
                 the end of a 32-bit memory"
            )
        })
}

/// Writes a `$size` result (a count or a length).
pub fn write_u32(memory: &mut [u8], pointer: i32, value: u32) -> wasmtime::Result<()> {
    aligned(pointer, align::SIZE)?;
    bytes_mut(memory, pointer, 4)?.copy_from_slice(&value.to_le_bytes());
    Ok(())
}

/// Writes a `$timestamp` result.
pub fn write_u64(memory: &mut [u8], pointer: i32, value: u64) -> wasmtime::Result<()> {
    aligned(pointer, align::TIMESTAMP)?;
    bytes_mut(memory, pointer, 8)?.copy_from_slice(&value.to_le_bytes());
    Ok(())
}

/// The little-endian `u16` at `at` in `record`, which the caller sized to hold it.
pub fn read_u16(record: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([record[at], record[at + 1]])
}

pub fn read_u32(record: &[u8], at: usize) -> u32 {
    let mut value = [0; 4];
    value.copy_from_slice(&record[at..at + 4]);
    u32::from_le_bytes(value)
}

pub fn read_u64(record: &[u8], at: usize) -> u64 {
    let mut value = [0; 8];
    value.copy_from_slice(&record[at..at + 8]);
    u64::from_le_bytes(value)
}

/// Writes the little-endian bytes of a field at `at` in `record`, which the caller sized to
/// hold it.
pub fn put(record: &mut [u8], at: usize, value: &[u8]) {
    record[at..at + value.len()].copy_from_slice(value);
}
