//! `broadcast`: the web chat of the original example.
//!
//! Input: `{"user": "ann", "text": "hi all"}`, or a bare string, which is the text of
//! user `anonymous`. The message is checked and comes back formatted:
//!
//! ```json
//! {"user": "ann", "text": "hi all", "line": "ann: hi all", "at_unix_ms": 1767225600000}
//! ```
//!
//! Its manifest (`guest-tasks/manifests/broadcast.toml`) says `deliver = "broadcast"`,
//! so the host sends that result to every open connection, which is the chat.
//!
//! The rules, each broken one an error that says which:
//! - `text` is trimmed of surrounding whitespace, must not then be empty, and has at
//!   most [`MAX_TEXT_CHARS`] characters; line breaks and tabs are kept, other control
//!   characters are refused (a chat line must not carry terminal escapes);
//! - `user`, when given, is 1 to [`MAX_USER_CHARS`] letters, digits, `_`, `-` or `.`,
//!   and starts with a letter or digit; missing or `null` is `anonymous`;
//! - an object has no other fields, so a misspelt `txt` is reported, not ignored.

use std::time::{SystemTime, UNIX_EPOCH};

use taskhost_guest::{Value, json, run};

/// The longest message, in characters (Unicode scalar values).
const MAX_TEXT_CHARS: usize = 2000;

/// The longest user name, in characters.
const MAX_USER_CHARS: usize = 32;

/// Who speaks when no `user` is given.
const ANONYMOUS: &str = "anonymous";

/// How to call this task, for error messages.
const USAGE: &str = "broadcast takes {\"user\": \"ann\", \"text\": \"hi all\"} or a bare string";

fn main() {
    run(|input| {
        let (user, text) = parse(&input)?;
        let at_unix_ms = unix_ms()?;
        Ok(json!({
            "user": user,
            "text": text,
            "line": format!("{user}: {text}"),
            "at_unix_ms": at_unix_ms,
        }))
    });
}

/// The checked user name and text of a message.
fn parse(input: &Value) -> Result<(String, String), String> {
    let (user, text) = match input {
        Value::String(text) => (None, text),
        Value::Object(fields) => {
            if let Some(unknown) = fields.keys().find(|key| *key != "user" && *key != "text") {
                return Err(format!("unknown field `{unknown}`: {USAGE}"));
            }
            let user = match fields.get("user") {
                None | Some(Value::Null) => None,
                Some(Value::String(user)) => Some(user.as_str()),
                Some(other) => return Err(format!("`user` must be a string, got {other}")),
            };
            let text = match fields.get("text") {
                Some(Value::String(text)) => text,
                None | Some(Value::Null) => return Err(format!("no `text`: {USAGE}")),
                Some(other) => return Err(format!("`text` must be a string, got {other}")),
            };
            (user, text)
        }
        Value::Null => return Err(format!("no message: {USAGE}")),
        other => return Err(format!("{USAGE}; got {other}")),
    };
    let user = check_user(user.unwrap_or(ANONYMOUS))?;
    let text = check_text(text)?;
    Ok((user.to_owned(), text.to_owned()))
}

/// `user` if it follows the user name rules.
fn check_user(user: &str) -> Result<&str, String> {
    let chars = user.chars().count();
    if chars == 0 {
        return Err("`user` is empty: give a name, or leave `user` out".to_owned());
    }
    if chars > MAX_USER_CHARS {
        return Err(format!(
            "`user` has {chars} characters; at most {MAX_USER_CHARS} are allowed"
        ));
    }
    if !user.starts_with(char::is_alphanumeric) {
        return Err(format!(
            "`user` {user:?} must start with a letter or a digit"
        ));
    }
    if let Some(bad) = user
        .chars()
        .find(|&c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "`user` {user:?} has {bad:?}: use letters, digits, `_`, `-` and `.`"
        ));
    }
    Ok(user)
}

/// `text` without surrounding whitespace, if it follows the message rules.
fn check_text(text: &str) -> Result<&str, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the message is empty".to_owned());
    }
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(format!(
            "the message has {chars} characters; at most {MAX_TEXT_CHARS} are allowed"
        ));
    }
    if let Some(bad) = text
        .chars()
        .find(|&c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(format!(
            "the message has the control character {bad:?}: only line breaks and tabs are allowed"
        ));
    }
    Ok(text)
}

/// The wall clock as Unix milliseconds (WASI's clock: the host's time, nothing more).
fn unix_ms() -> Result<u64, String> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|err| format!("the clock is before 1970: {err}"))?;
    Ok(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(input: Value) -> Result<(String, String), String> {
        parse(&input)
    }

    #[test]
    fn a_message_is_an_object_or_a_bare_string() {
        assert_eq!(
            parsed(json!({"user": "ann", "text": " hi all\n"})),
            Ok(("ann".to_owned(), "hi all".to_owned()))
        );
        assert_eq!(
            parsed(json!("hello")),
            Ok(("anonymous".to_owned(), "hello".to_owned()))
        );
        assert_eq!(
            parsed(json!({"user": null, "text": "x"})),
            Ok(("anonymous".to_owned(), "x".to_owned()))
        );
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        assert!(parsed(json!(null)).unwrap_err().contains("no message"));
        assert!(parsed(json!(42)).is_err());
        assert!(
            parsed(json!({"user": "ann"}))
                .unwrap_err()
                .contains("`text`")
        );
        assert!(parsed(json!({"txt": "hi"})).unwrap_err().contains("`txt`"));
        assert!(parsed(json!("   ")).unwrap_err().contains("empty"));
        assert!(
            parsed(json!("a".repeat(2001)))
                .unwrap_err()
                .contains("2001")
        );
        assert!(parsed(json!("bell\u{7}")).unwrap_err().contains("control"));
        assert!(parsed(json!({"user": "", "text": "x"})).is_err());
        assert!(parsed(json!({"user": "-ann", "text": "x"})).is_err());
        assert!(
            parsed(json!({"user": "a b", "text": "x"}))
                .unwrap_err()
                .contains("' '")
        );
        assert!(parsed(json!({"user": "a".repeat(33), "text": "x"})).is_err());
    }

    #[test]
    fn names_may_be_any_script() {
        assert!(parsed(json!({"user": "Zoë_2.0", "text": "x"})).is_ok());
        assert!(parsed(json!({"user": "ирина", "text": "x"})).is_ok());
    }
}
