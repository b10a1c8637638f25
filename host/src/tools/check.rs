//! `taskhost check FILE`: would the server load this module or component and its manifest?
//! Prints a JSON report: the server's verdict (the same registry loads it), the kind, each
//! import and whether the server provides it, the exports, and the manifest's entry as
//! `list` shows it (limits, delivery, grants).

use std::ffi::OsString;
use std::path::Path;

use anyhow::Context;
use serde_json::{Value, json};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

use super::scratch::ScratchFolder;
use crate::config::Options;
use crate::{ProtocolApp, Server};

/// Checks `file`; 0 when the server would load it, 1 when not.
pub fn check(file: &Path) -> anyhow::Result<u8> {
    let scratch = ScratchFolder::with(file, toml::Table::new())?;
    let mut options = Options::load_from(vec![OsString::from("taskhost")])?;
    options.tasks = scratch.dir.clone();
    let mut config = options.validate()?;
    config.watch = false;
    config.warm_slots = 0;
    let server = Server::new(config, ProtocolApp)?;
    server.ctx().load_large_tasks_now();
    let listing = server
        .ctx()
        .tasks()
        .into_iter()
        .find(|task| task.name == scratch.name);
    let error = match &listing {
        Some(listing) => listing.error.clone(),
        None => Some(format!(
            "the server did not list {}: its name must be 1 to 64 of a-z, A-Z, 0-9, _ and -",
            scratch.name
        )),
    };
    let loads = error.is_none();
    let mut report = json!({
        "file": file.display().to_string(),
        "task": scratch.name,
        "loads": loads,
        "error": error,
        "listing": listing,
    });
    match interface(file) {
        Ok(interface) => report["interface"] = interface,
        Err(error) => report["interface"] = json!({ "error": format!("{error:#}") }),
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(if loads { 0 } else { 1 })
}

/// The imports and exports of the module or component, each import marked with whether
/// the server provides it.
fn interface(file: &Path) -> anyhow::Result<Value> {
    let bytes =
        std::fs::read(file).with_context(|| format!("could not read {}", file.display()))?;
    let bytes = wat::parse_bytes(&bytes).context("not WebAssembly (nor WebAssembly text)")?;
    let engine = Engine::default();
    // The header's layer field (bytes 6..8) is 1 for a component, 0 for a module.
    if bytes.get(6..8) == Some(&[1, 0]) {
        let component = Component::new(&engine, &bytes)
            .map_err(anyhow::Error::from)
            .context("not a valid component")?;
        let kind = component.component_type();
        let imports: Vec<Value> = kind
            .imports(&engine)
            .map(|(name, _)| json!({"name": name, "provided": component_import_provided(name)}))
            .collect();
        let exports: Vec<&str> = kind.exports(&engine).map(|(name, _)| name).collect();
        Ok(json!({"kind": "component", "imports": imports, "exports": exports}))
    } else {
        let module = Module::new(&engine, &bytes)
            .map_err(anyhow::Error::from)
            .context("not a valid module")?;
        let imports: Vec<Value> = module
            .imports()
            .map(|import| {
                let provided = module_import_provided(import.module(), import.name());
                json!({"name": format!("{}.{}", import.module(), import.name()), "provided": provided})
            })
            .collect();
        let exports: Vec<&str> = module.exports().map(|export| export.name()).collect();
        Ok(json!({"kind": "module", "imports": imports, "exports": exports}))
    }
}

/// Whether the server links a preview 1 import: WASI preview 1, and `taskhost`'s
/// `progress` and `call`.
fn module_import_provided(module: &str, name: &str) -> bool {
    module == "wasi_snapshot_preview1"
        || (module == "taskhost" && matches!(name, "progress" | "call"))
}

/// Whether the server links a component import: WASI preview 2's interfaces (not
/// `wasi:http`: HTTP goes through `taskhost:task`) and `taskhost:task`'s.
fn component_import_provided(name: &str) -> bool {
    (name.starts_with("wasi:") && !name.starts_with("wasi:http/"))
        || name.starts_with("taskhost:task/")
}
