//! A tasks folder of one task, in a temporary folder removed when it is dropped: what
//! `run` and `check` load the file from, as the server would.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

pub struct ScratchFolder {
    pub dir: PathBuf,
    /// The task's name: the file's stem.
    pub name: String,
}

impl ScratchFolder {
    /// Copies `file` and its manifest (`NAME.toml` beside it), with each capability in
    /// `grants` replacing the manifest's grant of it.
    pub fn with(file: &Path, grants: toml::Table) -> anyhow::Result<ScratchFolder> {
        let extension = file
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        if !matches!(extension, "wasm" | "wat") {
            bail!(
                "{} is not a task file: a task is NAME.wasm (a module or component) or NAME.wat",
                file.display()
            );
        }
        let name = file
            .file_stem()
            .and_then(|stem| stem.to_str())
            .with_context(|| format!("{} has no usable name", file.display()))?
            .to_owned();
        let unique = format!(
            "taskhost-{}-{}-{}",
            name,
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos())
        );
        let dir = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        let scratch = ScratchFolder { dir, name };
        std::fs::copy(
            file,
            scratch.dir.join(format!("{}.{extension}", scratch.name)),
        )
        .with_context(|| format!("could not read {}", file.display()))?;
        let manifest_path = file.with_extension("toml");
        let mut manifest = match std::fs::read_to_string(&manifest_path) {
            Ok(text) => text
                .parse::<toml::Table>()
                .with_context(|| format!("{} is not TOML", manifest_path.display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("could not read {}", manifest_path.display()));
            }
        };
        if !grants.is_empty() {
            let capabilities = manifest
                .entry("capabilities")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(capabilities) = capabilities else {
                bail!("{}: `capabilities` is not a table", manifest_path.display());
            };
            capabilities.extend(grants);
        }
        if !manifest.is_empty() {
            let path = scratch.dir.join(format!("{}.toml", scratch.name));
            std::fs::write(&path, manifest.to_string())
                .with_context(|| format!("could not write {}", path.display()))?;
        }
        Ok(scratch)
    }
}

impl Drop for ScratchFolder {
    fn drop(&mut self) {
        // A temporary folder left behind is untidy, not wrong: nothing to report.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
