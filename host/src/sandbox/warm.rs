//! Warming the instance pool at start, so that the first burst of tasks does not pay for it.
//!
//! A slot the pool has never handed out is cold: the first task in it sets up its memory
//! mappings, page tables and fiber stack, which freed slots keep for the next task. A burst
//! of 10,000 sleeping tasks on a cold pool took 2.16 s, the same burst right after it 1.28 s
//! (docs/PERFORMANCE.md). Warming runs a tiny built-in module in as many slots as it may,
//! all at once (so each lands in a slot of its own), each on a fiber stack of its own, then
//! frees them all. Measured: what pays is the first instantiation and call in each slot
//! (its mappings, page tables and stack); having the module also write to its memory and
//! stack pages made no difference but cost resident memory, so it does not.
//!
//! When the default task (`--default-task`) is a preview 1 module, each warming store
//! instantiates that module instead, without calling it. The pool keeps the module's data
//! image mapped in the slot when the store goes (a slot remembers its last module), so the
//! default task's first burst finds its image in place. Mapping an image into a fresh slot
//! takes the process's address-space lock for writing and holds up the other threads' page
//! faults meanwhile: 10,000 `slow` from a pool warmed this way took 1.55-1.60 s, against
//! 2.06-2.56 s without it (docs/PERFORMANCE.md). Its imports are traps, so no task code can
//! do anything: only a start function, if the module has one, runs (within [`WARM_FUEL`]),
//! and any import it calls traps; a module that cannot be instantiated so is left out, and
//! the built-in module warms the slots. Beside the image, each warming store calls a second
//! built-in module without a memory (`STACK_HOLDER`), which waits in `hold` as the plain one
//! does, so that every warmed slot's store also holds a fiber stack of its own: a task's first
//! run on a stack the pool never handed out faults in its top page and the page table above
//! it, 16% of the server's CPU while 10,000 sleepers started. Measured in alternated pairs:
//! the burst 20-30 ms shorter, for 4 KiB more resident a warmed slot, which the task would
//! have touched anyway (docs/PERFORMANCE.md).
//!
//! With the image in place, warming also faults in, writable, the pages of the slot's memory
//! that a task of that module writes first (`image_layout`: the stack's top page, the page
//! holding the image's end and the next, the initial memory's last page). In a fresh slot
//! each is a page fault of the task's, and where the task read the page first, its write
//! replaces a read-only page-table entry, which interrupts every other core running the
//! server; the pool keeps written pages resident (reset from the image) for the slot's next
//! task. Measured on 10,000 sleepers: the image's two pages made the burst a sixth shorter,
//! with 40% less CPU a sleeper; the stack's and the memory's last page took another 20-70 ms
//! off its start and about a tenth of the CPU left. They cost 16 KiB resident a warmed slot (160
//! MiB at 10,000), which the task would have written anyway (docs/PERFORMANCE.md).
//!
//! The slots come from the caller's `lend`, so warming never takes a slot a task needs: the
//! dispatcher lends only free permits and reclaims them (cancelling `release`) as soon as a
//! task waits.

use std::ops::Range;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wasmtime::{Engine, ExternType, InstancePre, Linker, Memory, Module, Store};

use super::image_layout;

/// What the warming module does: wait in a host call until released, holding its slot (a
/// memory, like a task's) and its fiber stack.
const WARM_MODULE: &str = r#"
(module
  (import "taskhost-warm" "hold" (func $hold))
  (memory 17)
  (func (export "_start") (call $hold)))
"#;

/// What holds a fiber stack beside the default task's image: the same wait in `hold`, with no
/// memory of its own, so the slot keeps the image.
const STACK_HOLDER: &str = r#"
(module
  (import "taskhost-warm" "hold" (func $hold))
  (func (export "_start") (call $hold)))
"#;

/// Fuel for the warming module's few dozen instructions, with room to spare.
const WARM_FUEL: u64 = 100_000;

/// Slots started between two yields to the scheduler, so that warming shares the threads.
const BATCH: usize = 64;

/// What warming did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Warmed {
    /// Slots warmed.
    pub slots: usize,
    /// Whether they hold the default task's image (else the built-in module warmed them).
    pub image: bool,
}

/// The default task's module, to warm the pool with.
pub struct Image<'a> {
    pub module: &'a Module,
    /// Where its tasks write first in its memory (`image_layout`).
    pub layout: image_layout::Layout,
}

