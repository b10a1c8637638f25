//! Scenario 7, start-up: from spawning the process to the first `200` from `/healthz`, which
//! the server answers once every module in the tasks folder is compiled and the pool is ready.
//!
//! "Cold" is the first start of the run, with the run's compile cache emptied; "warm" the median
//! of the later ones, which load the modules compiled by the first. A server without a compile
//! cache (no `--cache-dir`) compiles every time, and cold and warm differ only by what the OS
//! has cached. Baseline: the same binary with an empty tasks folder, i.e. everything but
//! loading modules.

use std::path::Path;

use anyhow::Context;

use serde::Serialize;

use crate::report::{Row, Target, Unit};
use crate::server::{Launcher, Mode};

pub const NAME: &str = "7 start-up";

#[derive(Debug, Clone, Serialize)]
pub struct Startup {
    /// Whether the server has a compile cache (`--cache-dir`), so that warm starts load
    /// compiled code.
    pub compile_cache: bool,
    /// Every start with the tasks folder, in order, in milliseconds.
    pub starts_ms: Vec<f64>,
    pub cold_ms: f64,
    pub warm_ms: f64,
    /// Every start with an empty tasks folder, in milliseconds.
    pub empty_starts_ms: Vec<f64>,
    pub empty_cold_ms: f64,
    pub empty_warm_ms: f64,
}

pub async fn run(
    launcher: &Launcher,
    starts: usize,
    empty_tasks: &Path,
) -> anyhow::Result<Startup> {
    let starts = starts.max(2);
    if let Some(cache) = &launcher.cache_dir
        && cache.exists()
    {
        std::fs::remove_dir_all(cache)
            .with_context(|| format!("could not empty the compile cache {}", cache.display()))?;
    }
    let mut starts_ms = Vec::with_capacity(starts);
    for i in 0..starts {
        let server = launcher
            .start(&format!("startup-{i}"), Mode::Sandbox, &[])
            .await?;
        starts_ms.push(server.ready_after.as_secs_f64() * 1e3);
        server.stop().await?;
    }
    std::fs::create_dir_all(empty_tasks)?;
    let mut empty_starts_ms = Vec::with_capacity(starts);
    for i in 0..starts {
        let server = launcher
            .start_with_tasks(
                &format!("startup-empty-{i}"),
                Mode::Sandbox,
                empty_tasks,
                &[],
            )
            .await?;
        empty_starts_ms.push(server.ready_after.as_secs_f64() * 1e3);
        server.stop().await?;
    }
    Ok(Startup {
        compile_cache: launcher.cache_dir.is_some(),
        cold_ms: starts_ms[0],
        warm_ms: median(&starts_ms[1..]),
        empty_cold_ms: empty_starts_ms[0],
        empty_warm_ms: median(&empty_starts_ms[1..]),
        starts_ms,
        empty_starts_ms,
    })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

impl Startup {
    pub fn rows(&self) -> Vec<Row> {
        let cache = if self.compile_cache {
            "compile cache emptied before the first start"
        } else {
            "the server has no compile cache (--cache-dir): every start compiles every module"
        };
        vec![
            Row::new(NAME, "cold (first start)", Unit::Millis, self.cold_ms)
                .baseline("empty tasks/", Some(self.empty_cold_ms))
                .note(cache),
            Row::new(
                NAME,
                format!("warm (median of {})", self.starts_ms.len() - 1),
                Unit::Millis,
                self.warm_ms,
            )
            .baseline("empty tasks/", Some(self.empty_warm_ms))
            .target(Target::AtMost { value: 200.0 }),
        ]
    }
}
