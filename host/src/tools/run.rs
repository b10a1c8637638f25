//! `taskhost run FILE --input JSON [--grant CAPABILITY=VALUE]… [-- SERVER OPTIONS]`: one
//! task, run once through the server's own registry and sandbox, with no network.

use std::ffi::OsString;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use serde_json::{Value, json};

use super::scratch::ScratchFolder;
use crate::app::{NewTask, Outcome};
use crate::config::Options;
use crate::limits::RequestedLimits;
use crate::{ProtocolApp, Server};

/// Runs `file` once with `input` and prints its outcome; 0 when it finished, 1 when not.
pub async fn run(
    file: &Path,
    input: &str,
    grants: &[String],
    server_options: Vec<OsString>,
) -> anyhow::Result<u8> {
    let input = read_input(input)?;
    let scratch = ScratchFolder::with(file, grant_table(grants)?)?;
    let mut args = vec![OsString::from("taskhost")];
    args.extend(server_options);
    let mut options = Options::load_from(args)?;
    options.tasks = scratch.dir.clone();
    let mut config = options.validate()?;
    config.watch = false;
    config.warm_slots = 0;
    let timeout = Duration::from_millis(config.limits.timeout_ms) + Duration::from_secs(5);
    let server = Server::new(config, ProtocolApp)?;
    server.ctx().load_large_tasks_now();
    if let Some(listing) = server.ctx().tasks().iter().find(|t| t.name == scratch.name)
        && let Some(error) = &listing.error
    {
        bail!("{} would not load: {error}", file.display());
    }
    let task = NewTask {
        task: scratch.name.clone(),
        input,
        limits: RequestedLimits::default(),
        reference: None,
        key: None,
    };
    let (printed, code) = match server.ctx().task_wait(task, timeout).await {
        Outcome::Finished { result, fuel_used } => {
            let result: Value = serde_json::from_str(result.get())?;
            let finished = json!({"type": "finished", "result": result, "fuel_used": fuel_used});
            (finished, 0)
        }
        Outcome::Failed { error, fuel_used } => {
            let failed = json!({"type": "failed", "error": error, "fuel_used": fuel_used});
            (failed, 1)
        }
    };
    println!("{}", serde_json::to_string_pretty(&printed)?);
    Ok(code)
}

/// The input as JSON text: `input` itself, or stdin when it is `-`; it must parse.
fn read_input(input: &str) -> anyhow::Result<Bytes> {
    let text = if input == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("could not read the input from stdin")?;
        text
    } else {
        input.to_owned()
    };
    serde_json::from_str::<Value>(&text)
        .with_context(|| format!("--input is not JSON: {text:?}"))?;
    Ok(Bytes::from(text))
}

/// The `[capabilities]` entries the `--grant` flags ask for.
fn grant_table(grants: &[String]) -> anyhow::Result<toml::Table> {
    let mut table = toml::Table::new();
    for grant in grants {
        let Some((capability, value)) = grant.split_once('=') else {
            bail!("--grant {grant:?} is not CAPABILITY=VALUE (http=https://api.example.com)");
        };
        let value = value.to_owned();
        match capability {
            "http" | "publish" => {
                let entry = table
                    .entry(capability)
                    .or_insert_with(|| toml::Value::Array(Vec::new()));
                if let toml::Value::Array(list) = entry {
                    list.push(toml::Value::String(value));
                }
            }
            "kv" | "sql" => {
                table.insert(capability.into(), toml::Value::String(value));
            }
            "mail" => {
                let granted = value.parse::<bool>().with_context(|| {
                    format!("--grant mail={value}: use mail=true or mail=false")
                })?;
                table.insert(capability.into(), toml::Value::Boolean(granted));
            }
            other => bail!(
                "--grant {other}=…: there is no capability {other:?}; the capabilities are http, \
                 kv, sql, mail and publish"
            ),
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_become_a_capabilities_table() {
        let table = grant_table(&[
            "http=https://a.example".into(),
            "http=http://127.0.0.1:8080".into(),
            "kv=counters".into(),
            "mail=true".into(),
        ])
        .unwrap();
        assert_eq!(
            table.to_string(),
            "http = [\"https://a.example\", \"http://127.0.0.1:8080\"]\nkv = \"counters\"\nmail = true\n"
        );
        assert!(grant_table(&["disk=/".into()]).is_err());
        assert!(grant_table(&["mail=yes".into()]).is_err());
        assert!(grant_table(&["http".into()]).is_err());
    }
}
