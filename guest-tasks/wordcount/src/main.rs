//! `wordcount`: counts the words, lines and characters of a text. The bundled WASI
//! preview 2 component (target `wasm32-wasip2`).
//!
//! Input: a string, or `{"text": "..."}`. Result:
//!
//! ```json
//! {"words": 5, "lines": 2, "chars": 27, "top": [["the", 2], ["cat", 1], ...]}
//! ```
//!
//! - a word is a run of letters and digits, with apostrophes inside it (`don't`);
//! - `lines` counts lines as a person does: `"a\nb"` and `"a\nb\n"` are two, `""` none;
//! - `chars` counts Unicode scalar values;
//! - `top` is the [`TOP`] most frequent words, lower-cased, most frequent first, ties
//!   in alphabetical order.
//!
//! It reports progress through the WIT interface `taskhost:task/progress` (the guest
//! crate's `progress`) as it goes through the text, at most [`REPORTS`] times, then 1.0.

use std::collections::HashMap;

use taskhost_guest::{Value, json, progress, run};

/// How many of the most frequent words the result lists.
const TOP: usize = 5;

/// Progress reports while counting, spread evenly over the text.
const REPORTS: usize = 10;

/// How to call this task, for error messages.
const USAGE: &str = "wordcount takes a string, or {\"text\": \"...\"}";

fn main() {
    run(|input| {
        let text = text_of(&input)?;
        let counts = count(text);
        Ok(json!({
            "words": counts.words,
            "lines": counts.lines,
            "chars": counts.chars,
            "top": counts.top(TOP),
        }))
    });
}

/// The text to count: the input string, or its field `text`.
fn text_of(input: &Value) -> Result<&str, String> {
    match input {
        Value::String(text) => Ok(text),
        Value::Object(fields) => {
            if let Some(unknown) = fields.keys().find(|key| *key != "text") {
                return Err(format!("unknown field `{unknown}`: {USAGE}"));
            }
            match fields.get("text") {
                Some(Value::String(text)) => Ok(text),
                None | Some(Value::Null) => Err(format!("no `text`: {USAGE}")),
                Some(other) => Err(format!("`text` must be a string, got {other}")),
            }
        }
        other => Err(format!("{USAGE}; got {other}")),
    }
}

/// What [`count`] found.
#[derive(Debug, Default)]
struct Counts {
    words: usize,
    lines: usize,
    chars: usize,
    /// Each lower-cased word and how often it occurs.
    frequency: HashMap<String, usize>,
}

impl Counts {
    /// The `n` most frequent words as `[word, count]` pairs, most frequent first, ties
    /// in alphabetical order.
    fn top(&self, n: usize) -> Vec<(&str, usize)> {
        let mut words: Vec<(&str, usize)> = self
            .frequency
            .iter()
            .map(|(word, &count)| (word.as_str(), count))
            .collect();
        words.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        words.truncate(n);
        words
    }

    /// "counted 8 words in 2 lines", for progress reports.
    fn summary(&self) -> String {
        format!(
            "counted {} in {}",
            plural(self.words, "word"),
            plural(self.lines, "line")
        )
    }
}

/// "1 line", "2 lines".
fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("{count} {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// Counts `text` line by line, reporting progress each time another
/// 1/[`REPORTS`] of its bytes is done.
fn count(text: &str) -> Counts {
    let total = text.len().max(1);
    let mut counts = Counts::default();
    let mut done = 0;
    let mut reported = 0;
    progress(0.0, &format!("counting {}", plural(text.len(), "byte")));
    for line in text.split_inclusive('\n') {
        counts.lines += 1;
        counts.chars += line.chars().count();
        for word in words(line) {
            counts.words += 1;
            *counts.frequency.entry(word.to_lowercase()).or_default() += 1;
        }
        done += line.len();
        let tenths = done * REPORTS / total;
        if tenths > reported && tenths < REPORTS {
            reported = tenths;
            // Both at most a few MiB: exact as f64.
            progress(done as f64 / total as f64, &counts.summary());
        }
    }
    progress(1.0, &counts.summary());
    counts
}

/// The words of `text`: runs of letters and digits, with apostrophes inside them.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || is_apostrophe(c)))
        .map(|word| word.trim_matches(is_apostrophe))
        .filter(|word| !word.is_empty())
}

/// `'` or the typographic `’`.
fn is_apostrophe(c: char) -> bool {
    c == '\'' || c == '\u{2019}'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_lines_and_chars() {
        let counts = count("The cat saw the dog.\nThe dog's 'ball' ran: don't!\n");
        assert_eq!(counts.words, 10);
        assert_eq!(counts.lines, 2);
        assert_eq!(counts.chars, 50);
        assert_eq!(counts.top(3), [("the", 3), ("ball", 1), ("cat", 1)]);
    }

    #[test]
    fn lines_are_counted_as_a_person_would() {
        assert_eq!(count("").lines, 0);
        assert_eq!(count("a").lines, 1);
        assert_eq!(count("a\nb").lines, 2);
        assert_eq!(count("a\nb\n").lines, 2);
        assert_eq!(count("\n\n").lines, 2);
    }

    #[test]
    fn words_are_letters_and_digits_in_any_script() {
        let found: Vec<&str> = words("Zoë’s café, 2 x-ray ’quoted’ — ok").collect();
        assert_eq!(found, ["Zoë’s", "café", "2", "x", "ray", "quoted", "ok"]);
        assert_eq!(count("Ünïcödé").chars, 7);
    }

    #[test]
    fn input_is_a_string_or_a_text_field() {
        assert_eq!(text_of(&json!("a b")), Ok("a b"));
        assert_eq!(text_of(&json!({"text": "a b"})), Ok("a b"));
        assert!(text_of(&json!(null)).is_err());
        assert!(text_of(&json!({"txt": "a"})).unwrap_err().contains("`txt`"));
        assert!(text_of(&json!({"text": 1})).is_err());
    }
}
