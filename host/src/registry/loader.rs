//! Reading task files: which files in the folder belong to which task, and turning a task's
//! files (its module and optional manifest) into a [`TaskModule`].

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::TaskModule;
use super::files::{file_name, read_capped};
use super::manifest::Manifest;
use crate::limits::Limits;
use crate::sandbox::Sandbox;

/// File extensions that hold a task, in order of preference when several exist: a binary
/// module or component, or the text format.
const MODULE_EXTENSIONS: [&str; 2] = ["wasm", "wat"];

/// The extension of a task's manifest.
const MANIFEST_EXTENSION: &str = "toml";

/// Hex digits of the content hash shown in `list`.
const SHORT_HASH: usize = 12;

/// The task a file belongs to, if any: its stem, made of `a-z`, `0-9`, `_` and `-`, with a
/// module or manifest extension. Anything else (`x.wasm.tmp`, `.hidden.wasm`) is not a task.
pub fn task_name(path: &Path) -> Option<String> {
    let extension = path.extension()?.to_str()?;
    if !MODULE_EXTENSIONS.contains(&extension) && extension != MANIFEST_EXTENSION {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    let valid = !stem.is_empty()
        && stem
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    valid.then(|| stem.to_owned())
}

/// The names of the tasks that have a module file in `dir`, sorted.
pub fn task_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "could not read the tasks folder {}: create it or pass --tasks DIR (`just build-guests` fills tasks/)",
            dir.display()
        )
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("could not list the tasks folder {}", dir.display()))?
            .path();
        let is_module = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| MODULE_EXTENSIONS.contains(&e));
        match task_name(&path) {
            Some(name) if is_module && path.is_file() => names.push(name),
            None if is_module => tracing::warn!(
                path = %path.display(),
                "skipped: a task file is NAME.wasm or NAME.wat, NAME made of a-z, 0-9, _ and -"
            ),
            _ => {}
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// The module file of task `name` in `dir`, if there is one.
pub fn module_path(dir: &Path, name: &str) -> Option<PathBuf> {
    MODULE_EXTENSIONS
        .iter()
        .map(|extension| dir.join(format!("{name}.{extension}")))
        .find(|path| path.is_file())
}

/// A task's files as read from disk, before compiling.
pub struct TaskFiles {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub manifest: Manifest,
    /// The module's content hash, in short hex.
    pub hash: String,
}

/// Largest module file read. Compiling takes memory and time in proportion (a 400 MB text
/// module took 8 GB); real modules, even language runtimes, are far smaller.
pub const MAX_MODULE_BYTES: u64 = 128 << 20;

/// Reads a task's module and manifest.
pub fn read_task(dir: &Path, name: &str, module: PathBuf) -> anyhow::Result<TaskFiles> {
    let bytes = read_capped(&module, MAX_MODULE_BYTES)
        .with_context(|| format!("could not read {}", file_name(&module)))?;
    let manifest =
        Manifest::read(&dir.join(format!("{name}.{MANIFEST_EXTENSION}")))?.unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    let hash: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(TaskFiles {
        path: module,
        bytes,
        manifest,
        hash: hash[..SHORT_HASH].to_owned(),
    })
}

/// Compiles and links a task's module, with its manifest applied.
pub fn build_task(
    sandbox: &Sandbox,
    name: &str,
    files: TaskFiles,
    server_limits: Limits,
) -> anyhow::Result<TaskModule> {
    let wasm = sandbox
        .compile(&files.bytes)
        .with_context(|| format!("{} is not a usable task module", file_name(&files.path)))?;
    Ok(TaskModule {
        name: name.to_owned(),
        limits: files.manifest.limits(server_limits),
        description: files.manifest.description.clone(),
        deliver: files.manifest.deliver,
        grants: std::sync::Arc::new(files.manifest.capabilities.clone()),
        manifest: files.manifest,
        wasm,
        hash: files.hash,
        loaded_at: SystemTime::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_follow_the_protocol() {
        assert_eq!(task_name(Path::new("t/slow.wasm")), Some("slow".into()));
        assert_eq!(
            task_name(Path::new("t/up-per_2.wat")),
            Some("up-per_2".into())
        );
        assert_eq!(task_name(Path::new("t/slow.toml")), Some("slow".into()));
        assert_eq!(task_name(Path::new("t/Slow.wasm")), None);
        assert_eq!(task_name(Path::new("t/slow.wasm.tmp")), None);
        assert_eq!(task_name(Path::new("t/.wasm")), None);
        assert_eq!(task_name(Path::new("t/a b.wasm")), None);
    }
}
