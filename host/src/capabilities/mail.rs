//! `mail`: a task sends plain-text mail through the operator's relay (`--smtp URL`, from
//! `--mail-from`), with lettre. Without `--smtp` nothing is sent: the call checks and
//! answers as if it had, with `"delivered": false, "simulated": true`.
//!
//! Request: `{"to": "a@example.com" or [addresses], "subject": "…", "body": "…"}`.
//! Response: `{"delivered": bool, "simulated": bool, "message_id": "…@taskhost",
//! "recipients": N}`.
//!
//! Caps: [`MAX_RECIPIENTS_PER_TASK`] recipients and [`MAX_MAILS_PER_TASK`] mails for one
//! task's run, and a rate of [`RATE_RECIPIENTS`] recipients a minute for each task name,
//! so that a loop of tasks cannot turn the relay into a spam cannon.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::AsyncSmtpTransportBuilder;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::{Value, json};

use super::{CallError, ErrorCode, TaskAccess};

/// Most recipients of one task's mails together.
pub const MAX_RECIPIENTS_PER_TASK: u32 = 20;

/// Most mails one task may send.
pub const MAX_MAILS_PER_TASK: u32 = 10;

/// Recipients one task name may reach in [`RATE_WINDOW`].
pub const RATE_RECIPIENTS: usize = 120;
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Longest subject, in characters, and body, in bytes.
const MAX_SUBJECT_CHARS: usize = 200;
const MAX_BODY_BYTES: usize = 64 << 10;

