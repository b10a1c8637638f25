//! Watching the tasks folder: a module or manifest that is added, replaced or removed takes
//! effect without a restart.
//!
//! Design: the watcher's callback (on notify's thread) forwards events into a channel; one
//! tokio task turns them into per-task deadlines and reloads each task when its deadline
//! passes, compiling on the blocking pool. A file is loaded once it is complete: when its
//! writer closes it or it is renamed into place (then after `SETTLE`, to gather the burst of
//! events one copy makes), or, for writers that never close, after `QUIET` without events.
//! A half-written file that is loaded anyway fails validation and the version in service stays.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Registry, task_name};

/// Wait after a file is closed, renamed or removed: one copy or save is a burst of events.
const SETTLE: Duration = Duration::from_millis(50);

/// Wait after the last write when the writer has not closed the file yet.
const QUIET: Duration = Duration::from_millis(1500);

/// Starts watching the registry's folder until `stop` is cancelled.
pub fn spawn(registry: Arc<Registry>, stop: CancellationToken) -> anyhow::Result<()> {
    let (events, mut received) = mpsc::unbounded_channel();
    let mut watcher = RecommendedWatcher::new(
        move |event: notify::Result<Event>| {
            // The receiver is gone only once the server stopped watching.
            let _ = events.send(event);
        },
        notify::Config::default(),
    )
    .context("could not start watching the tasks folder")?;
    watcher
        .watch(registry.dir(), RecursiveMode::NonRecursive)
        .with_context(|| format!("could not watch {}", registry.dir().display()))?;
    tracing::info!(dir = %registry.dir().display(), "watching the tasks folder");

    tokio::spawn(async move {
        // Dropping the watcher stops notify's thread: keep it for as long as this task runs.
        let _watcher = watcher;
        let mut due: HashMap<String, Instant> = HashMap::new();
        loop {
            let next = due.values().min().copied();
            tokio::select! {
                () = stop.cancelled() => break,
                event = received.recv() => match event {
                    Some(Ok(event)) => note(&event, &mut due),
                    Some(Err(error)) => tracing::warn!(%error, "watching the tasks folder"),
                    None => break,
                },
                () = sleep_until(next), if next.is_some() => {
                    let now = Instant::now();
                    let ready: Vec<String> = due
                        .iter()
                        .filter(|(_, at)| **at <= now)
                        .map(|(name, _)| name.clone())
                        .collect();
                    for name in ready {
                        due.remove(&name);
                        let registry = Arc::clone(&registry);
                        // Compiling takes milliseconds of CPU: keep it off the async threads.
                        if let Err(error) = tokio::task::spawn_blocking(move || registry.reload_changed(&name)).await {
                            tracing::error!(%error, "reloading a task failed");
                        }
                    }
                }
            }
        }
    });
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Sets when each task touched by `event` should be reloaded.
fn note(event: &Event, due: &mut HashMap<String, Instant>) {
    let wait = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(_))
        | EventKind::Remove(_) => SETTLE,
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => QUIET,
        // Reads (including the loader's own), metadata and the rest change nothing.
        _ => return,
    };
    // The latest event decides: a close after writes means "now", a write after a close
    // means more is coming.
    for path in &event.paths {
        match task_name(path) {
            Some(name) => {
                due.insert(name, Instant::now() + wait);
            }
            // Said once, when the file is complete, and only for what looks like a task.
            None if wait == SETTLE
                && !matches!(event.kind, EventKind::Remove(_))
                && looks_like_a_task(path) =>
            {
                tracing::warn!(
                path = %path.display(),
                    "skipped: a task file is NAME.wasm, NAME.wat or NAME.toml, NAME made of a-z, \
                     0-9, _ and -"
                );
            }
            None => {}
        }
    }
}

/// A file with a task's extension but a name that is not a task name (`Resize.wasm`,
/// `my task.wat`); temporary names such as `NAME.wasm.tmp` do not have the extension.
fn looks_like_a_task(path: &std::path::Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|name| name.to_str())
        .is_none_or(|name| name.starts_with('.'));
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    !hidden && ["wasm", "wat", "toml"].contains(&extension.to_ascii_lowercase().as_str())
}
