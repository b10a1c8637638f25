//! The dead letters: tasks that failed every attempt their manifest allowed, kept so that a
//! person can see what failed and why, and run it again by hand. Bounded by count
//! (`--dead-letters`) and bytes (`--dead-letter-bytes`); the oldest go first. In memory:
//! a restart empties it.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use crate::protocol::{DeadLetter, DeadLetters};

/// What a kept letter costs beyond its text fields and input.
const LETTER_OVERHEAD: u64 = 256;

/// The dead-letter list. Std mutex: held to push or copy, never across an `.await`.
pub struct DeadLetterBox {
    max_count: usize,
    max_bytes: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Each letter with the bytes it holds, oldest first.
    letters: VecDeque<(DeadLetter, u64)>,
    bytes: u64,
    total: u64,
    dropped: u64,
}

impl DeadLetterBox {
    pub fn new(max_count: usize, max_bytes: u64) -> DeadLetterBox {
        DeadLetterBox {
            max_count,
            max_bytes,
            inner: Mutex::default(),
        }
    }

    /// Keeps a letter, dropping the oldest past the bounds. A letter too big with its
    /// input is kept without it.
    pub fn push(&self, mut letter: DeadLetter) {
        let mut inner = self.lock();
        inner.total += 1;
        if self.max_count == 0 {
            inner.dropped += 1;
            return;
        }
        let mut bytes = cost(&letter);
        if bytes > self.max_bytes {
            letter.input = None;
            bytes = cost(&letter);
        }
        inner.bytes += bytes;
        inner.letters.push_back((letter, bytes));
        while inner.letters.len() > self.max_count || inner.bytes > self.max_bytes {
            let Some((_, bytes)) = inner.letters.pop_front() else {
                break;
            };
            inner.bytes -= bytes;
            inner.dropped += 1;
        }
    }

    /// The newest `count` letters, newest first, without their inputs (the dashboard's
    /// table: a second's message to every watcher should not carry every input kept).
    pub fn recent(&self, count: usize) -> DeadLetters {
        let inner = self.lock();
        DeadLetters {
            tasks: inner
                .letters
                .iter()
                .rev()
                .take(count)
                .map(|(letter, _)| DeadLetter {
                    input: None,
                    ..letter.clone()
                })
                .collect(),
            total: inner.total,
            dropped: inner.dropped,
        }
    }

    /// A copy of the list and its counters.
    pub fn snapshot(&self) -> DeadLetters {
        let inner = self.lock();
        DeadLetters {
            tasks: inner
                .letters
                .iter()
                .map(|(letter, _)| letter.clone())
                .collect(),
            total: inner.total,
            dropped: inner.dropped,
        }
    }

    /// Letters kept now, and ever.
    pub fn counts(&self) -> (usize, u64) {
        let inner = self.lock();
        (inner.letters.len(), inner.total)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Poisoning needs a panic while the lock is held; the list stays usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The bytes a letter holds.
fn cost(letter: &DeadLetter) -> u64 {
    let text = letter.task.len()
        + letter.error.message.len()
        + letter.key.as_ref().map_or(0, String::len)
        + letter.input.as_ref().map_or(0, |input| input.get().len());
    text as u64 + LETTER_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ErrorCode, WireError};

    fn letter(task_id: u64, input: &str) -> DeadLetter {
        DeadLetter {
            task_id,
            task: "t".into(),
            reference: None,
            key: None,
            attempts: 3,
            error: WireError::new(ErrorCode::Trap, "boom"),
            failed_at: String::new(),
            input: serde_json::value::RawValue::from_string(input.to_owned()).ok(),
            input_bytes: input.len() as u64,
        }
    }

    #[test]
    fn the_oldest_go_past_the_count_and_byte_bounds() {
        let letters = DeadLetterBox::new(2, 10_000);
        for id in 1..=3 {
            letters.push(letter(id, "1"));
        }
        let kept = letters.snapshot();
        assert_eq!(
            kept.tasks.iter().map(|l| l.task_id).collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!((kept.total, kept.dropped), (3, 1));

        let letters = DeadLetterBox::new(10, 1000);
        let big = format!("\"{}\"", "x".repeat(2000));
        letters.push(letter(1, &big));
        let kept = letters.snapshot();
        assert_eq!(kept.tasks.len(), 1, "kept, without its input");
        assert!(kept.tasks[0].input.is_none());
        assert_eq!(kept.tasks[0].input_bytes, 2002);
    }
}
