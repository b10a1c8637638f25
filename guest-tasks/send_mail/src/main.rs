//! `send_mail`: the mail job of the original example, without the network.
//!
//! Input:
//!
//! ```json
//! {"to": ["ann@example.com", "bob@example.org"], "template": "welcome",
//!  "vars": {"name": "Ann"}, "subject": "optional: the template's own otherwise"}
//! ```
//!
//! `to` is one address or a list of up to [`MAX_RECIPIENTS`]. Every address is checked
//! (an error names the bad one and says why), duplicates (ignoring case) count once,
//! and the message is rendered from a built-in template ([`templates`]) with `vars`:
//! a `{{name}}` with no `name` in `vars` is an error naming it. Then the mail is
//! "delivered": [`DELIVERY_MS`] of sleep per recipient, with a progress report after
//! each. Nothing leaves the sandbox. The result:
//!
//! ```json
//! {"message_id": "19a7c3b2e10.5f0e3c1d2b4a6978@taskhost", "recipients": 2,
//!  "subject": "Welcome, Ann!",
//!  "preview": "Hello Ann, Welcome aboard: your account is ready. -- The taskhost team"}
//! ```
//!
//! `message_id` is the clock (hex Unix milliseconds) and a hash of the recipients,
//! subject, body and clock; `preview` is the start of the body on one line, at most
//! [`PREVIEW_CHARS`] characters.

mod address;
mod templates;

use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use taskhost_guest::{Map, Value, json, progress, run};

/// Most recipients of one mail, which also bounds the delivery time
/// (`MAX_RECIPIENTS` × [`DELIVERY_MS`], 6 s).
const MAX_RECIPIENTS: usize = 20;

/// Simulated delivery time per recipient, in milliseconds.
const DELIVERY_MS: u64 = 300;

/// The longest subject, in characters.
const MAX_SUBJECT_CHARS: usize = 200;

/// The longest preview, in characters.
const PREVIEW_CHARS: usize = 200;

/// How to call this task, for error messages.
const USAGE: &str = "send_mail takes {\"to\": [\"ann@example.com\"], \"template\": \"welcome\", \
                     \"vars\": {\"name\": \"Ann\"}} (optional: \"subject\")";

/// A mail ready to deliver.
struct Mail {
    recipients: Vec<String>,
    subject: String,
    body: String,
}

fn main() {
    run(|input| {
        let mail = compose(&input)?;
        deliver(&mail.recipients);
        let at_unix_ms = unix_ms()?;
        Ok(json!({
            "message_id": message_id(&mail, at_unix_ms),
            "recipients": mail.recipients.len(),
            "subject": mail.subject,
            "preview": preview(&mail.body),
        }))
    });
}

/// Checks the input and renders the mail.
fn compose(input: &Value) -> Result<Mail, String> {
    let Value::Object(fields) = input else {
        return Err(format!("{USAGE}; got {input}"));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|key| !matches!(key.as_str(), "to" | "subject" | "template" | "vars"))
    {
        return Err(format!("unknown field `{unknown}`: {USAGE}"));
    }
    let recipients = recipients(fields.get("to"))?;
    let template = match fields.get("template") {
        Some(Value::String(name)) => templates::find(name)?,
        None | Some(Value::Null) => {
            return Err(format!("no `template`: use one of {}", templates::names()));
        }
        Some(other) => return Err(format!("`template` must be a string, got {other}")),
    };
    let empty = Map::new();
    let vars = match fields.get("vars") {
        Some(Value::Object(vars)) => vars,
        None | Some(Value::Null) => &empty,
        Some(other) => return Err(format!("`vars` must be an object, got {other}")),
    };
    let subject = match fields.get("subject") {
        Some(Value::String(subject)) => subject.as_str(),
        None | Some(Value::Null) => template.subject,
        Some(other) => return Err(format!("`subject` must be a string, got {other}")),
    };
    let subject = check_subject(&templates::render(subject, vars, "the subject")?)?;
    let body = templates::render(
        template.body,
        vars,
        &format!("template `{}`", template.name),
    )?;
    Ok(Mail {
        recipients,
        subject,
        body,
    })
}

/// The checked recipients of `to`: one address or a list, duplicates dropped.
fn recipients(to: Option<&Value>) -> Result<Vec<String>, String> {
    let given: Vec<&Value> = match to {
        Some(Value::Array(list)) => list.iter().collect(),
        Some(one @ Value::String(_)) => vec![one],
        None | Some(Value::Null) => return Err(format!("no `to`: {USAGE}")),
        Some(other) => {
            return Err(format!(
                "`to` must be an address or a list of addresses, got {other}"
            ));
        }
    };
    if given.is_empty() {
        return Err("`to` is an empty list: give at least one address".to_owned());
    }
    if given.len() > MAX_RECIPIENTS {
        return Err(format!(
            "`to` has {} addresses; at most {MAX_RECIPIENTS} are allowed",
            given.len()
        ));
    }
    let mut recipients: Vec<String> = Vec::with_capacity(given.len());
    for (index, value) in given.into_iter().enumerate() {
        let Value::String(address) = value else {
            return Err(format!(
                "recipient {} is {value}, not an address (a string)",
                index + 1
            ));
        };
        address::check(address)
            .map_err(|why| format!("recipient {}, {address:?}, is not valid: {why}", index + 1))?;
        if !recipients
            .iter()
            .any(|seen| seen.eq_ignore_ascii_case(address))
        {
            recipients.push(address.clone());
        }
    }
    Ok(recipients)
}

