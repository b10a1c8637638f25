//! The JSON text of a message, built without waste: every task sends three or more
//! messages, each its own allocation.
//!
//! `serde_json::to_string` starts from 128 bytes and doubles, so a typical message (150-300
//! bytes) costs an allocation, a reallocation, and, once the writer takes it as `Bytes`
//! (whose capacity must match its length to be held without a second header), one more.
//! Here the text is written into a buffer each thread keeps, then copied once at its exact
//! length.

use std::cell::RefCell;

use serde::Serialize;

/// Buffers larger than this are not kept for the next message: one huge result must not
/// pin its size in every thread.
const KEPT_CAPACITY: usize = 64 << 10;

thread_local! {
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `value` as compact JSON, in a `String` whose capacity is its length.
pub fn to_string(value: &(impl Serialize + ?Sized)) -> serde_json::Result<String> {
    BUFFER.with(|cell| {
        // A serializer that itself encodes a message (none does) would find the buffer
        // taken: it gets a buffer of its own instead of a panic.
        let Ok(mut buffer) = cell.try_borrow_mut() else {
            return serde_json::to_string(value).map(|text| text.as_str().to_owned());
        };
        buffer.clear();
        let written = serde_json::to_writer(&mut *buffer, value);
        // serde_json writes UTF-8 only, so the check always passes; `from_utf8` checks ASCII
        // a word at a time, where `from_utf8_lossy` went byte by byte (0.8% of the echo
        // server's CPU on an Intel host).
        let text = written.and_then(|()| {
            std::str::from_utf8(&buffer)
                .map(str::to_owned)
                .map_err(serde::ser::Error::custom)
        });
        if buffer.capacity() > KEPT_CAPACITY {
            *buffer = Vec::new();
        }
        text
    })
}

/// The length in bytes of `value` as compact JSON, counted without writing it anywhere: for
/// a size check on a message that may be large (a task's 1 MiB result), before it is kept.
pub fn encoded_len(value: &(impl Serialize + ?Sized)) -> serde_json::Result<usize> {
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value)?;
    Ok(counter.0)
}

/// An `io::Write` that only counts what it is given.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoded_length_is_that_of_the_text() {
        let message =
            serde_json::json!({"type": "finished", "task_id": 7, "result": "é\"\n".repeat(50)});
        let text = serde_json::to_string(&message).unwrap();
        assert_eq!(encoded_len(&message).unwrap(), text.len());
    }

    #[test]
    fn the_text_is_serde_json_s_at_its_exact_length() {
        let message =
            serde_json::json!({"type": "finished", "task_id": 7, "result": "é".repeat(100)});
        let text = to_string(&message).unwrap();
        assert_eq!(text, serde_json::to_string(&message).unwrap());
        assert_eq!(text.capacity(), text.len());
    }

    #[test]
    fn a_huge_message_is_not_kept_in_the_buffer() {
        let huge = "x".repeat(KEPT_CAPACITY * 2);
        assert_eq!(to_string(&huge).unwrap().len(), huge.len() + 2);
        BUFFER.with(|cell| assert!(cell.borrow().capacity() <= KEPT_CAPACITY));
        assert_eq!(to_string(&1).unwrap(), "1");
    }
}
