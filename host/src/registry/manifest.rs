//! The optional sidecar `NAME.toml` beside a module: its description, lower limits and
//! delivery. Unknown keys are an error, so a typo is reported rather than ignored.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use super::files::{file_name, read_capped};
use super::listing::Delivery;
use crate::capabilities::Grants;
use crate::limits::{Limits, RequestedLimits};

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

    /// What the task may use beyond computing (`[capabilities]`: http, kv, sql, mail,
    /// publish); nothing by default.
    #[serde(default)]
    pub capabilities: Grants,
}

/// Largest manifest read: a few settings and a line of description.
const MAX_MANIFEST_BYTES: u64 = 64 << 10;

/// Longest description, in characters: it goes to every client in every `list`.
const MAX_DESCRIPTION_CHARS: usize = 1000;

impl Manifest {
    /// Reads and checks the manifest at `path`; `None` when there is none.
    pub fn read(path: &Path) -> anyhow::Result<Option<Manifest>> {
        let name = file_name(path);
        let bytes = match read_capped(path, MAX_MANIFEST_BYTES) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).with_context(|| format!("could not read {name}")),
        };
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{name} is not UTF-8 text, as a TOML manifest must be"))?;
        Self::parse(&name, &text).map(Some)
    }

    /// Parses and checks a manifest's text; `name` names its file in errors.
    pub(crate) fn parse(name: &str, text: &str) -> anyhow::Result<Manifest> {
        // The parser's own message quotes the offending line; this file may be anything
        // (a link to a host file, say) and the message reaches every client: say where only.
        let manifest: Manifest = toml::from_str(text).map_err(|error| {
            let line = error
                .span()
                .map_or(0, |span| text[..span.start].matches('\n').count() + 1);
            anyhow::anyhow!(
                "{name} is not a valid manifest: {} (line {line}); its keys are description, \
                 timeout_ms, fuel, memory_bytes, deliver = \"origin\" | \"broadcast\" and the \
                 table [capabilities] (http, kv, sql, mail, publish)",
                redact_quoted(error.message().trim())
            )
        })?;
        manifest
            .check()
            .with_context(|| format!("{name} is not a valid manifest"))?;
        Ok(manifest)
    }

    /// Refuses limits no task could run under, and descriptions too long to send around.
    fn check(&self) -> anyhow::Result<()> {
        if self.timeout_ms == Some(0) {
            anyhow::bail!("timeout_ms must be at least 1");
        }
        if self.fuel == Some(0) {
            anyhow::bail!("fuel must be at least 1");
        }
        if self.memory_bytes.is_some_and(|bytes| bytes < 64 << 10) {
            anyhow::bail!("memory_bytes must be at least 65536, one WebAssembly page");
        }
        if self.description.chars().count() > MAX_DESCRIPTION_CHARS {
            anyhow::bail!("description must be at most {MAX_DESCRIPTION_CHARS} characters");
        }
        self.capabilities.check()?;
        Ok(())
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

/// The words of the manifest's own schema, which a message may quote.
const SCHEMA_WORDS: [&str; 13] = [
    "capabilities",
    "http",
    "kv",
    "sql",
    "mail",
    "publish",
    "description",
    "timeout_ms",
    "fuel",
    "memory_bytes",
    "deliver",
    "origin",
    "broadcast",
];

/// The parser's message without the file's own text: whatever it quotes (between `"` or
/// backticks) becomes `…`, unless it is a word of the schema. serde quotes the values it
/// refuses (`invalid type: string "hunter2"`), and the message reaches every client.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(['"', '`']) {
        let quote = rest.as_bytes()[open] as char;
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find(quote) else {
            out.push('…');
            return out;
        };
        let quoted = &after[..close];
        out.push_str(if SCHEMA_WORDS.contains(&quoted) {
            quoted
        } else {
            "…"
        });
        out.push(quote);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
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
        let zero: Manifest = toml::from_str("memory_bytes = 0").unwrap();
        assert!(zero.check().is_err());
    }

    #[test]
    fn capabilities_are_granted_in_their_own_table() {
        let manifest = Manifest::parse(
            "t.toml",
            "[capabilities]\nkv = \"counters\"\nsql = \"notes\"\nmail = true\npublish = [\"room:*\"]\n",
        )
        .unwrap();
        assert_eq!(manifest.capabilities.kv.as_deref(), Some("counters"));
        assert!(manifest.capabilities.mail);
        assert!(manifest.capabilities.allows_publish("room:lobby"));
        assert!(Manifest::default().capabilities.is_empty());
        let error = Manifest::parse("t.toml", "[capabilities]\nfiles = true\n").unwrap_err();
        assert!(format!("{error:#}").contains("capabilities"), "{error:#}");
        assert!(Manifest::parse("t.toml", "[capabilities]\nkv = \"../x\"\n").is_err());
    }

    #[test]
    fn refused_values_are_not_quoted() {
        let error = toml::from_str::<Manifest>("fuel = \"hunter2\"").unwrap_err();
        let message = redact_quoted(error.message());
        assert!(!message.contains("hunter2"), "{message}");
        let error = toml::from_str::<Manifest>("deliver = \"s3cret\"").unwrap_err();
        let message = redact_quoted(error.message());
        assert!(!message.contains("s3cret"), "{message}");
        assert!(message.contains("origin"), "schema words stay: {message}");
    }

    #[test]
    fn errors_say_where_without_quoting_the_file() {
        let dir = std::env::temp_dir().join(format!("manifest-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(&path, "description = \"x\"\nsecret: hunter2\n").unwrap();
        let message = format!("{:#}", Manifest::read(&path).unwrap_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(message.contains("line 2"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}
