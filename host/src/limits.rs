//! The three limits a task runs under (wall clock, fuel, memory), and a request to lower
//! them. Plain data, below everything that uses it: the sandbox enforces them, manifests and
//! clients lower them, the protocol reports them.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// The limits a task runs under, as reported in `accepted` and `list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub timeout_ms: u64,
    pub fuel: u64,
    pub memory_bytes: u64,
}

impl Limits {
    /// These limits lowered by what was asked; a request can never raise a limit.
    pub fn lowered_by(self, asked: RequestedLimits) -> Limits {
        let lower = |limit: u64, asked: Option<u64>| asked.map_or(limit, |v| v.min(limit));
        Limits {
            timeout_ms: lower(self.timeout_ms, asked.timeout_ms),
            fuel: lower(self.fuel, asked.fuel),
            memory_bytes: lower(self.memory_bytes, asked.memory_bytes),
        }
    }
}

/// Limits as a client or a manifest asks for them: each may only lower the configured limit.
///
/// Each is a number of zero or more; one beyond what a 64-bit integer holds (`1e30`) asks for
/// no lowering, like any value above the configured limit, and a fraction is rounded down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestedLimits {
    #[serde(default, deserialize_with = "limit")]
    pub timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "limit")]
    pub fuel: Option<u64>,
    #[serde(default, deserialize_with = "limit")]
    pub memory_bytes: Option<u64>,
}

/// A limit value: any JSON number of zero or more (saturating at `u64::MAX`), or `null`.
fn limit<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    match Option::<serde_json::Value>::deserialize(deserializer)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(number)) => match (number.as_u64(), number.as_f64()) {
            (Some(value), _) => Ok(Some(value)),
            (None, Some(value)) if value >= 0.0 => Ok(Some(value as u64)),
            _ => Err(de::Error::custom(format_args!(
                "a limit must be zero or more, not {number}"
            ))),
        },
        Some(other) => Err(de::Error::custom(format_args!(
            "a limit must be a number, not {}",
            json_kind(&other)
        ))),
    }
}

/// What kind of JSON value this is, for error messages ("not an array").
pub(crate) fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_limits_only_lower() {
        let configured = Limits {
            timeout_ms: 1000,
            fuel: 50,
            memory_bytes: 1 << 20,
        };
        let asked = RequestedLimits {
            timeout_ms: Some(5000),
            fuel: Some(10),
            memory_bytes: None,
        };
        let effective = configured.lowered_by(asked);
        assert_eq!(effective.timeout_ms, 1000);
        assert_eq!(effective.fuel, 10);
        assert_eq!(effective.memory_bytes, 1 << 20);
    }
}
