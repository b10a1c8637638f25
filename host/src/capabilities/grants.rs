//! What a task's manifest grants it (`[capabilities]` in `NAME.toml`): nothing by default.
//! Serialized as it appears in `list` (the `capabilities` field of each task).

use serde::{Deserialize, Serialize};

/// Longest store, database or topic name, and topic pattern, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// Longest topic, in bytes (also the cap on a client's `subscribe`).
pub const MAX_TOPIC_BYTES: usize = 128;

/// Most entries in a list grant (`http`, `publish`).
const MAX_LIST_GRANTS: usize = 64;

/// The `[capabilities]` table of a manifest: each key grants one capability.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Origins (`scheme://host[:port]`) the task may send HTTP requests to.
    #[serde(default)]
    pub http: Vec<String>,
    /// The key-value store the task may use.
    #[serde(default)]
    pub kv: Option<String>,
    /// The database the task may query.
    #[serde(default)]
    pub sql: Option<String>,
    /// Whether the task may send mail through the operator's relay.
    #[serde(default)]
    pub mail: bool,
    /// Topic patterns the task may publish to: a topic, or a prefix ending in `*`.
    #[serde(default)]
    pub publish: Vec<String>,
}

impl Grants {
    /// Refuses names and patterns no call could use, saying which and why.
    pub fn check(&self) -> anyhow::Result<()> {
        for (key, name) in [("kv", &self.kv), ("sql", &self.sql)] {
            if let Some(name) = name {
                check_store_name(name).map_err(|why| {
                    anyhow::anyhow!("capabilities.{key} = {name:?} is not a name: {why}")
                })?;
            }
        }
        if self.http.len() > MAX_LIST_GRANTS || self.publish.len() > MAX_LIST_GRANTS {
            anyhow::bail!("capabilities.http and .publish list at most {MAX_LIST_GRANTS} entries");
        }
        super::http::Allowlist::parse(&self.http)
            .map_err(|why| anyhow::anyhow!("capabilities.http: {why}"))?;
        for pattern in &self.publish {
            let topic = pattern.strip_suffix('*').unwrap_or(pattern);
            if !(topic.is_empty() && pattern == "*") {
                check_topic(topic).map_err(|why| {
                    anyhow::anyhow!(
                        "capabilities.publish entry {pattern:?} is not a topic pattern: {why}"
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Whether some `publish` pattern covers `topic`.
    pub fn allows_publish(&self, topic: &str) -> bool {
        self.publish
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => topic.starts_with(prefix),
                None => pattern == topic,
            })
    }

    /// Whether the manifest grants anything at all.
    pub fn is_empty(&self) -> bool {
        self == &Grants::default()
    }
}

/// A store or database name: 1 to [`MAX_NAME_BYTES`] of `a-z`, `0-9`, `_` and `-`, so that
/// it is also a file name under `--data-dir`.
pub fn check_store_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!("it must be 1 to {MAX_NAME_BYTES} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err("use a-z, 0-9, _ and - only".to_owned());
    }
    Ok(())
}

/// A topic: 1 to [`MAX_TOPIC_BYTES`] of letters, digits and `_ - . : /`.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_BYTES {
        return Err(format!(
            "a topic is 1 to {MAX_TOPIC_BYTES} bytes, this one {}",
            topic.len()
        ));
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-.:/".contains(&b))
    {
        return Err("a topic uses letters, digits and _ - . : / only".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_cover_topics_by_prefix_or_exactly() {
        let grants = Grants {
            publish: vec!["room:*".into(), "news".into()],
            ..Grants::default()
        };
        assert!(grants.allows_publish("room:lobby"));
        assert!(grants.allows_publish("news"));
        assert!(!grants.allows_publish("newsletter"));
        assert!(!grants.allows_publish("admin"));
        assert!(!Grants::default().allows_publish("room:lobby"));
        grants.check().unwrap();
    }

    #[test]
    fn bad_names_and_patterns_are_refused() {
        let bad_kv = Grants {
            kv: Some("../etc".into()),
            ..Grants::default()
        };
        assert!(bad_kv.check().is_err());
        let bad_topic = Grants {
            publish: vec!["room lobby".into()],
            ..Grants::default()
        };
        assert!(bad_topic.check().is_err());
        let bad_origin = Grants {
            http: vec!["ftp://x".into()],
            ..Grants::default()
        };
        assert!(bad_origin.check().is_err());
        let everything = Grants {
            publish: vec!["*".into()],
            ..Grants::default()
        };
        everything.check().unwrap();
        assert!(everything.allows_publish("anything"));
    }
}
