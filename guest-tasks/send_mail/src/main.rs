//! `send_mail`: the mail job of the original example, through the host's mail
//! capability (its manifest grants `mail = true`).
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
//! a `{{name}}` with no `name` in `vars` is an error naming it. Then the host sends it
//! through the operator's relay (`--smtp`). A server without a relay sends nothing: the
//! delivery is simulated, [`DELIVERY_MS`] of sleep per recipient. A progress report comes
//! before and after. The result:
//!
//! ```json
//! {"delivered": true, "simulated": false, "message_id": "5f0e3c1d2b4a6978…@taskhost",
//!  "recipients": 2, "subject": "Welcome, Ann!",
//!  "preview": "Hello Ann, Welcome aboard: your account is ready. -- The taskhost team"}
//! ```
//!
//! `message_id` is the mail's Message-ID (without its `<>`); `preview` is the start of the
//! body on one line, at most [`PREVIEW_CHARS`] characters.

mod address;
mod templates;

use std::thread;
use std::time::Duration;

use taskhost_guest::{Map, Value, json, mail, progress, run};

/// Most recipients of one mail, which also bounds the delivery time
/// (`MAX_RECIPIENTS` × [`DELIVERY_MS`], 6 s).
const MAX_RECIPIENTS: usize = 20;

/// Simulated delivery time per recipient (without a relay), in milliseconds.
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
    run(|input: Value| {
        let mail = compose(&input)?;
        let sent = deliver(&mail)?;
        Ok(json!({
            "delivered": sent.delivered,
            "simulated": !sent.delivered,
            "message_id": sent.message_id,
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

/// Hands the mail to the host, reporting progress before and after; without a relay,
/// [`DELIVERY_MS`] per recipient of simulated delivery.
fn deliver(mail: &Mail) -> Result<mail::Sent, String> {
    let count = mail.recipients.len();
    let noun = if count == 1 {
        "recipient"
    } else {
        "recipients"
    };
    progress(0.0, &format!("sending to {count} {noun}"));
    let to: Vec<&str> = mail.recipients.iter().map(String::as_str).collect();
    let sent = mail::send(&to, &mail.subject, &mail.body)?;
    if !sent.delivered {
        // Counts are at most MAX_RECIPIENTS: the product is small.
        thread::sleep(Duration::from_millis(DELIVERY_MS * count as u64));
    }
    let how = if sent.delivered {
        "delivered"
    } else {
        "simulated delivery"
    };
    progress(1.0, &format!("{how} to {count} {noun}"));
    Ok(sent)
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
    fn the_preview_is_the_start_on_one_line() {
        assert_eq!(preview("\n  \nHello,\n\n more "), "Hello, more");
        assert_eq!(preview(&"x".repeat(200)), "x".repeat(200));
        let cut = preview(&"x".repeat(300));
        assert_eq!(cut.chars().count(), 200);
        assert!(cut.ends_with("x…"));
        assert_eq!(preview(""), "");
    }
}
