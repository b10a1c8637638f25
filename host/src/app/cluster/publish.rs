//! Sending a task to the work-queue stream and learning whether the broker stored it.
//!
//! A publish whose confirmation never comes (the broker stopped, or froze, between taking the
//! message and answering) leaves the node not knowing: the broker may have stored the task,
//! and then some node runs it. A task with an idempotency key is sent again under the same
//! `Nats-Msg-Id` until the broker answers, since the broker stores it once whatever the number
//! of copies: it ends accepted, never refused while it runs. A task without a key cannot be
//! told from a new one, so it is refused with an answer that says it may still run.

use std::fmt::Write as _;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use tokio::time::Instant;

use super::Cluster;
use super::link::Link;
use crate::app::failures;
use crate::protocol::WireError;

/// How long a keyed task is sent again while the broker does not confirm it: a broker
/// restart (seconds) fits, a broker gone for longer gets the refusal.
const CONFIRM_WITHIN: Duration = Duration::from_secs(10);

/// How often the link is looked at while it reconnects, before sending again.
const RECONNECT_POLL: Duration = Duration::from_millis(50);

/// What one publish came to.
enum Sent {
    /// Stored (or, with a `Nats-Msg-Id` stored before, named).
    Stored(PublishAck),
    /// Not stored: the broker answered no, or the message never left.
    Refused(PublishError),
    /// Sent, and no answer: the broker may have stored it.
    Unconfirmed(PublishError),
}

/// Publishes a task and returns the broker's ack, or the wire error to refuse it with. A
/// task's idempotency `key` is its `Nats-Msg-Id`, so sending it again cannot store it twice.
pub(super) async fn publish_task(
    cluster: &Cluster,
    link: &Link,
    key: Option<&str>,
    payload: Vec<u8>,
) -> Result<PublishAck, WireError> {
    let mut headers = HeaderMap::new();
    if let Some(key) = key {
        headers.insert("Nats-Msg-Id", msg_id(key).as_str());
    }
    let keyed = key.is_some();
    let payload = Bytes::from(payload);
    let url = cluster.settings.url.shown();
    let deadline = Instant::now() + CONFIRM_WITHIN;
    loop {
        match publish_once(
            link,
            cluster.subjects.tasks(),
            headers.clone(),
            payload.clone(),
        )
        .await
        {
            Sent::Stored(ack) => return Ok(ack),
            Sent::Refused(error) if error.kind() == PublishErrorKind::MaxPayloadExceeded => {
                return Err(failures::task_over_broker_limit(&error.to_string()));
            }
            Sent::Refused(error) => {
                return Err(failures::broker_unavailable(
                    url,
                    &format!("it did not take the task ({error})"),
                ));
            }
            Sent::Unconfirmed(error) if !keyed => {
                return Err(failures::broker_unconfirmed(url, &error.to_string()));
            }
            Sent::Unconfirmed(error) => {
                tracing::warn!(%error, "the broker did not confirm a keyed task; sending it again");
                if !reconnected(link, deadline).await {
                    return Err(failures::broker_unconfirmed_keyed(
                        url,
                        &error.to_string(),
                        CONFIRM_WITHIN,
                    ));
                }
            }
        }
    }
}

async fn publish_once(link: &Link, subject: String, headers: HeaderMap, payload: Bytes) -> Sent {
    let confirmation = match link
        .js
        .publish_with_headers(subject, headers, payload)
        .await
    {
        Ok(confirmation) => confirmation,
        Err(error) => return Sent::Refused(error),
    };
    match confirmation.await {
        Ok(ack) => Sent::Stored(ack),
        Err(error)
            if matches!(
                error.kind(),
                PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
            ) =>
        {
            Sent::Unconfirmed(error)
        }
        Err(error) => Sent::Refused(error),
    }
}

/// Waits until the link is connected, or says it is not by `deadline`.
async fn reconnected(link: &Link, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if link.is_connected() {
            return true;
        }
        tokio::time::sleep(RECONNECT_POLL).await;
    }
    false
}

/// The `Nats-Msg-Id` of a task's key. A key is any string, but a header value must not hold a
/// line break (async-nats panics on one) and the broker trims its spaces: every byte outside
/// a plain set is written `%XX`, so distinct keys stay distinct and a plain key reads as is.
fn msg_id(key: &str) -> String {
    let mut id = String::with_capacity(4 + key.len());
    id.push_str("key:");
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~:/@+=".contains(&byte) {
            id.push(char::from(byte));
        } else {
            let _ = write!(id, "%{byte:02X}");
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::msg_id;

    #[test]
    fn a_key_becomes_a_header_value_that_names_it_alone() {
        assert_eq!(msg_id("order-42"), "key:order-42");
        assert_eq!(
            msg_id("a\r\nNats-Expected-Stream: x"),
            "key:a%0D%0ANats-Expected-Stream:%20x"
        );
        assert_ne!(msg_id("x "), msg_id("x"));
        assert_ne!(msg_id("%20"), msg_id(" "));
        assert_eq!(msg_id("é"), "key:%C3%A9");
    }
}
