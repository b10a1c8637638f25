//! Task name → the loaded module that serves it; loading, reloading and watching the folder.
//!
//! An entry is swapped whole: a task that started holds the `Arc<TaskModule>` of the version
//! it started with, so replacing or removing a module never touches a running task. A module
//! or manifest that fails to load is recorded with its reason (shown in `list`) and, if an
//! earlier version loaded, that version stays in service. Every change bumps a counter that
//! the server watches to push the new list to clients.

mod files;
mod listing;
mod loader;
mod manifest;
pub mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::SystemTime;

use tokio::sync::watch as signal;

use crate::capabilities::Grants;
use crate::clip::clip;
use crate::limits::Limits;
use crate::sandbox::{Sandbox, WasmModule};

pub use listing::{Delivery, TaskListing, TaskState};
pub use loader::task_name;
pub use manifest::{Manifest, RetryOn};

/// Why a task name cannot run now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("task {name:?} failed to load: {reason}; fix the module file and it can run")]
    FailedToLoad { name: String, reason: String },
    #[error(
        "task {name:?} is still loading: it is a large module (a language runtime, say) that the \
         server compiles after it starts, once; try again in a few seconds (`list` says \
         \"ready\" when it can run)"
    )]
    Loading { name: String },
    #[error("there is no task {:?}; the tasks are: {}", clip(.name), available_names(.available))]
    NoSuchTask {
        name: String,
        /// The names that can run, for the message.
        available: Vec<String>,
    },
}

fn available_names(names: &[String]) -> String {
    if names.is_empty() {
        "none (put NAME.wasm files in the tasks folder)".to_owned()
    } else {
        names.join(", ")
    }
}

/// One version of a task, ready to run.
#[derive(Debug)]
pub struct TaskModule {
    pub name: Arc<str>,
    pub description: String,
    /// The task's limits: the server's, lowered by its manifest.
    pub limits: Limits,
    pub deliver: Delivery,
    /// What the manifest grants, shared with every run of this version.
    pub grants: Arc<Grants>,
    pub manifest: Manifest,
    pub wasm: WasmModule,
    /// Short hex SHA-256 of the module file.
    pub hash: String,
    pub loaded_at: SystemTime,
}

/// What the registry knows about one name.
#[derive(Debug, Clone, Default)]
struct Entry {
    /// The version in service, if any loaded.
    ready: Option<Arc<TaskModule>>,
    /// Why the latest attempt to load this name failed, if it did.
    error: Option<String>,
    /// A large module put off at start ([`Registry::load_all`]), not yet compiled.
    pending: bool,
}

/// The tasks this server can run. Std lock: lookups and swaps are short and never await;
/// compiling happens outside it.
pub struct Registry {
    sandbox: Arc<Sandbox>,
    dir: PathBuf,
    /// The server's limits: a task's default and maximum.
    server_limits: Limits,
    entries: RwLock<BTreeMap<String, Entry>>,
    /// Bumped on every change of the list; the server pushes the list to clients on it.
    changes: signal::Sender<u64>,
    /// Failed attempts to load a file, for `/metrics` (which holds a clone).
    load_failures: prometheus_client::metrics::counter::Counter,
}

impl Registry {
    pub fn new(sandbox: Arc<Sandbox>, dir: impl Into<PathBuf>, server_limits: Limits) -> Self {
        Registry {
            sandbox,
            dir: dir.into(),
            server_limits,
            entries: RwLock::new(BTreeMap::new()),
            changes: signal::Sender::new(0),
            load_failures: Default::default(),
        }
    }