/// How long one mail may take at the relay (connect, TLS, SMTP dialogue).
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Mailer {
    relay: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
    /// When each task name's recent recipients were sent to, for the rate limit.
    sent: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Mailer {
    /// Checks the URL, the sender and the relay's certificate file (`ca`: `--smtp-ca`);
    /// connects to nothing yet.
    pub fn new(smtp: Option<&str>, from: &str, ca: Option<&Path>) -> anyhow::Result<Mailer> {
        let from: Mailbox = from.parse().map_err(|error| {
            anyhow::anyhow!("--mail-from {from:?} is not a mail address: {error}")
        })?;
        let relay = match smtp {
            None => None,
            Some(url) => {
                let mut relay =
                    AsyncSmtpTransport::<Tokio1Executor>::from_url(url).map_err(|error| {
                        anyhow::anyhow!(
                            "--smtp is not a relay URL ({error}): write smtp://HOST:PORT \
                         (add ?tls=required for STARTTLS), or smtps://HOST:PORT for TLS \
                         from the start; user:password@ before the host to log in"
                        )
                    })?;
                if let Some(ca) = ca {
                    relay = trusting(relay, url, ca)?;
                }
                Some(relay.timeout(Some(SMTP_TIMEOUT)).build())
            }
        };
        if smtp.is_none() && ca.is_some() {
            anyhow::bail!(
                "--smtp-ca is for the relay's TLS, and there is no relay: add --smtp URL"
            );
        }
        Ok(Mailer {
            relay,
            from,
            sent: Mutex::default(),
        })
    }

    /// Takes `count` recipients from `task`'s rate, or says when there is room again.
    fn take_rate(&self, task: &str, count: usize) -> Result<(), CallError> {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let recent = sent.entry(task.to_owned()).or_default();
        while recent
            .front()
            .is_some_and(|at| now.duration_since(*at) >= RATE_WINDOW)
        {
            recent.pop_front();
        }
        if recent.len() + count > RATE_RECIPIENTS {
            let wait = recent
                .front()
                .map_or(RATE_WINDOW, |at| RATE_WINDOW - now.duration_since(*at));
            return Err(CallError::new(
                ErrorCode::LimitReached,
                format!(
                    "task {task:?} has mailed {} recipients in the last minute, the most \
                     allowed is {RATE_RECIPIENTS}: try again in {} s",
                    recent.len(),
                    wait.as_secs() + 1
                ),
            ));
        }
        recent.extend(std::iter::repeat_n(now, count));
        Ok(())
    }
}

/// `relay` with the certificates in the PEM file `ca` trusted for its TLS, beside the public
/// roots: a private relay's CA, or its own self-signed certificate. The TLS mode (STARTTLS
/// required or opportunistic, or TLS from the start) stays the one `url` asks for.
fn trusting(
    relay: AsyncSmtpTransportBuilder,
    url: &str,
    ca: &Path,
) -> anyhow::Result<AsyncSmtpTransportBuilder> {
    let pem =
        std::fs::read(ca).with_context(|| format!("could not read --smtp-ca {}", ca.display()))?;
    let certificate = Certificate::from_pem(&pem).map_err(|error| {
        anyhow::anyhow!(
            "--smtp-ca {} holds no PEM certificate ({error})",
            ca.display()
        )
    })?;
    let parsed = url::Url::parse(url).context("--smtp is not a URL")?;
    let host = parsed
        .host_str()
        .context("--smtp names no host")?
        .to_owned();
    let parameters = TlsParameters::builder(host)
        .add_root_certificate(certificate)
        .build_rustls()
        .map_err(|error| anyhow::anyhow!("--smtp-ca {}: {error}", ca.display()))?;
    let asked = parsed
        .query_pairs()
        .find(|(key, _)| key == "tls")
        .map(|(_, value)| value.into_owned());
    let tls = match (parsed.scheme(), asked.as_deref()) {
        ("smtps", _) => Tls::Wrapper(parameters),
        (_, Some("required")) => Tls::Required(parameters),
        (_, Some("opportunistic")) => Tls::Opportunistic(parameters),
        _ => anyhow::bail!(
            "--smtp-ca is for a relay reached over TLS, and {url:?} asks for none: \
             add ?tls=required (STARTTLS), or write smtps://"
        ),
    };
    Ok(relay.tls(tls))
}

pub(super) async fn call(access: &TaskAccess, request: Value) -> Result<Value, CallError> {
    if !access.grants().mail {
        return Err(access.not_allowed("sending mail".to_owned(), "mail = true"));
    }
    let recipients = recipients(&request["to"])?;
    let subject = super::field_str(&request, "subject")?;
    if subject.chars().count() > MAX_SUBJECT_CHARS || subject.chars().any(char::is_control) {
        return Err(CallError::bad_request(format!(
            "the subject must be one line of at most {MAX_SUBJECT_CHARS} characters"
        )));
    }
    let body = super::field_str(&request, "body")?;
    if body.len() > MAX_BODY_BYTES {
        return Err(CallError::new(
            ErrorCode::TooLarge,
            format!("the body is {} bytes, over {MAX_BODY_BYTES}", body.len()),
        ));
    }
    let count = recipients.len() as u32;
    let usage = &access.usage;
    if usage.mails.fetch_add(1, Ordering::Relaxed) >= MAX_MAILS_PER_TASK {
        return Err(CallError::new(
            ErrorCode::LimitReached,
            format!("a task may send at most {MAX_MAILS_PER_TASK} mails"),
        ));
    }
    let before = usage.mail_recipients.fetch_add(count, Ordering::Relaxed);
    if before + count > MAX_RECIPIENTS_PER_TASK {
        return Err(CallError::new(
            ErrorCode::LimitReached,
            format!(
                "a task may mail at most {MAX_RECIPIENTS_PER_TASK} recipients; this one has \
                 mailed {before} and asks for {count} more"
            ),
        ));
    }
    let mailer = &access.host.mail;
    mailer.take_rate(access.task(), recipients.len())?;
    let message_id = message_id();
    let mut builder = Message::builder()
        .from(mailer.from.clone())
        .subject(subject)
        .message_id(Some(format!("<{message_id}>")))
        .header(ContentType::TEXT_PLAIN);
    for recipient in &recipients {
        builder = builder.to(recipient.clone());
    }
    let message = builder
        .body(body.to_owned())
        .map_err(|error| CallError::bad_request(format!("the mail cannot be built: {error}")))?;
    let delivered = match &mailer.relay {
        Some(relay) => {
            relay.send(message).await.map_err(|error| {
                let hint = if error.is_tls() || error.to_string().contains("certificate") {
                    " (a relay whose certificate is self-signed or from a private CA is \
                     trusted with --smtp-ca FILE)"
                } else {
                    ""
                };
                CallError::failed(format!(
                    "the mail relay did not take the mail: {error}{hint}"
                ))
            })?;
            true
        }
        None => false,
    };
    Ok(json!({
        "delivered": delivered,
        "simulated": !delivered,
        "message_id": message_id,
        "recipients": recipients.len(),
    }))
}

/// The checked recipients of `to`: one address or a list.
fn recipients(to: &Value) -> Result<Vec<Mailbox>, CallError> {
    let list: Vec<&Value> = match to {
        Value::String(_) => vec![to],
        Value::Array(list) if !list.is_empty() => list.iter().collect(),
        _ => {
            return Err(CallError::bad_request(
                "`to` must be an address or a non-empty list of addresses",
            ));
        }
    };
    if list.len() > MAX_RECIPIENTS_PER_TASK as usize {
        return Err(CallError::new(
            ErrorCode::LimitReached,
            format!("a mail may have at most {MAX_RECIPIENTS_PER_TASK} recipients"),
        ));
    }
    list.into_iter()
        .map(|value| {
            let text = value.as_str().unwrap_or_default();
            text.parse::<Mailbox>().map_err(|error| {
                CallError::bad_request(format!(
                    "recipient {} is not a mail address: {error}",
                    crate::clip::clip(&value.to_string())
                ))
            })
        })
        .collect()
}

/// `RANDOM@taskhost` (the header has it in `<>`): unique without telling anything about
/// the host.
fn message_id() -> String {
    let mut bytes = [0u8; 16];
    // Without randomness, the clock still makes it unique enough for a Message-ID.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = nanos.to_le_bytes();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}@taskhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_per_task_name_and_says_when_to_retry() {
        let mailer = Mailer::new(None, "robot@example.com", None).unwrap();
        mailer.take_rate("a", RATE_RECIPIENTS - 1).unwrap();
        mailer.take_rate("a", 1).unwrap();
        let refused = mailer.take_rate("a", 1).unwrap_err();
        assert_eq!(refused.code, ErrorCode::LimitReached);
        assert!(
            refused.message.contains("try again in"),
            "{}",
            refused.message
        );
        mailer.take_rate("b", 1).unwrap();
    }

    #[test]
    fn recipients_are_checked_and_capped() {
        assert_eq!(recipients(&json!("ann@example.com")).unwrap().len(), 1);
        assert!(recipients(&json!([])).is_err());
        assert!(recipients(&json!(["not an address"])).is_err());
        let many: Vec<String> = (0..21).map(|i| format!("u{i}@example.com")).collect();
        assert_eq!(
            recipients(&json!(many)).unwrap_err().code,
            ErrorCode::LimitReached
        );
        assert!(Mailer::new(Some("ftp://x"), "a@example.com", None).is_err());
        assert!(Mailer::new(None, "not an address", None).is_err());
    }
}
