//! Reading task files: which files in the folder are tasks, and turning one into a
//! [`TaskModule`] (read, compile, link).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;

use super::TaskModule;
use crate::protocol::{Delivery, Limits};
use crate::sandbox::Sandbox;

/// File extensions that hold a task: a binary module, or the text format.
const MODULE_EXTENSIONS: [&str; 2] = ["wasm", "wat"];

/// The task name a file serves, if it is a task file: its stem, made of `a-z`, `0-9`, `_`
/// and `-`, with a module extension.
pub fn task_name(path: &Path) -> Option<String> {
    let extension = path.extension()?.to_str()?;
    if !MODULE_EXTENSIONS.contains(&extension) {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    let valid = !stem.is_empty()
        && stem
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    valid.then(|| stem.to_owned())
}

/// The task files in `dir`, sorted so that loading order (and logs) are stable.
pub fn module_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "could not read the tasks folder {}: create it or pass --tasks DIR (`just build-guests` fills tasks/)",
            dir.display()
        )
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("could not list the tasks folder {}", dir.display()))?
            .path();
        let is_module = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| MODULE_EXTENSIONS.contains(&e));
        if is_module && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads, compiles and links one module.
pub fn load_module(
    sandbox: &Sandbox,
    name: &str,
    path: &Path,
    server_limits: Limits,
) -> anyhow::Result<TaskModule> {
    let bytes =
        std::fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
    let wasm = sandbox
        .compile(&bytes)
        .with_context(|| format!("{} is not a usable task module", path.display()))?;
    Ok(TaskModule {
        name: name.to_owned(),
        description: String::new(),
        limits: server_limits,
        deliver: Delivery::Origin,
        wasm,
        path: path.to_owned(),
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
        assert_eq!(task_name(Path::new("t/Slow.wasm")), None);
        assert_eq!(task_name(Path::new("t/slow.toml")), None);
        assert_eq!(task_name(Path::new("t/.wasm")), None);
        assert_eq!(task_name(Path::new("t/a b.wasm")), None);
    }
}
