//! `publish`: a task sends a JSON value to a topic; every client subscribed to it gets it
//! as a `published` message. Request: `{"topic": "room:lobby", "data": …}`; response:
//! `{"delivered": N}`, the subscribers whose outbox took it.
//!
//! The subscriptions live in the application layer (it holds the connections), which
//! hands this module a [`Publisher`].

use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{CallError, ErrorCode, TaskAccess, check_topic};

/// Largest `data` one publish may carry, in bytes of JSON: every subscriber's outbox
/// holds a copy.
pub const MAX_PUBLISH_BYTES: usize = 64 << 10;

/// Delivers a published value to a topic's subscribers; provided by the application
/// layer. It must never wait on a subscriber: one whose outbox is full misses the message.
pub trait Publisher: Send + Sync + 'static {
    fn publish(&self, topic: &str, data: &RawValue) -> Fanout;
}

/// What one publish did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fanout {
    /// Subscribers whose outbox took the message.
    pub reached: usize,
    /// Subscribers whose outbox was full: they missed it.
    pub missed: usize,
}

pub(super) async fn call(access: &TaskAccess, request: Value) -> Result<Value, CallError> {
    let topic = super::field_str(&request, "topic")?;
    check_topic(topic).map_err(CallError::bad_request)?;
    if !access.grants().allows_publish(topic) {
        return Err(access.not_allowed(format!("publishing to topic {topic:?}"), "publish"));
    }
    let data = request.get("data").unwrap_or(&Value::Null);
    let data = serde_json::value::to_raw_value(data)
        .map_err(|error| CallError::bad_request(format!("`data` cannot be encoded: {error}")))?;
    if data.get().len() > MAX_PUBLISH_BYTES {
        return Err(CallError::new(
            ErrorCode::TooLarge,
            format!(
                "`data` is {} bytes of JSON, over the {MAX_PUBLISH_BYTES} a publish may carry",
                data.get().len()
            ),
        ));
    }
    let fanout = access.host.publisher.publish(topic, &data);
    access.host.counters.publish_missed(fanout.missed);
    Ok(json!({ "delivered": fanout.reached }))
}
