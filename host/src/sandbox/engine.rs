//! Engine policy, in one place, with a word on each knob.
//!
//! Every task gets a fresh instance from a pooling allocator sized from `--task-workers` and
//! the memory limit. The pool reserves its address space at start, so an impossible size is
//! refused here, with what to change, rather than failing tasks later.

use anyhow::{Context, bail};
use std::path::PathBuf;

use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy,
    PoolingAllocationConfig,
};

use super::cache_dir;

/// Fuel between two voluntary yields to tokio. A guest that never blocks would otherwise hold
/// its worker thread until it ends. Compiled code burns about 8 units per nanosecond
/// (fib(27): 8.7 M units in 1.1 ms), so this is a yield about every 0.12 ms: often enough
/// that an echo beside CPU hogs answers within a few ms (measured p99 5.4 ms with 4 hogs on
/// 2 cores), rare enough that yielding costs little (fib at 54% of native, against 47% with
/// a yield ten times as often; docs/PERFORMANCE.md).
pub const FUEL_YIELD_INTERVAL: u64 = 1_000_000;

/// The most address space the instance pool may reserve. x86-64 user space is 128 TiB; half of
/// it leaves room for everything else the process maps.
const ADDRESS_SPACE_BUDGET: u64 = 64 << 40;

/// A 4 GiB reservation plus guard lets compiled code skip bounds checks on 32-bit memories.
const STATIC_RESERVATION: u64 = 4 << 30;
const STATIC_GUARD: u64 = 32 << 20;

/// With a smaller reservation, code checks bounds itself and a small guard is enough.
const SMALL_GUARD: u64 = 64 << 10;

/// Memory mappings one live instance costs (memory, table, stack and their guards), measured
/// on Linux; `vm.max_map_count` caps them.
const MAPPINGS_PER_INSTANCE: u64 = 6;
const MAPPINGS_FOR_THE_REST: u64 = 2_000;

/// Memory kept mapped in a freed slot so the next task does not fault it in again.
const KEEP_RESIDENT: usize = 1 << 20;

/// Core instances (and tables) one task may hold: a component has a few, and a language
/// runtime linked as shared libraries one per library (componentize-py's Python: 14).
const CORE_INSTANCES_PER_TASK: u32 = 16;

/// Linear memories one task may hold: a component may have a second one.
const MEMORIES_PER_TASK: u32 = 2;

/// Fiber stack kept mapped after a task, so the next task on it does not fault it in again.
const STACK_KEEP_RESIDENT: usize = 128 << 10;

/// Largest table a module may have, in elements; tables also count against the memory cap.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// What the engine must be able to hold, and where it keeps compiled code.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Instances alive at once: one per running task.
    pub instances: usize,
    /// The most memory a task may have, in bytes: its linear memories and tables together.
    pub max_memory_bytes: u64,
    /// The most memory all running tasks may hold together, in bytes (`--memory-budget`).
    pub memory_budget_bytes: u64,
    /// Folder of compiled code, keyed by module content and engine settings, so that a
    /// restart does not compile again. `None`: compile every time.
    pub cache_dir: Option<PathBuf>,
    /// Name every compiled function in /tmp/perf-PID.map, for `perf` (`--perf-map`).
    pub perf_map: bool,
}

/// The part of the settings that sizes the pool.
#[derive(Debug, Clone, Copy)]
struct EngineSize {
    instances: usize,
    max_memory_bytes: u64,
}