/// What a warming store holds its slot with.
#[derive(Clone)]
enum Occupant {
    /// The built-in module, called: it waits in `hold` until released.
    BuiltIn(InstancePre<Holding>),
    /// The default task's module, instantiated and not called, beside the stack holder,
    /// called: it waits in `hold` on a fiber stack of the pool.
    Image {
        image: InstancePre<Holding>,
        /// The bytes of the image's memory to fault in writable
        /// (`image_layout::written_first`), the same in every slot.
        written: Vec<Range<usize>>,
        stack_holder: InstancePre<Holding>,
    },
}

/// A warming instance's store.
struct Holding {
    release: CancellationToken,
    /// Told when the instance holds its slot.
    holding: mpsc::UnboundedSender<anyhow::Result<()>>,
}

/// The warming modules, linked once.
pub struct Warmer {
    pre: InstancePre<Holding>,
    stack_holder: InstancePre<Holding>,
}

impl Warmer {
    pub fn new(engine: &Engine) -> anyhow::Result<Warmer> {
        let module = Module::new(engine, WARM_MODULE)
            .map_err(anyhow::Error::from)
            .context("could not compile the pool-warming module")?;
        let stack_holder = Module::new(engine, STACK_HOLDER)
            .map_err(anyhow::Error::from)
            .context("could not compile the pool-warming stack holder")?;
        let mut linker = Linker::<Holding>::new(engine);
        linker
            .func_wrap_async("taskhost-warm", "hold", |caller, ()| {
                let _ = caller.data().holding.send(Ok(()));
                let release = caller.data().release.clone();
                Box::new(async move {
                    release.cancelled().await;
                    Ok(())
                })
            })
            .map_err(anyhow::Error::from)?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(anyhow::Error::from)
            .context("could not link the pool-warming module")?;
        let stack_holder = linker
            .instantiate_pre(&stack_holder)
            .map_err(anyhow::Error::from)
            .context("could not link the pool-warming stack holder")?;
        Ok(Warmer { pre, stack_holder })
    }

    /// Warms up to `slots` slots, each held with a permit from `lend`, until all are held or
    /// `lend` has none left, then frees them all (at once if `release` is cancelled first).
    /// With `image`, each slot's store instantiates that module instead of the built-in one,
    /// mapping its image into the slot (see the module docs). Says how many were warmed, and
    /// whether with the image.
    ///
    /// Each slot is held by a task of its own, so that the scheduler spreads them over its
    /// worker threads: the pool keeps a shard of slots per thread, and a task takes its
    /// slot from its thread's shard first.
    pub async fn warm<P: Send + 'static>(
        &self,
        slots: usize,
        mut lend: impl FnMut() -> Option<P>,
        release: CancellationToken,
        image: Option<Image<'_>>,
    ) -> anyhow::Result<Warmed> {
        let occupant = match image {
            Some(image) => match image_holder(image.module).await {
                Ok(pre) => Occupant::Image {
                    image: pre,
                    written: written_first(image.module, image.layout),
                    stack_holder: self.stack_holder.clone(),
                },
                Err(error) => {
                    tracing::info!(
                        error = format!("{error:#}"),
                        "the pool is warmed without the default task's image"
                    );
                    Occupant::BuiltIn(self.pre.clone())
                }
            },
            None => Occupant::BuiltIn(self.pre.clone()),
        };
        let mut held = JoinSet::new();
        let (holding_tx, mut holding) = mpsc::unbounded_channel();
        let mut warmed = 0;
        let mut failure = None;
        'fill: while warmed < slots && !release.is_cancelled() {
            let mut started = 0;
            for _ in 0..BATCH.min(slots - warmed) {
                let Some(permit) = lend() else {
                    break 'fill;
                };
                let (occupant, release, holding) =
                    (occupant.clone(), release.clone(), holding_tx.clone());
                held.spawn(async move {
                    let held = hold_slot(occupant, release, holding).await;
                    drop(permit);
                    held
                });
                started += 1;
            }
            // Wait for the batch to be in place before the next, so warming shares the threads.
            for _ in 0..started {
                if let Some(Err(error)) = holding.recv().await {
                    failure.get_or_insert(error);
                    break 'fill;
                }
            }
            warmed += started;
        }
        release.cancel();
        while held.join_next().await.is_some() {}
        match failure {
            Some(error) => Err(error),
            None => Ok(Warmed {
                slots: warmed,
                image: matches!(occupant, Occupant::Image { .. }),
            }),
        }
    }
}

