//! Pointers out of bounds or misaligned: whether a call traps or answers, and which
//! pointers it looks at before it answers.

use super::harness::Harness;

/// Calls with pointers out of bounds or misaligned: each either traps in both or answers
/// the same errno in both, whichever it is, as `traps` says.
#[tokio::test]
async fn bad_pointers() {
    let harness = Harness::new();
    let cases: &[(&str, bool, &str)] = &[
        (
            "fd_read: iovec array out of bounds",
            true,
            "(call $log32 (call $fd_read (i32.const 0) (i32.const 0x3FFFC) (i32.const 1) (i32.const 0x100)))",
        ),
        (
            "fd_read: iovec array misaligned",
            true,
            "(call $log32 (call $fd_read (i32.const 0) (i32.const 0x202) (i32.const 1) (i32.const 0x100)))",
        ),
        (
            "fd_read: buffer out of bounds",
            true,
            "(call $iov (i32.const 0) (i32.const 0x3FFFE) (i32.const 10))
             (call $read (i32.const 0) (i32.const 1))",
        ),
        (
            "fd_read: count misaligned",
            true,
            "(call $iov (i32.const 0) (i32.const 0x1000) (i32.const 10))
             (call $log32 (call $fd_read (i32.const 0) (i32.const 0x200) (i32.const 1) (i32.const 0x101)))",
        ),
        (
            "fd_read: count out of bounds",
            true,
            "(call $iov (i32.const 0) (i32.const 0x1000) (i32.const 10))
             (call $log32 (call $fd_read (i32.const 0) (i32.const 0x200) (i32.const 1) (i32.const 0x40000)))",
        ),
        (
            "fd_read: bad fd, iovec array out of bounds",
            true,
            "(call $log32 (call $fd_read (i32.const 99) (i32.const 0x3FFFC) (i32.const 1) (i32.const 0x100)))",
        ),
        (
            "fd_read: bad fd, buffer out of bounds",
            false,
            "(call $iov (i32.const 0) (i32.const 0x50000) (i32.const 10))
             (call $read (i32.const 99) (i32.const 1))",
        ),
        (
            "fd_read: buffer out of bounds, nothing left to read",
            false,
            "(call $iov (i32.const 0) (i32.const 0x1000) (i32.const 64))
             (call $read (i32.const 0) (i32.const 1))
             (call $iov (i32.const 0) (i32.const 0x50000) (i32.const 10))
             (call $read (i32.const 0) (i32.const 1))",
        ),
        (
            "fd_read: a second iovec out of bounds",
            false,
            "(call $iov (i32.const 0) (i32.const 0x1000) (i32.const 3))
             (call $iov (i32.const 1) (i32.const 0x50000) (i32.const 10))
             (call $read (i32.const 0) (i32.const 2))",
        ),
        (
            "fd_read: an iovec array that runs out of bounds after the first non-empty one",
            false,
            "(i32.store (i32.const 0x3FFF8) (i32.const 0x1000))
             (i32.store (i32.const 0x3FFFC) (i32.const 4))
             (call $log32 (call $fd_read (i32.const 0) (i32.const 0x3FFF8) (i32.const 2) (i32.const 0x100)))
             (call $log_u32 (i32.const 0x100))",
        ),
        (
            "fd_write: iovec array out of bounds",
            true,
            "(call $log32 (call $fd_write (i32.const 1) (i32.const 0x3FFFC) (i32.const 1) (i32.const 0x100)))",
        ),
        (
            "fd_write: buffer out of bounds",
            true,
            "(call $iov (i32.const 0) (i32.const 0x3FFF0) (i32.const 100))
             (call $write (i32.const 1) (i32.const 1))",
        ),
        (
            "fd_write: buffer out of bounds, stdout closed",
            false,
            "(call $close (i32.const 1))
             (call $iov (i32.const 0) (i32.const 0x3FFF0) (i32.const 100))
             (call $write (i32.const 1) (i32.const 1))",
        ),
        (
            "fd_write: count misaligned (after writing)",
            true,
            "(call $iov (i32.const 0) (i32.const 0x800) (i32.const 13))
             (call $log32 (call $fd_write (i32.const 1) (i32.const 0x200) (i32.const 1) (i32.const 0x102)))",
        ),
        (
            "fd_write: no iovecs at a misaligned address",
            false,
            "(call $log32 (call $fd_write (i32.const 1) (i32.const 0x203) (i32.const 0) (i32.const 0x104)))",
        ),
        (
            "clock_time_get: time misaligned",
            true,
            "(call $log32 (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 0x104)))",
        ),
        (
            "clock_time_get: time out of bounds",
            true,
            "(call $log32 (call $clock_time_get (i32.const 1) (i64.const 1) (i32.const 0x3FFF8)))
             (call $log32 (call $clock_time_get (i32.const 1) (i64.const 1) (i32.const 0x40000)))",
        ),
        (
            "clock_time_get: CPU time, time out of bounds",
            false,
            "(call $log32 (call $clock_time_get (i32.const 2) (i64.const 1) (i32.const 0x40000)))",
        ),
        (
            "clock_res_get: resolution misaligned",
            true,
            "(call $log32 (call $clock_res_get (i32.const 1) (i32.const 0x104)))",
        ),
        (
            "args_sizes_get: out of bounds",
            true,
            "(call $log32 (call $args_sizes_get (i32.const 0x100) (i32.const 0x40000)))",
        ),
        (
            "args_sizes_get: misaligned",
            true,
            "(call $log32 (call $args_sizes_get (i32.const 0x101) (i32.const 0x104)))",
        ),
        (
            "args_get: argv out of bounds",
            true,
            "(call $log32 (call $args_get (i32.const 0x40000) (i32.const 0x6100)))",
        ),
        (
            "args_get: buffer out of bounds",
            true,
            "(call $log32 (call $args_get (i32.const 0x6000) (i32.const 0x3FFFC)))",
        ),
        (
            "environ_sizes_get: out of bounds",
            true,
            "(call $log32 (call $environ_sizes_get (i32.const 0x40000) (i32.const 0x104)))",
        ),
        (
            "environ_get: out of bounds, with nothing to write",
            false,
            "(call $log32 (call $environ_get (i32.const 0x40001) (i32.const 0x50000)))",
        ),
        (
            "random_get: out of bounds",
            true,
            "(call $log32 (call $random_get (i32.const 0x3FFF0) (i32.const 100)))",
        ),
        (
            "random_get: nothing, out of bounds",
            false,
            "(call $log32 (call $random_get (i32.const 0x50000) (i32.const 0)))",
        ),
        (
            "fd_fdstat_get: misaligned",
            true,
            "(call $log32 (call $fd_fdstat_get (i32.const 1) (i32.const 0x5004)))",
        ),
        (
            "fd_fdstat_get: bad fd, misaligned",
            false,
            "(call $log32 (call $fd_fdstat_get (i32.const 99) (i32.const 0x5004)))",
        ),
        (
            "poll_oneoff: subscriptions out of bounds",
            true,
            "(call $log32 (call $poll_oneoff (i32.const 0x3FFF0) (i32.const 0x4000) (i32.const 1) (i32.const 0x120)))",
        ),
        (
            "poll_oneoff: subscriptions misaligned",
            true,
            "(call $log32 (call $poll_oneoff (i32.const 0x3004) (i32.const 0x4000) (i32.const 1) (i32.const 0x120)))",
        ),
        (
            "poll_oneoff: events out of bounds",
            true,
            "(call $log32 (call $poll_oneoff (i32.const 0x3000) (i32.const 0x3FFF0) (i32.const 1) (i32.const 0x120)))",
        ),
        (
            "poll_oneoff: events misaligned",
            true,
            "(call $log32 (call $poll_oneoff (i32.const 0x3000) (i32.const 0x4004) (i32.const 1) (i32.const 0x120)))",
        ),
        (
            "poll_oneoff: count misaligned",
            true,
            "(call $log32 (call $poll_oneoff (i32.const 0x3000) (i32.const 0x4000) (i32.const 1) (i32.const 0x122)))",
        ),
        (
            "poll_oneoff: events out of bounds past the ones that fire",
            false,
            "(call $sub_clock (i32.const 0) (i64.const 1) (i32.const 1) (i64.const 0) (i32.const 0))
             (call $sub_clock (i32.const 1) (i64.const 2) (i32.const 1) (i64.const 60000000000) (i32.const 0))
             (call $log32 (call $poll_oneoff (i32.const 0x3000) (i32.const 0x3FFE0) (i32.const 2) (i32.const 0x120)))
             (call $log_u32 (i32.const 0x120))",
        ),
        (
            "poll_oneoff: subscriptions out of bounds after a bad one",
            false,
            "(i32.store8 (i32.const 0x3FFD8) (i32.const 1))
             (i32.store (i32.const 0x3FFE0) (i32.const 99))
             (call $log32 (call $poll_oneoff (i32.const 0x3FFD0) (i32.const 0x4000) (i32.const 2) (i32.const 0x120)))",
        ),
        (
            "poll_oneoff: a bad fd, events misaligned",
            false,
            "(call $sub_fd (i32.const 0) (i64.const 1) (i32.const 1) (i32.const 99))
             (call $log32 (call $poll_oneoff (i32.const 0x3000) (i32.const 0x4004) (i32.const 1) (i32.const 0x120)))",
        ),
    ];
    for (what, traps, body) in cases {
        let guest = harness.text(4, body);
        let seen = harness.same(what, &guest, b"input").await;
        assert_eq!(seen.traps(), *traps, "{what}: {seen:?}");
    }
}
