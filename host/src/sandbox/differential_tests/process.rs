//! Arguments and environment, randomness, `proc_exit`, the iovec and subscription caps,
//! and the bundled Rust tasks.

use super::harness::{Ending, Harness, INVAL, SUCCESS, Seen, TASK, task};

#[tokio::test]
async fn random_get() {
    let harness = Harness::new();
    let guest = harness.text(
        4,
        r#"
        (call $random (i32.const 0))
        (call $random (i32.const 1))
        (call $random (i32.const 100000))
        "#,
    );
    let seen = harness.same("random_get", &guest, b"").await;
    assert_eq!(seen.log, [0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0], "{seen:?}");
}

#[tokio::test]
async fn arguments_and_environment() {
    let harness = Harness::new();
    let guest = harness.text(
        4,
        r#"
        (i64.store (i32.const 0x100) (i64.const -1))
        (call $log32 (call $args_sizes_get (i32.const 0x100) (i32.const 0x104)))
        (call $log_u32 (i32.const 0x100))
        (call $log_u32 (i32.const 0x104))
        (memory.fill (i32.const 0x6000) (i32.const 0xAA) (i32.const 0x200))
        (call $log32 (call $args_get (i32.const 0x6000) (i32.const 0x6100)))
        (call $log_u32 (i32.const 0x6000))
        (call $log_u32 (i32.const 0x6004))
        (call $log_bytes (i32.const 0x6100) (i32.const 12))
        (i64.store (i32.const 0x100) (i64.const -1))
        (call $log32 (call $environ_sizes_get (i32.const 0x100) (i32.const 0x104)))
        (call $log_u32 (i32.const 0x100))
        (call $log_u32 (i32.const 0x104))
        (memory.fill (i32.const 0x6000) (i32.const 0xAA) (i32.const 0x200))
        (call $log32 (call $environ_get (i32.const 0x6000) (i32.const 0x6100)))
        (call $log_u32 (i32.const 0x6000))
        (call $log_u32 (i32.const 0x6100))
        "#,
    );
    let seen = harness.same("args and environ", &guest, b"").await;
    let size = TASK.len() as i64 + 1;
    assert_eq!(seen.log[..3], [SUCCESS, 1, size], "{seen:?}");
}

/// `proc_exit` ends the run with its status; wasmtime-wasi traps on 126 and above (WASI
/// reserves them), the sandbox takes any non-zero status for a failure all the same.
#[tokio::test]
async fn proc_exit() {
    let harness = Harness::new();
    for status in [0, 1, 3, 125] {
        let guest = harness.text(
            4,
            &format!(
                "(call $iov (i32.const 0) (i32.const 0x800) (i32.const 13))
                 (call $write (i32.const 1) (i32.const 1))
                 (call $proc_exit (i32.const {status}))
                 (call $log (i64.const 99))"
            ),
        );
        let seen = harness
            .same(&format!("proc_exit({status})"), &guest, b"")
            .await;
        assert_eq!(seen.ending, Ending::Exit(status));
        assert_eq!(seen.stdout, "hello, world\n");
        assert_eq!(seen.log, [SUCCESS, 13]);
    }
    for status in [126, 255, -1] {
        let guest = harness.text(4, &format!("(call $proc_exit (i32.const {status}))"));
        let (reference, sandbox) = harness.both(&guest, b"").await;
        assert!(reference.traps(), "proc_exit({status}): {reference:?}");
        assert_eq!(sandbox.ending, Ending::Exit(status), "proc_exit({status})");
    }
}