/// `module` linked with every import a trap, for warming its image into slots; checked by
/// instantiating it once (which fails if it imports anything but functions, or if a start
/// function of its traps).
async fn image_holder(module: &Module) -> anyhow::Result<InstancePre<Holding>> {
    let mut linker = Linker::<Holding>::new(module.engine());
    linker
        .define_unknown_imports_as_traps(module)
        .map_err(anyhow::Error::from)?;
    let pre = linker
        .instantiate_pre(module)
        .map_err(anyhow::Error::from)?;
    let mut store = warming_store(
        module.engine(),
        CancellationToken::new(),
        mpsc::unbounded_channel().0,
    )?;
    pre.instantiate_async(&mut store)
        .await
        .map_err(anyhow::Error::from)
        .context("it could not be instantiated with its imports as traps")?;
    Ok(pre)
}

/// A store for one warming instance, with its fuel.
fn warming_store(
    engine: &Engine,
    release: CancellationToken,
    holding: mpsc::UnboundedSender<anyhow::Result<()>>,
) -> anyhow::Result<Store<Holding>> {
    let mut store = Store::new(engine, Holding { release, holding });
    store.set_fuel(WARM_FUEL).map_err(anyhow::Error::from)?;
    Ok(store)
}

/// Holds a slot in a fresh store with `occupant` until released: the built-in module runs
/// and waits in `hold`; the default task's module is instantiated and not called, and the
/// stack holder waits in `hold` beside it. Says on `holding` when it holds its slot (and a
/// fiber stack), or that it could not.
async fn hold_slot(
    occupant: Occupant,
    release: CancellationToken,
    holding: mpsc::UnboundedSender<anyhow::Result<()>>,
) {
    let (Occupant::BuiltIn(either) | Occupant::Image { image: either, .. }) = &occupant;
    let engine = either.module().engine();
    let started = async {
        let mut store = warming_store(engine, release, holding.clone())?;
        match &occupant {
            Occupant::Image {
                image,
                written,
                stack_holder,
            } => {
                let instance = image
                    .instantiate_async(&mut store)
                    .await
                    .map_err(anyhow::Error::from)
                    .context("could not instantiate the default task's module to warm its image")?;
                if let Some(memory) = instance.get_memory(&mut store, "memory") {
                    for pages in written {
                        write_first_pages(&store, memory, pages.clone());
                    }
                }
                wait_in_hold(&mut store, stack_holder).await
            }
            Occupant::BuiltIn(pre) => wait_in_hold(&mut store, pre).await,
        }
    };
    if let Err(error) = started.await {
        let _ = holding.send(Err(error));
    }
}

/// Instantiates `holder` (the built-in module or the stack holder) in `store` and calls it: it
/// waits in `hold`, on a fiber stack of the pool, until released.
async fn wait_in_hold(
    store: &mut Store<Holding>,
    holder: &InstancePre<Holding>,
) -> anyhow::Result<()> {
    let instance = holder
        .instantiate_async(&mut *store)
        .await
        .map_err(anyhow::Error::from)
        .context("could not instantiate the pool-warming module")?;
    let start = instance
        .get_typed_func::<(), ()>(&mut *store, "_start")
        .map_err(anyhow::Error::from)?;
    start
        .call_async(&mut *store, ())
        .await
        .map_err(anyhow::Error::from)
        .context("the pool-warming module failed")
}

/// The bytes of `module`'s memory a task writes first, from its layout: the ranges
/// `image_layout::written_first` names within the memory's initial size. None when the module
/// exports no memory.
fn written_first(module: &Module, layout: image_layout::Layout) -> Vec<Range<usize>> {
    let Some(ExternType::Memory(memory)) = module.get_export("memory") else {
        return Vec::new();
    };
    let initial = memory.minimum().saturating_mul(memory.page_size());
    image_layout::written_first(layout, host_page_bytes(), initial)
        .into_iter()
        .filter_map(|pages| {
            Some(usize::try_from(pages.start).ok()?..usize::try_from(pages.end).ok()?)
        })
        .collect()
}

