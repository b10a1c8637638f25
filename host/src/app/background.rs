//! The server's own work beside the tasks, started once it serves: watching the tasks
//! folder, pushing the task list to clients when it changes, sampling the load for the
//! dashboard (`watch`), warming the sandbox pool and handing freed memory back once the
//! server is quiet. Each stops when the shutdown begins (the dashboard's sampler when
//! connections close).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::App;
use super::context::Ctx;
use crate::freed_memory::{self, QuietAfterWork};
use crate::outbox::Text;
use crate::protocol::Reply;
use crate::registry::{Registry, watch};

/// How often the server looks whether it has gone quiet after work: freed memory goes back
/// one to two of these after the last task ends.
const QUIET_CHECK: Duration = Duration::from_secs(1);

impl<A: App> Ctx<A> {
    /// Starts the background work the configuration asks for.
    pub(crate) fn start_background_work(&self) {
        let default_task = &self.config().default_task;
        if !self.task_names().contains(default_task) {
            tracing::warn!(
                default_task = %default_task,
                "plain-text frames run the default task, which is not in the tasks folder: add \
                 it, or pass --default-task with one that is"
            );
        }
        if self.config().watch {
            // Serving matters more than watching: without a watcher (out of inotify watches,
            // say) the server still runs, with the modules it loaded at start.
            let registry = Arc::clone(self.registry());
            if let Err(error) = watch::spawn(registry, self.stopping().clone()) {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "the tasks folder is not watched: restart to pick up changes"
                );
            }
        }
        if self.registry().has_pending() {
            // A thread of its own, not tokio's blocking pool: the runtime waits for that pool
            // when it stops, and a shutdown must not wait for a compile it no longer needs.
            let registry = Arc::downgrade(self.registry());
            let stop = self.stopping().clone();
            let spawned = std::thread::Builder::new()
                .name("large-task-loader".into())
                .spawn(move || Registry::load_pending(&registry, &stop));
            if let Err(error) = spawned {
                tracing::error!(%error, "could not start loading the large tasks: they stay listed as loading");
            }
        }
        if let Some(cluster) = self.cluster() {
            cluster.start(self);
        }
        tokio::spawn(self.clone().push_task_lists());
        tokio::spawn(self.clone().return_memory_when_quiet());
        tokio::spawn(self.clone().run_watch_feed());
        if self.config().warm_slots > 0 {
            // Set before the first connection, so that a client can wait for the warm pool.
            self.metrics().pool_warming.set(1);
            tokio::spawn(self.clone().warm_pool());
        }
    }

    /// Sends every connection the new task list whenever it changes, until the server stops.
    async fn push_task_lists(self) {
        let mut changes = self.registry().subscribe();
        loop {
            tokio::select! {
                () = self.stopping().cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            let tasks = self.tasks();
            let text = Text::from(Reply::TasksChanged { tasks: &tasks }.to_json());
            // A client that misses one gets the next; none is owed every version.
            self.connections().broadcast(&text);
        }
    }

    /// Hands the memory tasks freed back to the system once the server has gone quiet after
    /// work (see `freed_memory`), checking every [`QUIET_CHECK`] until the server stops.
    async fn return_memory_when_quiet(self) {
        let mut quiet = QuietAfterWork::default();
        let mut every = tokio::time::interval(QUIET_CHECK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stopping().cancelled() => return,
                _ = every.tick() => {}
            }
            let load = self.dispatcher().load();
            let ended = self.metrics().finished() + self.metrics().failed();
            if quiet.due(ended, load.queued + load.running) {
                freed_memory::return_to_system();
            }
        }
    }

    /// Warms `--warm-slots` slots of the sandbox's instance pool with worker permits the
    /// dispatcher lends, giving them back at once if a task needs one (see `sandbox::warm`).
    async fn warm_pool(self) {
        let slots = self.config().warm_slots;
        let started = Instant::now();
        let dispatcher = self.dispatcher();
        let release = dispatcher.reclaimed().child_token();
        // The default task's image goes into the warmed slots: plain-text frames run it, so
        // it is the task most likely to come in a burst first (see `sandbox/warm.rs`).
        let default_task = self.registry().get(&self.config().default_task).ok();
        match self
            .sandbox()
            .warm_pool(
                slots,
                || dispatcher.lend(),
                release,
                default_task.as_ref().map(|task| &task.wasm),
            )
            .await
        {
            Ok(warmed) => {
                self.metrics().pool_warmed_slots.set(warmed.slots as i64);
                tracing::info!(
                    warmed = warmed.slots,
                    of = slots,
                    default_task_image = warmed.image,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "sandbox pool warmed"
                );
            }
            // Only the first tasks' speed depends on it: serve on.
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                "could not warm the sandbox pool; the first tasks in each slot start cold"
            ),
        }
        // The warming stores are gone: their memory goes back now, not during the first
        // burst (see `freed_memory`).
        freed_memory::return_to_system();
        self.metrics().pool_warming.set(0);
    }
}
