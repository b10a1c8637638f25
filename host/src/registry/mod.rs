//! Task name → the loaded module that serves it.
//!
//! An entry is swapped whole: a task that started holds the `Arc<TaskModule>` of the version
//! it started with, so replacing or removing a module never touches a running task. A module
//! that fails to load is recorded with its reason (shown in `list`) and, if an earlier version
//! loaded, that version stays in service.

mod loader;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use crate::protocol::{Delivery, ErrorCode, Limits, TaskListing, TaskState, WireError};
use crate::sandbox::{Sandbox, WasmModule};

pub use loader::task_name;

/// One version of a task, ready to run.
#[derive(Debug)]
pub struct TaskModule {
    pub name: String,
    pub description: String,
    /// The task's limits: the server's, lowered by its manifest.
    pub limits: Limits,
    pub deliver: Delivery,
    pub wasm: WasmModule,
    /// The file it was loaded from.
    pub path: PathBuf,
    pub loaded_at: SystemTime,
}

/// What the registry knows about one name.
#[derive(Debug, Clone)]
struct Entry {
    /// The version in service, if any loaded.
    ready: Option<Arc<TaskModule>>,
    /// Why the latest attempt to load this name failed, if it did.
    error: Option<String>,
}

/// The tasks this server can run. Std lock: lookups and swaps are short and never await.
pub struct Registry {
    sandbox: Arc<Sandbox>,
    dir: PathBuf,
    /// The server's limits: a task's default and maximum.
    server_limits: Limits,
    entries: RwLock<BTreeMap<String, Entry>>,
}

impl Registry {
    pub fn new(sandbox: Arc<Sandbox>, dir: impl Into<PathBuf>, server_limits: Limits) -> Self {
        Registry {
            sandbox,
            dir: dir.into(),
            server_limits,
            entries: RwLock::new(BTreeMap::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads every module in the tasks folder. A file that fails is logged and listed with
    /// its reason; the others load regardless.
    pub fn load_all(&self) -> anyhow::Result<()> {
        for path in loader::module_files(&self.dir)? {
            self.load(&path);
        }
        Ok(())
    }

    /// Loads (or reloads) the module at `path` and puts it in service. On failure the
    /// version already in service, if any, stays.
    pub fn load(&self, path: &Path) {
        let Some(name) = task_name(path) else {
            tracing::warn!(path = %path.display(), "skipped: a task file is NAME.wasm or NAME.wat, NAME made of a-z, 0-9, _ and -");
            return;
        };
        let loaded = loader::load_module(&self.sandbox, &name, path, self.server_limits);
        let mut entries = self.write();
        let entry = entries.entry(name.clone()).or_insert(Entry {
            ready: None,
            error: None,
        });
        match loaded {
            Ok(module) => {
                tracing::info!(task = %name, path = %path.display(), "task loaded");
                entry.ready = Some(Arc::new(module));
                entry.error = None;
            }
            Err(error) => {
                let reason = format!("{error:#}");
                tracing::warn!(task = %name, path = %path.display(), %reason, "task failed to load");
                entry.error = Some(reason);
            }
        }
    }

    /// The version of `name` in service, or `unknown_task` saying what exists.
    pub fn get(&self, name: &str) -> Result<Arc<TaskModule>, WireError> {
        let entries = self.read();
        match entries.get(name) {
            Some(Entry {
                ready: Some(module),
                ..
            }) => Ok(Arc::clone(module)),
            Some(Entry {
                ready: None,
                error: Some(reason),
            }) => Err(WireError::new(
                ErrorCode::UnknownTask,
                format!(
                    "task {name:?} failed to load: {reason}; fix the module file and it can run"
                ),
            )),
            _ => {
                let names: Vec<&str> = entries
                    .iter()
                    .filter(|(_, entry)| entry.ready.is_some())
                    .map(|(name, _)| name.as_str())
                    .collect();
                Err(WireError::new(
                    ErrorCode::UnknownTask,
                    format!(
                        "there is no task {name:?}; the tasks are: {}",
                        if names.is_empty() {
                            "none (put NAME.wasm files in the tasks folder)".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ),
                ))
            }
        }
    }

    /// The names of the tasks that can run, for `hello`.
    pub fn ready_names(&self) -> Vec<String> {
        self.read()
            .iter()
            .filter(|(_, entry)| entry.ready.is_some())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Every task with its state, for `list`.
    pub fn listing(&self) -> Vec<TaskListing> {
        self.read()
            .iter()
            .map(|(name, entry)| match (&entry.ready, &entry.error) {
                (Some(module), None) => TaskListing {
                    name: name.clone(),
                    description: module.description.clone(),
                    state: TaskState::Ready,
                    error: None,
                    limits: module.limits,
                    deliver: module.deliver,
                },
                (ready, error) => TaskListing {
                    name: name.clone(),
                    description: ready
                        .as_ref()
                        .map(|m| m.description.clone())
                        .unwrap_or_default(),
                    // A failed reload with an older version still in service can run: it
                    // says ready, and the error tells why the new file was not taken.
                    state: if ready.is_some() {
                        TaskState::Ready
                    } else {
                        TaskState::Failed
                    },
                    error: error.clone(),
                    limits: ready.as_ref().map_or(self.server_limits, |m| m.limits),
                    deliver: ready.as_ref().map_or(Delivery::Origin, |m| m.deliver),
                },
            })
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        // Poisoning would need a panic while the lock is held; the map is still consistent.
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}