/// Faults in, writable, the bytes `pages` of `memory` (see the module docs). Best effort: a
/// kernel without `MADV_POPULATE_WRITE` (before Linux 5.14) refuses it, and the task faults
/// them in as it would have.
fn write_first_pages(store: &Store<Holding>, memory: Memory, pages: Range<usize>) {
    if pages.end > memory.data_size(store) {
        return;
    }
    // SAFETY: `pages` is within the memory's accessible bytes (checked above), which this
    // store's instance owns and nothing else touches meanwhile.
    let start = unsafe { memory.data_ptr(store).add(pages.start) };
    if let Err(error) = populate_writable(start, pages.len()) {
        tracing::debug!(
            error = %error,
            "a warmed slot's first-written pages were left to fault in"
        );
    }
}

/// `madvise(MADV_POPULATE_WRITE)`: makes `length` bytes at `pages` present and writable,
/// changing no byte, as a write of their own contents would.
#[cfg(target_os = "linux")]
fn populate_writable(pages: *mut u8, length: usize) -> std::io::Result<()> {
    // SAFETY: the caller passes a range of memory this process maps; the call changes no
    // byte in it.
    match unsafe { libc::madvise(pages.cast(), length, libc::MADV_POPULATE_WRITE) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(not(target_os = "linux"))]
fn populate_writable(_pages: *mut u8, _length: usize) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// The host's page size, which `madvise` works in.
fn host_page_bytes() -> u64 {
    // SAFETY: sysconf only reads a system setting.
    let bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(bytes).ok().filter(|&b| b > 0).unwrap_or(4096)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::{Read, Seek, SeekFrom};

    use super::*;

    /// Whether the page at `address` is present, and whether it is still the file's (or
    /// shared) rather than this process's own copy: bits 63 and 61 of its pagemap entry,
    /// which need no privilege to read.
    fn page_state(address: usize) -> (bool, bool) {
        let page = host_page_bytes() as usize;
        let mut pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
        pagemap
            .seek(SeekFrom::Start((address / page * 8) as u64))
            .unwrap();
        let mut entry = [0; 8];
        pagemap.read_exact(&mut entry).unwrap();
        let entry = u64::from_le_bytes(entry);
        (entry >> 63 & 1 == 1, entry >> 61 & 1 == 1)
    }

    #[tokio::test]
    async fn the_pages_a_task_writes_first_are_made_present_and_private() {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(true);
        let engine = Engine::new(&config).unwrap();
        // A stack below 64 KiB, an image of a page and a half at 64 KiB, in a memory of four
        // wasm pages.
        let page = host_page_bytes() as usize;
        let binary = wat::parse_str(format!(
            r#"(module
                 (memory (export "memory") 4)
                 (global (mut i32) (i32.const 65536))
                 (data (i32.const 65536) "{}"))"#,
            "x".repeat(page * 3 / 2)
        ))
        .unwrap();
        let module = Module::new(&engine, &binary).unwrap();
        let written = written_first(&module, image_layout::Layout::of(&binary));
        let pre = Linker::new(&engine).instantiate_pre(&module).unwrap();
        let mut store = warming_store(
            &engine,
            CancellationToken::new(),
            mpsc::unbounded_channel().0,
        )
        .unwrap();
        let instance = pre.instantiate_async(&mut store).await.unwrap();
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        for pages in &written {
            write_first_pages(&store, memory, pages.clone());
        }
        let base = memory.data_ptr(&store) as usize;
        let end = 4 * 65536;
        assert_eq!(
            written,
            [
                65536 - page..65536,
                65536 + page..65536 + 3 * page,
                end - page..end
            ]
        );
        for address in written.iter().flat_map(|pages| pages.clone().step_by(page)) {
            let (present, shared) = page_state(base + address);
            assert!(
                present && !shared,
                "the page at {address} is present and private"
            );
        }
        for untouched in [65536, 65536 + 3 * page] {
            let (present, _) = page_state(base + untouched);
            assert!(!present, "the page at {untouched} is left alone");
        }
        assert_eq!(memory.data(&store)[65536 + page], b'x', "no byte changed");
        assert_eq!(memory.data(&store)[65536 + 3 * page - 1], 0);
        assert_eq!(memory.data(&store)[end - 1], 0);
    }
}
