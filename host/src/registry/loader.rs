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

/// Size from which a module's first compile is put off until the server serves: Rust tasks
/// are 0.1 to 2 MB and compile in milliseconds; componentize-py's Python is 18 MB and takes
/// 20 s of CPU the first time (the compile cache makes later starts quick).
pub const LARGE_MODULE_BYTES: u64 = 8 << 20;

/// Whether the module at `path` is large enough to load after start.
pub fn is_large(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|metadata| metadata.len() >= LARGE_MODULE_BYTES)
}

/// The turn to compile a large module: one at a time in the process, since each compile
/// takes every core and gigabytes of memory for a while, and several servers in one process
/// (tests, embedders) would otherwise compile the same module at once where the second could
/// take the first one's work from the compile cache.
pub fn large_compile_turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A pool of one thread at lower priority (nice 5) for compiling large modules: wasmtime
/// compiles a module's functions in parallel on the rayon pool it is called from, which
/// would otherwise be the global one, as many threads as cores at normal priority, and a
/// 20-second compile would then slow every running task. `None` if the thread could not
/// start (then the compile runs on the calling thread).
pub fn background_compile_pool() -> Option<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(|_| "large-task-compile".into())
        .start_handler(|_| lower_this_thread_s_priority())
        .build()
        .inspect_err(
            |error| tracing::warn!(%error, "no low-priority thread for compiling large tasks"),
        )
        .ok()
}

/// The compile thread's nice value.
const COMPILE_NICENESS: libc::c_int = 5;

/// Nice 5 for the calling thread (Linux keeps a nice value per thread): against a busy
/// thread at nice 0 it gets about a quarter of a core, so a compile still ends on a loaded
/// machine (nice 10 starved it for minutes there), while tasks keep most of the CPU.
fn lower_this_thread_s_priority() {
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
    let result = unsafe {
        let thread = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, COMPILE_NICENESS)
    };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the compile thread's priority");
    }
}

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
        name: name.into(),
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
