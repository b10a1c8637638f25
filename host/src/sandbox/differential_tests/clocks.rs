//! The clocks: `clock_time_get` and `clock_res_get` on every clock id, the monotonic
//! clock's start, and `poll_oneoff` on clocks, relative and absolute.

use std::time::Duration;

use super::harness::{BADF, Harness, SUCCESS};

#[tokio::test]
async fn every_clock_id() {
    let harness = Harness::new();
    let guest = harness.text(
        4,
        r#"
        (call $time (i32.const 0))
        (call $time (i32.const 1))
        (call $time (i32.const 2))
        (call $time (i32.const 3))
        (call $res (i32.const 0))
        (call $res (i32.const 1))
        (call $res (i32.const 2))
        (call $res (i32.const 3))
        ;; the monotonic clock does not go back
        (local.set $t (call $now (i32.const 1)))
        (call $flag (i64.ge_u (call $now (i32.const 1)) (local.get $t)))
        "#,
    );
    let seen = harness.same("clocks", &guest, b"").await;
    // realtime: written, after 2020; monotonic: written, under a second; CPU time: EBADF.
    assert_eq!(seen.log[..4], [SUCCESS, 0, 1, 0], "{seen:?}");
    assert_eq!(seen.log[4..8], [SUCCESS, 0, 0, 1], "{seen:?}");
    assert_eq!(seen.log[8..12], [BADF, 1, 1, 0], "{seen:?}");
}

/// Clock ids preview 1 does not have, each in a guest of its own in case one traps.
#[tokio::test]
async fn unknown_clocks() {
    let harness = Harness::new();
    for id in [4, 99, -1] {
        for call in ["time", "res"] {
            let guest = harness.text(4, &format!("(call ${call} (i32.const {id}))"));
            harness
                .same(&format!("clock_{call}_get of clock {id}"), &guest, b"")
                .await;
        }
    }
}

/// The monotonic clock starts with each task, as wasmtime-wasi's starts with each context:
/// a task started a second after another still reads it under a second.
#[tokio::test]
async fn monotonic_clock_starts_with_the_task() {
    let harness = Harness::new();
    let guest = harness.text(4, "(call $time (i32.const 1))");
    harness.sandbox(&guest, b"").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let seen = harness.same("monotonic", &guest, b"").await;
    assert_eq!(seen.log, [SUCCESS, 0, 0, 1], "{seen:?}");
}

#[tokio::test]
async fn poll_oneoff_on_clocks() {
    let harness = Harness::new();
    let guest = harness.text(
        4,
        r#"
        ;; relative, monotonic and realtime
        (call $sub_clock (i32.const 0) (i64.const 11) (i32.const 1) (i64.const 10000000) (i32.const 0))
        (call $poll (i32.const 1) (i64.const 10000000))
        (call $sub_clock (i32.const 0) (i64.const 12) (i32.const 0) (i64.const 10000000) (i32.const 0))
        (call $poll (i32.const 1) (i64.const 10000000))
        ;; absolute, monotonic and realtime
        (call $sub_clock (i32.const 0) (i64.const 13) (i32.const 1)
          (i64.add (call $now (i32.const 1)) (i64.const 10000000)) (i32.const 1))
        (call $poll (i32.const 1) (i64.const 5000000))
        (call $sub_clock (i32.const 0) (i64.const 14) (i32.const 0)
          (i64.add (call $now (i32.const 0)) (i64.const 10000000)) (i32.const 1))
        (call $poll (i32.const 1) (i64.const 5000000))
        ;; absolute, in the past: at once
        (call $sub_clock (i32.const 0) (i64.const 15) (i32.const 1) (i64.const 0) (i32.const 1))
        (call $poll (i32.const 1) (i64.const 0))
        (call $sub_clock (i32.const 0) (i64.const 16) (i32.const 0) (i64.const 1) (i32.const 1))
        (call $poll (i32.const 1) (i64.const 0))
        ;; the earlier of two fires alone
        (call $sub_clock (i32.const 0) (i64.const 17) (i32.const 1) (i64.const 60000000000) (i32.const 0))
        (call $sub_clock (i32.const 1) (i64.const 18) (i32.const 1) (i64.const 1000000) (i32.const 0))
        (call $poll (i32.const 2) (i64.const 1000000))
        ;; two due at once both fire
        (call $sub_clock (i32.const 0) (i64.const 19) (i32.const 1) (i64.const 0) (i32.const 0))
        (call $sub_clock (i32.const 1) (i64.const 20) (i32.const 0) (i64.const 0) (i32.const 0))
        (call $poll (i32.const 2) (i64.const 0))
        ;; the CPU-time clocks, unknown clocks and flags, unknown types, nothing: EINVAL
        (call $sub_clock (i32.const 0) (i64.const 21) (i32.const 2) (i64.const 0) (i32.const 0))
        (call $poll (i32.const 1) (i64.const 0))
        (call $sub_clock (i32.const 0) (i64.const 22) (i32.const 3) (i64.const 0) (i32.const 1))
        (call $poll (i32.const 1) (i64.const 0))
        (call $sub_clock (i32.const 0) (i64.const 23) (i32.const 7) (i64.const 0) (i32.const 0))
        (call $poll (i32.const 1) (i64.const 0))
        (call $sub_clock (i32.const 0) (i64.const 24) (i32.const 1) (i64.const 0) (i32.const 2))
        (call $poll (i32.const 1) (i64.const 0))
        (call $sub_fd (i32.const 0) (i64.const 25) (i32.const 3) (i32.const 0))
        (call $poll (i32.const 1) (i64.const 0))
        (call $poll (i32.const 0) (i64.const 0))
        "#,
    );
    let seen = harness.same("poll_oneoff on clocks", &guest, b"").await;
    // The first: no error, slept, one event: userdata 11, (error, type), no bytes.
    assert_eq!(seen.log[..4], [SUCCESS, 1, 1, 11], "{seen:?}");
    assert_eq!(seen.log[5], 0, "{seen:?}");
}