/// `subject` if it fits on one line of at most [`MAX_SUBJECT_CHARS`] characters.
fn check_subject(subject: &str) -> Result<String, String> {
    let subject = subject.trim();
    if subject.is_empty() {
        return Err("the subject is empty".to_owned());
    }
    if subject.chars().any(char::is_control) {
        return Err("the subject must be one line, without control characters".to_owned());
    }
    let chars = subject.chars().count();
    if chars > MAX_SUBJECT_CHARS {
        return Err(format!(
            "the subject has {chars} characters; at most {MAX_SUBJECT_CHARS} are allowed"
        ));
    }
    Ok(subject.to_owned())
}

/// Simulates delivery: [`DELIVERY_MS`] per recipient, reporting progress after each.
fn deliver(recipients: &[String]) {
    let count = recipients.len();
    let noun = if count == 1 {
        "recipient"
    } else {
        "recipients"
    };
    progress(0.0, &format!("sending to {count} {noun}"));
    for (index, recipient) in recipients.iter().enumerate() {
        thread::sleep(Duration::from_millis(DELIVERY_MS));
        let done = index + 1;
        // Counts are at most MAX_RECIPIENTS, far below 2^52: exact as f64.
        progress(
            done as f64 / count as f64,
            &format!("delivered to {recipient} ({done} of {count})"),
        );
    }
}

/// `<hex Unix ms>.<hex hash of the mail>@taskhost`.
fn message_id(mail: &Mail, at_unix_ms: u64) -> String {
    let mut hash = Fnv1a::new();
    for recipient in &mail.recipients {
        hash.write(recipient.to_ascii_lowercase().as_bytes());
        hash.write(b"\0");
    }
    hash.write(mail.subject.as_bytes());
    hash.write(b"\0");
    hash.write(mail.body.as_bytes());
    hash.write(&at_unix_ms.to_le_bytes());
    format!("{at_unix_ms:x}.{:016x}@taskhost", hash.finish())
}

/// The start of the body on one line: runs of whitespace (line breaks too) become
/// one space, and a body longer than [`PREVIEW_CHARS`] characters is cut, ending in
/// `…`.
fn preview(body: &str) -> String {
    let flat = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= PREVIEW_CHARS {
        return flat;
    }
    let mut cut: String = flat.chars().take(PREVIEW_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// The wall clock as Unix milliseconds (WASI's clock).
fn unix_ms() -> Result<u64, String> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|err| format!("the clock is before 1970: {err}"))?;
    Ok(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// 64-bit FNV-1a: a small, stable hash (std's `DefaultHasher` may change between
/// Rust releases), good enough to tell messages apart in an id.
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mail_is_composed_from_a_template() {
        let mail = compose(&json!({
            "to": ["ann@example.com", "ANN@example.com", "bob@example.org"],
            "template": "welcome",
            "vars": {"name": "Ann"},
        }))
        .unwrap();
        assert_eq!(mail.recipients, ["ann@example.com", "bob@example.org"]);
        assert_eq!(mail.subject, "Welcome, Ann!");
        assert_eq!(
            preview(&mail.body),
            "Hello Ann, Welcome aboard: your account is ready. -- The taskhost team"
        );
    }

    #[test]
    fn one_address_and_a_subject_of_ones_own() {
        let mail = compose(&json!({
            "to": "ann@example.com",
            "subject": "Code for {{name}}",
            "template": "reset",
            "vars": {"name": "Ann", "code": 123456},
        }))
        .unwrap();
        assert_eq!(mail.recipients, ["ann@example.com"]);
        assert_eq!(mail.subject, "Code for Ann");
        assert!(mail.body.contains("123456"));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let error = |input: Value| compose(&input).err().unwrap();
        let good = |to: Value| json!({"to": to, "template": "welcome", "vars": {"name": "A"}});
        assert!(error(good(json!(["a@example.com", "bob@"]))).contains("recipient 2, \"bob@\""));
        assert!(error(good(json!([]))).contains("empty"));
        assert!(error(good(json!(vec!["a@example.com"; 21]))).contains("at most 20"));
        assert!(error(good(json!([7]))).contains("recipient 1 is 7"));
        assert!(
            error(json!({"to": "a@example.com", "template": "reset", "vars": {"name": "A"}}))
                .contains("`code`")
        );
        assert!(error(json!({"to": "a@example.com", "template": "nope"})).contains("welcome"));
        assert!(error(json!({"to": "a@example.com"})).contains("no `template`"));
        assert!(error(json!({"too": "a@example.com"})).contains("`too`"));
        assert!(error(json!("a@example.com")).contains("send_mail takes"));
        let injected = json!({"to": "a@example.com", "template": "welcome",
                              "subject": "hi\r\nBcc: x@example.com", "vars": {"name": "A"}});
        assert!(error(injected).contains("one line"));
    }

    #[test]
    fn ids_differ_by_content_and_clock() {
        let mail = |body: &str| Mail {
            recipients: vec!["a@example.com".to_owned()],
            subject: "s".to_owned(),
            body: body.to_owned(),
        };
        let id = message_id(&mail("x"), 1);
        assert_eq!(id, message_id(&mail("x"), 1));
        assert!(id.ends_with("@taskhost"));
        assert_ne!(id, message_id(&mail("y"), 1));
        assert_ne!(id, message_id(&mail("x"), 2));
    }

    #[test]
    fn the_preview_is_the_start_on_one_line() {
        assert_eq!(preview("\n  \nHello,\n\n more "), "Hello, more");
        assert_eq!(preview(&"x".repeat(200)), "x".repeat(200));
        let cut = preview(&"x".repeat(300));
        assert_eq!(cut.chars().count(), 200);
        assert!(cut.ends_with("x…"));
        assert_eq!(preview(""), "");
    }
}
