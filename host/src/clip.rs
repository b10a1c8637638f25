//! Client-controlled text, cut short before it is logged or repeated in a message: a client
//! can send a megabyte as a task name or a header, and a log line or an error message must
//! not grow with it.

use std::borrow::Cow;

/// The most characters of client text a log line or message repeats.
pub const MAX_CHARS: usize = 200;

/// `text`, or its first [`MAX_CHARS`] characters and how long it was.
pub fn clip(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(MAX_CHARS) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}… ({} bytes)", &text[..end], text.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(1000);
        let clipped = clip(&long);
        assert!(clipped.starts_with(&"é".repeat(MAX_CHARS)), "{clipped}");
        assert!(clipped.ends_with("… (2000 bytes)"), "{clipped}");
    }
}