/// Builds the engine all modules are compiled for and all tasks run in, and the handle of
/// its compile cache, if it has one.
pub fn build_engine(settings: &EngineSettings) -> anyhow::Result<(Engine, Option<Cache>)> {
    let size = EngineSize {
        instances: settings.instances,
        max_memory_bytes: settings.max_memory_bytes,
    };
    let instances = u32::try_from(size.instances)
        .ok()
        .filter(|&n| n > 0)
        .context("--task-workers must be between 1 and 4294967295")?;
    check_map_count(size.instances as u64)?;
    warn_if_beyond_memory(settings.memory_budget_bytes);
    let (reservation, guard) = reservation_for(size)?;

    let mut config = Config::new();
    // Fuel is both the CPU limit and, with async yields, the preemption that keeps a busy guest
    // from stalling the server: one mechanism, measured cheaper than fuel plus epochs.
    config.consume_fuel(true);
    if settings.perf_map {
        // Linux perf's map of JIT code: one line per compiled function, written as modules
        // load (from the compile cache too), so that profiles name guest code.
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    // The counter in a register rather than in memory around every call (fuel_register.rs).
    super::fuel_register::keep_fuel_in_a_register(&mut config);
    // No Wasm GC: no task needs it (Rust guests use linear memory), and a GC heap is one more
    // memory per task, taken from the same pool slots. Without wasmtime's `gc` feature (see
    // host/Cargo.toml) GC types, `externref` and exceptions are refused at load too.
    config.wasm_gc(false);
    config.memory_reservation(reservation);
    config.memory_guard_size(guard);
    // Growth stays within the reservation: memories never move, so no copy on growth.
    config.memory_reservation_for_growth(0);

    let mut pool = PoolingAllocationConfig::new();
    // One running task holds one fiber stack and one module instance, or one component
    // instance made of several core instances (the WASI adapter's among them), each with
    // its tables, and rarely more than one memory: the pool must not run out before the
    // running-task permits do, or a task would fail with `module_error` under load.
    pool.total_core_instances(instances.saturating_mul(CORE_INSTANCES_PER_TASK))
        .total_component_instances(instances)
        .total_memories(instances.saturating_mul(MEMORIES_PER_TASK))
        .total_tables(instances.saturating_mul(CORE_INSTANCES_PER_TASK))
        .total_stacks(instances)
        .max_memory_size(usize::try_from(size.max_memory_bytes).unwrap_or(usize::MAX))
        .table_elements(MAX_TABLE_ELEMENTS)
        .max_core_instances_per_component(CORE_INSTANCES_PER_TASK)
        .max_memories_per_component(MEMORIES_PER_TASK)
        .max_tables_per_component(CORE_INSTANCES_PER_TASK)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .async_stack_keep_resident(STACK_KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        // Resetting a slot's memory by scanning which pages were touched avoids the
        // cross-core interrupts that `madvise` costs (Linux 6.7+; otherwise it falls back).
        .pagemap_scan(Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));

    let cache = match &settings.cache_dir {
        Some(dir) => {
            cache_dir::prepare(dir)?;
            let mut cache = CacheConfig::new();
            cache.with_directory(dir);
            let cache = Cache::new(cache)
                .map_err(anyhow::Error::from)
                .with_context(|| {
                    format!(
                        "could not use {} as the compile cache: pass another --cache-dir or --no-cache",
                        dir.display()
                    )
                })?;
            config.cache(Some(cache.clone()));
            Some(cache)
        }
        None => None,
    };

    let engine = Engine::new(&config).map_err(anyhow::Error::from).with_context(|| {
        format!(
            "could not reserve the sandbox pool for {instances} task workers of up to {} bytes: \
             lower --task-workers or --memory",
            size.max_memory_bytes
        )
    })?;
    Ok((engine, cache))
}

/// Chooses each memory slot's reservation and guard from the pool size and the memory limit.
fn reservation_for(size: EngineSize) -> anyhow::Result<(u64, u64)> {
    let slots = size.instances as u64 * u64::from(MEMORIES_PER_TASK);
    if size.max_memory_bytes <= STATIC_RESERVATION
        && slots.saturating_mul(STATIC_RESERVATION + STATIC_GUARD) <= ADDRESS_SPACE_BUDGET
    {
        return Ok((STATIC_RESERVATION, STATIC_GUARD));
    }
    let page = 64 << 10;
    let reservation = size.max_memory_bytes.div_ceil(page) * page;
    let per_slot = reservation + SMALL_GUARD;
    if slots.saturating_mul(per_slot) > ADDRESS_SPACE_BUDGET {
        bail!(
            "--task-workers {} with --memory {} needs {} GiB of address space, more than the \
             {} GiB this process can reserve: lower --task-workers or --memory",
            size.instances,
            size.max_memory_bytes,
            slots.saturating_mul(per_slot) >> 30,
            ADDRESS_SPACE_BUDGET >> 30
        );
    }
    Ok((reservation, SMALL_GUARD))
}

/// Says so (in the log, at start) when the memory budget is more than the machine has: then
/// tasks that use their whole limit, many at once, could exhaust the host rather than fail
/// `memory_limit` one by one. The default budget is half the machine's memory.
fn warn_if_beyond_memory(budget: u64) {
    let Some(total) = physical_memory() else {
        return;
    };
    if budget > total {
        tracing::warn!(
            memory_budget = budget,
            physical_memory = total,
            "--memory-budget is more than this machine's memory: running tasks could together \
             exhaust it"
        );
    }
}

/// The machine's RAM in bytes: MemTotal in /proc/meminfo (Linux), else what `sysconf` says.
pub fn physical_memory() -> Option<u64> {
    let from_meminfo = || {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find(|line| line.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    from_meminfo().or_else(|| {
        // SAFETY: sysconf only reads system constants.
        let (pages, page_size) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let pages = u64::try_from(pages).ok()?;
        let page_size = u64::try_from(page_size).ok()?;
        Some(pages.saturating_mul(page_size)).filter(|&bytes| bytes > 0)
    })
}

/// Refuses a pool that Linux's `vm.max_map_count` could not map, naming the sysctl to raise.
fn check_map_count(instances: u64) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string("/proc/sys/vm/max_map_count") else {
        return Ok(()); // not Linux, or not readable: let the allocator decide
    };
    let Ok(max_map_count) = text.trim().parse::<u64>() else {
        return Ok(());
    };
    let needed = instances * MAPPINGS_PER_INSTANCE + MAPPINGS_FOR_THE_REST;
    if needed > max_map_count {
        let fits = (max_map_count.saturating_sub(MAPPINGS_FOR_THE_REST)) / MAPPINGS_PER_INSTANCE;
        bail!(
            "--task-workers {instances} needs about {needed} memory mappings but vm.max_map_count \
             is {max_map_count}: use at most --task-workers {fits}, or raise the limit with \
             `sudo sysctl -w vm.max_map_count={}`",
            needed * 2
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_pools_get_bounds_check_free_reservations() {
        let size = EngineSize {
            instances: 1024,
            max_memory_bytes: 64 << 20,
        };
        assert_eq!(
            reservation_for(size).unwrap(),
            (STATIC_RESERVATION, STATIC_GUARD)
        );
    }

    #[test]
    fn large_pools_reserve_only_the_memory_limit() {
        let size = EngineSize {
            instances: 100_000,
            max_memory_bytes: 64 << 20,
        };
        assert_eq!(reservation_for(size).unwrap(), (64 << 20, SMALL_GUARD));
    }

    /// `--perf-map`: a module's functions are named in /tmp/perf-PID.map as it compiles, for
    /// `perf report`; without the flag nothing is written there.
    #[test]
    fn perf_map_names_a_module_s_functions() {
        let map = std::path::PathBuf::from(format!("/tmp/perf-{}.map", std::process::id()));
        let named = |perf_map: bool| {
            let settings = EngineSettings {
                instances: 1,
                max_memory_bytes: 1 << 20,
                memory_budget_bytes: 1 << 20,
                cache_dir: None,
                perf_map,
            };
            let (engine, _) = build_engine(&settings).unwrap();
            let wat = r#"(module (func $perf_map_probe (export "run")))"#;
            wasmtime::Module::new(&engine, wat).unwrap();
            std::fs::read_to_string(&map).is_ok_and(|text| text.contains("perf_map_probe"))
        };
        let _ = std::fs::remove_file(&map);
        assert!(!named(false), "a map was written without --perf-map");
        let with_flag = named(true);
        let _ = std::fs::remove_file(&map);
        assert!(
            with_flag,
            "{} does not name the module's function",
            map.display()
        );
    }

    /// The pools of fiber stacks and tables hand out the slot freed last (vendor/README.md):
    /// the one whose pages and cache lines are warm. wasmtime's own choice, the slot freed
    /// longest ago, made every echo task after a warmed pool or a burst take a cold stack.
    #[tokio::test]
    async fn the_pool_hands_out_the_fiber_stack_freed_last() {
        use wasmtime::{Caller, Linker, Module, Store};

        let settings = EngineSettings {
            instances: 16,
            max_memory_bytes: 1 << 20,
            memory_budget_bytes: 16 << 20,
            cache_dir: None,
            perf_map: false,
        };
        let (engine, _) = build_engine(&settings).unwrap();
        let module = Module::new(
            &engine,
            r#"(module (import "t" "probe" (func $probe)) (func (export "run") call $probe))"#,
        )
        .unwrap();
        let mut linker = Linker::<usize>::new(&engine);
        // Runs on the call's fiber stack: the address of a local says which stack it is.
        linker
            .func_wrap("t", "probe", |mut caller: Caller<'_, usize>| {
                let here = 0u8;
                *caller.data_mut() = std::hint::black_box(std::ptr::addr_of!(here)) as usize;
            })
            .unwrap();
        let pre = linker.instantiate_pre(&module).unwrap();
        // A store keeps its fiber stack from its first call until it is dropped.
        let call = async || {
            let mut store = Store::new(&engine, 0usize);
            store.set_fuel(1_000_000).unwrap();
            let instance = pre.instantiate_async(&mut store).await.unwrap();
            let run = instance
                .get_typed_func::<(), ()>(&mut store, "run")
                .unwrap();
            run.call_async(&mut store, ()).await.unwrap();
            let stack = *store.data();
            (store, stack)
        };
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(call().await);
        }
        let stacks: Vec<usize> = held.iter().map(|(_, stack)| *stack).collect();
        // Freed in order: the first one's stack is the oldest free one, the last one's the
        // newest.
        drop(held);
        let (_store, next) = call().await;
        let near = |a: usize, b: usize| a.abs_diff(b) < 64 << 10;
        assert!(
            near(next, stacks[7]),
            "the next call ran on a stack at {next:#x}, not on the one freed last at {:#x} \
             (the stacks freed, oldest first: {stacks:#x?})",
            stacks[7]
        );
    }

    /// A module's memory goes to a slot that last held it, whichever thread asks: wasmtime
    /// keeps the pool's memory slots in shards, one a thread's home, and as published took a
    /// never-used slot in the asking thread's shard before a warm one in another's (vendor/
    /// README.md). Each thread here is new, so their homes go round the shards.
    #[test]
    fn a_memory_slot_freed_on_one_thread_is_reused_on_another() {
        use wasmtime::{Module, Store};

        let settings = EngineSettings {
            // 128 memory slots: wasmtime shards a pool of that many, one shard a core.
            instances: 64,
            max_memory_bytes: 1 << 20,
            memory_budget_bytes: 64 << 20,
            cache_dir: None,
            perf_map: false,
        };
        let (engine, _) = build_engine(&settings).unwrap();
        let module = Module::new(&engine, r#"(module (memory (export "memory") 1))"#).unwrap();
        // Instantiates the module on a thread of its own and drops it: its memory's address.
        let slot_on_a_new_thread = || {
            let (engine, module) = (engine.clone(), module.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let mut store = Store::new(&engine, ());
                    store.set_fuel(1_000).unwrap();
                    let instance = wasmtime::Instance::new_async(&mut store, &module, &[])
                        .await
                        .unwrap();
                    let memory = instance.get_memory(&mut store, "memory").unwrap();
                    memory.data_ptr(&store) as usize
                })
            })
            .join()
            .unwrap()
        };
        let first = slot_on_a_new_thread();
        for thread in 1..6 {
            assert_eq!(
                slot_on_a_new_thread(),
                first,
                "thread {thread} took another memory slot than the one the module left warm"
            );
        }
    }

    #[test]
    fn impossible_pools_are_refused_with_what_to_change() {
        let size = EngineSize {
            instances: 10_000_000,
            max_memory_bytes: 1 << 30,
        };
        let message = reservation_for(size).unwrap_err().to_string();
        assert!(message.contains("lower --task-workers"), "{message}");
    }
}
