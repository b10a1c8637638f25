//! The optional sidecar `NAME.toml` beside a module: its description, lower limits and
//! delivery. Unknown keys are an error, so a typo is reported rather than ignored.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use super::loader::file_name;
use crate::protocol::{Delivery, Limits, RequestedLimits};

#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// One line for a person, shown in `list` and the page.
    #[serde(default)]
    pub description: String,
    /// Limits for this task, each capped by the server's (`--timeout-ms`, `--fuel`, `--memory`).
    pub timeout_ms: Option<u64>,
    pub fuel: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// Where results go: the submitter only (`origin`), or every connection too (`broadcast`).
    #[serde(default)]
    pub deliver: Delivery,
}

impl Manifest {
    /// Reads and checks the manifest at `path`; `None` when there is none.
    pub fn read(path: &Path) -> anyhow::Result<Option<Manifest>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(error).with_context(|| format!("could not read {}", file_name(path)));
            }
        };
        let manifest = toml::from_str(&text).with_context(|| {
            format!(
                "{} is not a valid manifest (keys: description, timeout_ms, fuel, memory_bytes, \
                 deliver = \"origin\" | \"broadcast\")",
                file_name(path)
            )
        })?;
        Ok(Some(manifest))
    }

    /// The task's limits: the server's, lowered where the manifest asks.
    pub fn limits(&self, server: Limits) -> Limits {
        server.lowered_by(RequestedLimits {
            timeout_ms: self.timeout_ms,
            fuel: self.fuel,
            memory_bytes: self.memory_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_lower_limits_and_reject_unknown_keys() {
        let manifest: Manifest = toml::from_str(
            "description = \"x\"\ntimeout_ms = 100\nfuel = 99999999999999\ndeliver = \"broadcast\"",
        )
        .unwrap();
        let server = Limits {
            timeout_ms: 1000,
            fuel: 5000,
            memory_bytes: 1 << 20,
        };
        let limits = manifest.limits(server);
        assert_eq!(
            (limits.timeout_ms, limits.fuel, limits.memory_bytes),
            (100, 5000, 1 << 20)
        );
        assert_eq!(manifest.deliver, Delivery::Broadcast);
        assert!(toml::from_str::<Manifest>("timeout = 5").is_err());
        assert!(toml::from_str::<Manifest>("deliver = \"everyone\"").is_err());
    }
}