    /// Counts failed loads in `counter` (the metrics' `module_load_failures`).
    pub fn counting_load_failures(
        mut self,
        counter: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        self.load_failures = counter;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A receiver that wakes on every change of the task list.
    pub fn subscribe(&self) -> signal::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Loads every task in the folder. A file that fails is logged and listed with its
    /// reason; the others load regardless.
    ///
    /// A module larger than [`loader::LARGE_MODULE_BYTES`] (a language runtime such as
    /// componentize-py's Python, whose first compile takes tens of seconds) is only listed
    /// as loading: [`Registry::load_pending`] compiles it, so that the server starts and
    /// serves the other tasks meanwhile. Returns how many were put off.
    ///
    /// The others load on one thread per core: from the compile cache, a start is mostly
    /// deserializing modules, one core each.
    pub fn load_all(&self) -> anyhow::Result<usize> {
        let mut now = Vec::new();
        let mut put_off = 0;
        for name in loader::task_names(&self.dir)? {
            if loader::module_path(&self.dir, &name).is_some_and(|path| loader::is_large(&path)) {
                self.write().entry(name).or_default().pending = true;
                put_off += 1;
            } else {
                now.push(name);
            }
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(now.len());
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    while let Some(name) = now.get(next.fetch_add(1, Ordering::Relaxed)) {
                        self.reload(name);
                    }
                });
            }
        });
        if put_off > 0 {
            self.changed();
        }
        Ok(put_off)
    }

    /// Whether [`Registry::load_all`] put off modules that are not loaded yet.
    pub fn has_pending(&self) -> bool {
        self.read().values().any(|entry| entry.pending)
    }

    /// Compiles the modules [`Registry::load_all`] put off, one at a time in the whole
    /// process (each takes a core and a lot of memory for a while), on a low-priority
    /// thread. It holds the registry only while it compiles, and stops once `stop` is
    /// cancelled or the server is gone: a server waiting for its turn keeps nothing (its
    /// sandbox pool's address space) reserved. Blocks: call it on a thread of its own.
    pub fn load_pending(registry: &Weak<Registry>, stop: &tokio_util::sync::CancellationToken) {
        let mut pool = None;
        loop {
            let _one_at_a_time = loader::large_compile_turn();
            if stop.is_cancelled() {
                return;
            }
            let Some(registry) = registry.upgrade() else {
                return;
            };
            let Some(name) = registry.next_pending() else {
                return;
            };
            let pool = pool.get_or_insert_with(loader::background_compile_pool);
            let started = std::time::Instant::now();
            match pool {
                Some(pool) => pool.install(|| registry.reload(&name)),
                None => registry.reload(&name),
            }
            tracing::info!(task = %name, elapsed_ms = started.elapsed().as_millis() as u64, "large task loaded after start");
        }
    }

    /// Compiles the modules [`Registry::load_all`] put off, here and now, at the calling
    /// thread's priority and on every core: for `taskhost run` and `check`, which serve
    /// nothing else while they wait for the one module they were given.
    pub fn load_pending_now(&self) {
        while let Some(name) = self.next_pending() {
            self.reload(&name);
        }
    }

    /// [`Registry::reload`] for the folder watcher: a large module compiles as one put off
    /// at start does (one at a time in the process, on the low-priority thread), so that
    /// dropping a language runtime into the folder does not take every core from the
    /// running tasks. Blocks: call it off the async threads.
    pub fn reload_changed(&self, name: &str) {
        let large =
            loader::module_path(&self.dir, name).is_some_and(|path| loader::is_large(&path));
        if !large {
            return self.reload(name);
        }
        let _one_at_a_time = loader::large_compile_turn();
        match loader::background_compile_pool() {
            Some(pool) => pool.install(|| self.reload(name)),
            None => self.reload(name),
        }
    }

    /// A task put off at start and not loaded yet.
    fn next_pending(&self) -> Option<String> {
        self.read()
            .iter()
            .find(|(_, entry)| entry.pending)
            .map(|(name, _)| name.clone())
    }

    /// Brings task `name` in line with the folder: loads it if its module or manifest is new
    /// or changed, removes it if its module is gone. Compiles: call it off the async threads.
    pub fn reload(&self, name: &str) {
        let Some(path) = loader::module_path(&self.dir, name) else {
            if self.write().remove(name).is_some() {
                tracing::info!(task = %name, "task removed");
                self.changed();
            }
            return;
        };
        let loaded = loader::read_task(&self.dir, name, path.clone()).and_then(|files| {
            if self.is_current(name, &files.hash, &files.manifest) {
                return Ok(None);
            }
            loader::build_task(&self.sandbox, name, files, self.server_limits).map(Some)
        });
        let mut entries = self.write();
        let entry = entries.entry(name.to_owned()).or_default();
        let was_pending = std::mem::take(&mut entry.pending);
        match loaded {
            // The same bytes and manifest as the version in service.
            Ok(None) if !was_pending => return,
            Ok(None) => {}
            Ok(Some(module)) => {
                tracing::info!(task = %name, path = %path.display(), hash = %module.hash, kind = module.wasm.kind(), "task loaded");
                entry.ready = Some(Arc::new(module));
                entry.error = None;
            }
            Err(error) => {
                self.load_failures.inc();
                let reason = format!("{error:#}");
                if entry.error.as_ref() == Some(&reason) && !was_pending {
                    return;
                }
                tracing::warn!(task = %name, path = %path.display(), %reason, kept_previous = entry.ready.is_some(), "task failed to load");
                entry.error = Some(reason);
            }
        }
        drop(entries);
        self.changed();
    }

    /// Whether the version in service came from exactly these files.
    fn is_current(&self, name: &str, hash: &str, manifest: &Manifest) -> bool {
        self.read().get(name).is_some_and(|entry| {
            entry.error.is_none()
                && entry
                    .ready
                    .as_ref()
                    .is_some_and(|m| m.hash == hash && &m.manifest == manifest)
        })
    }

    fn changed(&self) {
        self.changes.send_modify(|version| *version += 1);
    }

    /// The version of `name` in service, or why there is none, saying what exists.
    pub fn get(&self, name: &str) -> Result<Arc<TaskModule>, LookupError> {
        let entries = self.read();
        match entries.get(name) {
            Some(Entry {
                ready: Some(module),
                ..
            }) => Ok(Arc::clone(module)),
            Some(Entry {
                ready: None,
                error: Some(reason),
                ..
            }) => Err(LookupError::FailedToLoad {
                name: name.to_owned(),
                reason: reason.clone(),
            }),
            Some(Entry {
                ready: None,
                pending: true,
                ..
            }) => Err(LookupError::Loading {
                name: name.to_owned(),
            }),
            _ => Err(LookupError::NoSuchTask {
                name: name.to_owned(),
                available: entries
                    .iter()
                    .filter(|(_, entry)| entry.ready.is_some())
                    .map(|(name, _)| name.clone())
                    .collect(),
            }),
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
            .map(|(name, entry)| {
                let ready = entry.ready.as_deref();
                TaskListing {
                    name: name.clone(),
                    description: ready.map(|m| m.description.clone()).unwrap_or_default(),
                    // A failed reload with an older version still in service can run: it
                    // says ready, and `error` tells why the new file was not taken.
                    state: match ready {
                        Some(_) => TaskState::Ready,
                        None if entry.pending => TaskState::Loading,
                        None => TaskState::Failed,
                    },
                    error: entry.error.clone(),
                    limits: ready.map_or(self.server_limits, |m| m.limits),
                    deliver: ready.map_or(Delivery::Submitter, |m| m.deliver),
                    capabilities: ready.map(|m| Grants::clone(&m.grants)).unwrap_or_default(),
                    kind: ready.map(|m| m.wasm.kind()),
                    hash: ready.map(|m| m.hash.clone()),
                    loaded_at: ready
                        .map(|m| humantime::format_rfc3339_seconds(m.loaded_at).to_string()),
                }
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