/// Up to 1024 iovecs and 4096 subscriptions the two agree; past that the sandbox answers
/// `EINVAL`, where wasmtime-wasi goes on.
#[tokio::test]
async fn iovec_and_subscription_caps() {
    let harness = Harness::new();
    for (count, capped) in [(1024, false), (1025, true)] {
        // At 0x30000, all empty but the last.
        let guest = harness.text(
            4,
            &format!(
                "(memory.fill (i32.const 0x30000) (i32.const 0) (i32.const {bytes}))
                 (i32.store (i32.const {last}) (i32.const 0x800))
                 (i32.store offset=4 (i32.const {last}) (i32.const 13))
                 (i32.store (i32.const 0x104) (i32.const 0x7777))
                 (call $log32 (call $fd_write (i32.const 1) (i32.const 0x30000) (i32.const {count})
                   (i32.const 0x104)))
                 (call $log_u32 (i32.const 0x104))
                 (i32.store (i32.const {last}) (i32.const 0x1000))
                 (i32.store offset=4 (i32.const {last}) (i32.const 4))
                 (i32.store (i32.const 0x100) (i32.const 0x7777))
                 (call $log32 (call $fd_read (i32.const 0) (i32.const 0x30000) (i32.const {count})
                   (i32.const 0x100)))
                 (call $log_u32 (i32.const 0x100))",
                bytes = count * 8,
                last = 0x30000 + (count - 1) * 8,
            ),
        );
        let (reference, sandbox) = harness.both(&guest, b"input").await;
        assert_eq!(reference.log[..2], [SUCCESS, 13]);
        assert_eq!(reference.log[2..4], [SUCCESS, 4]);
        if capped {
            assert_eq!(sandbox.log[..2], [INVAL, 0x7777], "{count} iovecs");
            assert_eq!(sandbox.log[2..4], [INVAL, 0x7777], "{count} iovecs");
        } else {
            assert_eq!(sandbox, reference, "{count} iovecs");
        }
    }
    for (count, capped) in [(4096, false), (4097, true)] {
        // Subscriptions of all zeros: realtime clocks, due at once.
        let guest = harness.text(
            12,
            &format!(
                "(memory.fill (i32.const 0x40000) (i32.const 0) (i32.const {bytes}))
                 (call $log32 (call $poll_oneoff (i32.const 0x40000) (i32.const 0x80000)
                   (i32.const {count}) (i32.const 0x120)))
                 (call $log_u32 (i32.const 0x120))",
                bytes = count * 48,
            ),
        );
        let (reference, sandbox) = harness.both(&guest, b"").await;
        assert_eq!(reference.log, [SUCCESS, count], "{count} subscriptions");
        if capped {
            assert_eq!(sandbox.log, [INVAL, 0], "{count} subscriptions");
        } else {
            assert_eq!(sandbox, reference, "{count} subscriptions");
        }
    }
}

/// wasmtime-wasi refuses more than 64 MiB of randomness in one call (a trap); the sandbox
/// fills any buffer the memory holds, in pieces.
#[tokio::test]
async fn random_get_past_64_mib_differs() {
    let harness = Harness::new();
    let guest = harness.text(
        1100,
        "(call $log32 (call $random_get (i32.const 0x100000) (i32.const 0x4000001)))",
    );
    let (reference, sandbox) = harness.both(&guest, b"").await;
    assert!(reference.traps(), "{reference:?}");
    assert_eq!(sandbox.ending, Ending::Returned, "{sandbox:?}");
    assert_eq!(sandbox.log, [SUCCESS]);
}

#[tokio::test]
async fn rust_tasks() {
    let harness = Harness::new();
    let echo = harness.module(&task("echo"));
    let seen = harness
        .same("echo", &echo, br#"{"hello":"world","n":[1,2,3]}"#)
        .await;
    assert_eq!(seen.ending, Ending::Returned);
    assert!(seen.stdout.contains("world"), "{seen:?}");

    let slow = harness.module(&task("slow"));
    let seen = harness.same("slow", &slow, br#"{"seconds":0.01}"#).await;
    assert!(seen.stdout.contains("success"), "{seen:?}");

    let exit = harness.module(&task("exit"));
    let seen = harness.same("exit", &exit, b"null").await;
    assert_eq!(seen.ending, Ending::Exit(3));
    assert!(seen.stderr.contains("status 3"), "{seen:?}");

    let panic = harness.module(&task("panic"));
    let seen = harness.same("panic", &panic, b"null").await;
    assert!(seen.traps(), "{seen:?}");
    assert!(seen.stderr.contains("panicking on purpose"), "{seen:?}");
}

/// `snoop` reports the clocks it read, which differ from run to run: they are checked for
/// being sensible, the rest of its report compared as it is.
#[tokio::test]
async fn snoop_sees_the_same() {
    let harness = Harness::new();
    let snoop = harness.module(&task("snoop"));
    let (reference, sandbox) = harness.both(&snoop, b"null").await;
    let tidy = |seen: &Seen| {
        let mut report: serde_json::Value = serde_json::from_str(&seen.stdout)
            .unwrap_or_else(|error| panic!("snoop prints JSON ({error}): {seen:?}"));
        let result = &mut report;
        let unix_ms = result["clock_unix_ms"].as_u64().expect("a wall clock");
        let monotonic_us = result["clock_monotonic_us"].as_u64().expect("a duration");
        result["clock_unix_ms"] = (unix_ms > 1_577_836_800_000).into();
        result["clock_monotonic_us"] = (monotonic_us < 1_000_000).into();
        Seen {
            stdout: report.to_string(),
            ..seen.clone()
        }
    };
    let (reference, sandbox) = (tidy(&reference), tidy(&sandbox));
    assert_eq!(
        sandbox, reference,
        "snoop: the sandbox (left) and wasmtime-wasi (right) differ"
    );
}
