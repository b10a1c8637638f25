//! The fuel counter kept in a register for the whole of a wasm run.
//!
//! Fuel is the CPU limit and the preemption (`engine.rs`). Cranelift as published keeps the
//! counter in memory: every call between wasm functions stores it before and loads it after,
//! every function loads it at entry and stores it at exit. On some CPUs that chain of stores
//! and dependent loads alone held a recursive guest to about half of native speed
//! (docs/PERFORMANCE.md, "fib on the Intel host: what fuel costs"). The vendored Cranelift
//! (`vendor/wasmtime-internal-cranelift`) keeps it in the pinned register instead when the
//! engine sets `enable_pinned_reg`, and moves it to memory and back in every trampoline
//! between wasm and the host, so the host reads the same counter at every point it can look:
//! `fuel_used`, the limit and the yields are unchanged. vendor/README.md has the details.

use wasmtime::Config;

/// Keeps the fuel counter in a register, where the vendored Cranelift supports it (x86-64;
/// elsewhere the counter stays in memory, as published).
pub(super) fn keep_fuel_in_a_register(config: &mut Config) {
    if cfg!(target_arch = "x86_64") {
        // SAFETY: the flag takes one register out of every function Cranelift generates; the
        // vendored Cranelift moves the counter into it and back at each crossing between wasm
        // and the host, and saves and restores the host's value of it in the entry trampoline,
        // on the normal and the trapping return alike.
        unsafe {
            config.cranelift_flag_enable("enable_pinned_reg");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Caller, Engine, Linker, Module, Store, Trap};

    /// A recursive function, calls into the host between its runs (the host looks at the
    /// fuel left, and may set it), and a trap after work.
    const GUEST: &str = r#"
        (module
          (import "host" "look" (func $look (param i32)))
          (func $fib (param i64) (result i64)
            local.get 0
            i64.const 2
            i64.lt_u
            if (result i64)
              local.get 0
            else
              local.get 0
              i64.const 1
              i64.sub
              call $fib
              local.get 0
              i64.const 2
              i64.sub
              call $fib
              i64.add
            end)
          (func (export "run") (param i64) (result i64)
            i32.const 1
            call $look
            local.get 0
            call $fib
            i32.const 2
            call $look
            local.get 0
            call $fib
            i64.add)
          (func (export "trap") (param i64)
            local.get 0
            call $fib
            drop
            i32.const 3
            call $look
            unreachable))
    "#;

    /// What the host saw at each `look`, and how much fuel was left at the end.
    #[derive(Debug, PartialEq)]
    struct Seen {
        looks: Vec<(i32, u64)>,
        left: u64,
        trap: Option<Trap>,
        result: Option<i64>,
    }

    /// The guest compiled for an engine with fuel, its counter in the register or not.
    fn compiled(in_register: bool) -> Module {
        let mut config = Config::new();
        config.consume_fuel(true);
        if in_register {
            keep_fuel_in_a_register(&mut config);
        }
        Module::new(&Engine::new(&config).unwrap(), GUEST).unwrap()
    }

    /// Runs `export` of `module` with `fuel` on a fresh store, the host setting the fuel to
    /// `refill` at the first look when given.
    fn run(module: &Module, export: &str, fuel: u64, refill: Option<u64>) -> Seen {
        let engine = module.engine();
        let mut linker = Linker::new(engine);
        linker
            .func_wrap(
                "host",
                "look",
                move |mut caller: Caller<'_, Vec<(i32, u64)>>, at: i32| {
                    let left = caller.get_fuel().unwrap();
                    caller.data_mut().push((at, left));
                    if let (1, Some(fuel)) = (at, refill) {
                        caller.set_fuel(fuel).unwrap();
                    }
                },
            )
            .unwrap();
        let mut store = Store::new(engine, Vec::new());
        store.set_fuel(fuel).unwrap();
        let instance = linker.instantiate(&mut store, module).unwrap();
        let (result, trap) = if export == "run" {
            let run = instance
                .get_typed_func::<i64, i64>(&mut store, "run")
                .unwrap();
            match run.call(&mut store, 20) {
                Ok(value) => (Some(value), None),
                Err(error) => (None, error.downcast_ref::<Trap>().copied()),
            }
        } else {
            let trap = instance
                .get_typed_func::<i64, ()>(&mut store, "trap")
                .unwrap();
            let error = trap.call(&mut store, 15).unwrap_err();
            (None, error.downcast_ref::<Trap>().copied())
        };
        Seen {
            left: store.get_fuel().unwrap(),
            looks: std::mem::take(store.data_mut()),
            trap,
            result,
        }
    }

    /// The counter in a register counts exactly what the counter in memory counts: the fuel
    /// the host sees at each call into it and after the run, to the unit.
    #[test]
    fn the_register_counts_what_memory_counts() {
        let in_memory = run(&compiled(false), "run", 10_000_000, None);
        let in_register = run(&compiled(true), "run", 10_000_000, None);
        assert_eq!(in_memory.result, Some(2 * 6765));
        assert_eq!(in_register, in_memory);
        let [(1, first), (2, second)] = in_memory.looks[..] else {
            panic!("{in_memory:?}")
        };
        assert!(first > second && second > in_memory.left, "{in_memory:?}");
    }

    /// The comparisons above mean something only if the two engines differ: the flag is set
    /// (on x86-64; elsewhere the counter stays in memory and the engines are the same).
    #[test]
    fn the_flag_changes_how_code_is_compiled() {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let settings = |module: &Module| {
            let mut hasher = DefaultHasher::new();
            module
                .engine()
                .precompile_compatibility_hash()
                .hash(&mut hasher);
            hasher.finish()
        };
        let differ = settings(&compiled(true)) != settings(&compiled(false));
        assert_eq!(differ, cfg!(target_arch = "x86_64"));
    }

    /// Fuel the host sets during a call (as the out-of-fuel intrinsic does at every yield) is
    /// what the guest runs on after it: here too little, and both stop at the same point.
    #[test]
    fn fuel_the_host_sets_mid_run_is_what_the_guest_runs_on() {
        let in_memory = run(&compiled(false), "run", 10_000_000, Some(5_000));
        let register = compiled(true);
        let in_register = run(&register, "run", 10_000_000, Some(5_000));
        assert_eq!(in_memory.trap, Some(Trap::OutOfFuel), "{in_memory:?}");
        assert_eq!(in_register, in_memory);
        let enough = run(&register, "run", 10_000_000, Some(5_000_000));
        assert_eq!(enough.result, Some(2 * 6765), "{enough:?}");
    }

    /// A trap unwinds through the entry trampoline, which gives the host its own value of the
    /// register back: the host keeps running (many times over, each call on a fresh store),
    /// and the fuel counted up to the last call into the host is kept.
    #[test]
    fn traps_give_the_host_its_register_back_and_keep_the_count() {
        let in_memory = run(&compiled(false), "trap", 10_000_000, None);
        let module = compiled(true);
        for _ in 0..200 {
            let in_register = run(&module, "trap", 10_000_000, None);
            assert_eq!(in_register.trap, Some(Trap::UnreachableCodeReached));
            assert_eq!(in_register.looks, in_memory.looks);
            // After the last look only `unreachable` ran: memory counts its one unit, the
            // register's count stops at the look.
            assert!(in_memory.left <= in_register.left && in_register.left <= in_memory.left + 1);
        }
    }
}
