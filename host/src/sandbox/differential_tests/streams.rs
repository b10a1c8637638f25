//! stdin, stdout and stderr: reads in several iovecs and past the end, writes, zero-length
//! ones, closed and bad descriptors, and `poll_oneoff` on them.

use super::harness::{BADF, Harness, INTR, SUCCESS};

#[tokio::test]
async fn reads_from_stdin() {
    let harness = Harness::new();
    let guest = harness.text(
        4,
        r#"
        ;; two iovecs: wasmtime-wasi fills the first non-empty one only
        (call $iov (i32.const 0) (i32.const 0x1000) (i32.const 3))
        (call $iov (i32.const 1) (i32.const 0x1010) (i32.const 4))
        (call $read (i32.const 0) (i32.const 2))
        ;; empty iovecs first
        (call $iov (i32.const 0) (i32.const 0x1000) (i32.const 0))
        (call $iov (i32.const 1) (i32.const 0x1001) (i32.const 0))
        (call $iov (i32.const 2) (i32.const 0x1008) (i32.const 5))
        (call $read (i32.const 0) (i32.const 3))
        ;; more room than input left, then past the end
        (call $iov (i32.const 0) (i32.const 0x1000) (i32.const 40))
        (call $read (i32.const 0) (i32.const 1))
        (call $read (i32.const 0) (i32.const 1))
        ;; at the end, zero-length reads: no iovecs, empty iovecs
        (call $read (i32.const 0) (i32.const 0))
        (call $iov (i32.const 0) (i32.const 0x1000) (i32.const 0))
        (call $read (i32.const 0) (i32.const 1))
        "#,
    );
    let seen = harness.same("reads", &guest, b"0123456789abcdefghij").await;
    // The first read: errno, 3 bytes read, "012" then the untouched buffer.
    assert_eq!(seen.log[..5], [SUCCESS, 3, 0x30, 0x31, 0x32], "{seen:?}");
}

/// wasmtime-wasi answers a zero-length read of stdin with `EINTR` while input is left
/// (its stream read gives no bytes, which preview 1 takes for an interruption); the
/// sandbox answers 0 bytes, as POSIX does, so that a guest retrying `EINTR` does not spin.
#[tokio::test]
async fn zero_length_read_with_input_left_differs() {
    let harness = Harness::new();
    let guest = harness.text(
        4,
        r#"
        (call $read (i32.const 0) (i32.const 0))
        (call $iov (i32.const 0) (i32.const 0x1000) (i32.const 0))
        (call $read (i32.const 0) (i32.const 1))
        ;; the input is all still there
        (call $iov (i32.const 0) (i32.const 0x1000) (i32.const 2))
        (call $read (i32.const 0) (i32.const 1))
        "#,
    );
    let (reference, sandbox) = harness.both(&guest, b"ab").await;
    let entries = 2 + 64;
    assert_eq!(reference.log[0], INTR, "{reference:?}");
    assert_eq!(reference.log[entries], INTR, "{reference:?}");
    assert_eq!(sandbox.log[..2], [SUCCESS, 0], "{sandbox:?}");
    assert_eq!(
        sandbox.log[entries..entries + 2],
        [SUCCESS, 0],
        "{sandbox:?}"
    );
    // Otherwise the same.
    assert_eq!(sandbox.log[2 * entries..], reference.log[2 * entries..]);
    assert_eq!(sandbox.log[2 * entries..][..4], [SUCCESS, 2, 0x61, 0x62]);
}

#[tokio::test]
async fn writes_to_stdout_and_stderr() {
    let harness = Harness::new();
    let guest = harness.text(
        4,
        r#"
        (call $iov (i32.const 0) (i32.const 0x800) (i32.const 13))
        (call $write (i32.const 1) (i32.const 1))
        ;; two iovecs: wasmtime-wasi writes the first non-empty one only
        (call $iov (i32.const 0) (i32.const 0x800) (i32.const 6))
        (call $iov (i32.const 1) (i32.const 0x810) (i32.const 7))
        (call $write (i32.const 1) (i32.const 2))
        (call $iov (i32.const 0) (i32.const 0x800) (i32.const 0))
        (call $write (i32.const 2) (i32.const 2))
        ;; nothing: no iovecs, an empty one
        (call $write (i32.const 1) (i32.const 0))
        (call $write (i32.const 1) (i32.const 1))
        ;; more than one 4 KiB piece
        (memory.fill (i32.const 0x20000) (i32.const 0x78) (i32.const 10000))
        (call $iov (i32.const 0) (i32.const 0x20000) (i32.const 10000))
        (call $write (i32.const 2) (i32.const 1))
        (call $log32 (call $sched_yield))
        "#,
    );
    let seen = harness.same("writes", &guest, b"").await;
    assert_eq!(seen.stdout, "hello, world\nhello,");
    assert!(seen.stderr.starts_with("second\nxxx"), "{seen:?}");
}

#[tokio::test]
async fn closed_and_bad_descriptors() {
    let harness = Harness::new();
    let guest = harness.text(
        4,
        r#"
        (call $iov (i32.const 0) (i32.const 0x800) (i32.const 13))
        (call $write (i32.const 3) (i32.const 1))
        (call $write (i32.const 99) (i32.const 1))
        (call $write (i32.const -1) (i32.const 1))
        (call $write (i32.const 0) (i32.const 1))
        (call $iov (i32.const 0) (i32.const 0x1000) (i32.const 8))
        (call $read (i32.const 1) (i32.const 1))
        (call $read (i32.const 2) (i32.const 1))
        (call $read (i32.const 3) (i32.const 1))
        (call $read (i32.const 99) (i32.const 1))
        (call $fdstat (i32.const 0))
        (call $fdstat (i32.const 1))
        (call $fdstat (i32.const 2))
        (call $fdstat (i32.const 3))
        (call $close (i32.const 3))
        (call $close (i32.const 99))
        ;; stdout closed: writes and its fdstat are bad, closing it again too
        (call $close (i32.const 1))
        (call $iov (i32.const 0) (i32.const 0x800) (i32.const 13))
        (call $write (i32.const 1) (i32.const 1))
        (call $fdstat (i32.const 1))
        (call $close (i32.const 1))
        (call $write (i32.const 2) (i32.const 1))
        ;; stdin closed
        (call $close (i32.const 0))
        (call $iov (i32.const 0) (i32.const 0x1000) (i32.const 8))
        (call $read (i32.const 0) (i32.const 1))
        (call $fdstat (i32.const 0))
        "#,
    );
    let seen = harness.same("closed and bad fds", &guest, b"input").await;
    assert_eq!(seen.log[..2], [BADF, 0x7777], "{seen:?}");
    assert_eq!(seen.stdout, "");
    assert_eq!(seen.stderr, "hello, world");
}

#[tokio::test]
async fn poll_oneoff_on_streams() {
    let harness = Harness::new();
    let guest = harness.text(
        4,
        r#"
        (call $sub_fd (i32.const 0) (i64.const 31) (i32.const 1) (i32.const 0))
        (call $poll (i32.const 1) (i64.const 0))
        (call $sub_fd (i32.const 0) (i64.const 32) (i32.const 2) (i32.const 1))
        (call $sub_fd (i32.const 1) (i64.const 33) (i32.const 2) (i32.const 2))
        (call $poll (i32.const 2) (i64.const 0))
        ;; a ready stream beside a clock a minute away: at once, the stream alone
        (call $sub_fd (i32.const 0) (i64.const 34) (i32.const 1) (i32.const 0))
        (call $sub_clock (i32.const 1) (i64.const 35) (i32.const 1) (i64.const 60000000000) (i32.const 0))
        (call $poll (i32.const 2) (i64.const 0))
        (call $sub_clock (i32.const 0) (i64.const 36) (i32.const 1) (i64.const 0) (i32.const 0))
        (call $sub_fd (i32.const 1) (i64.const 37) (i32.const 2) (i32.const 1))
        (call $poll (i32.const 2) (i64.const 0))
        ;; the wrong way round, other descriptors: EBADF, also after a good subscription
        (call $sub_fd (i32.const 0) (i64.const 38) (i32.const 1) (i32.const 1))
        (call $poll (i32.const 1) (i64.const 0))
        (call $sub_fd (i32.const 0) (i64.const 39) (i32.const 2) (i32.const 0))
        (call $poll (i32.const 1) (i64.const 0))
        (call $sub_fd (i32.const 0) (i64.const 40) (i32.const 1) (i32.const 3))
        (call $poll (i32.const 1) (i64.const 0))
        (call $sub_fd (i32.const 0) (i64.const 41) (i32.const 2) (i32.const 99))
        (call $poll (i32.const 1) (i64.const 0))
        (call $sub_fd (i32.const 0) (i64.const 42) (i32.const 1) (i32.const 0))
        (call $sub_fd (i32.const 1) (i64.const 43) (i32.const 1) (i32.const 99))
        (call $poll (i32.const 2) (i64.const 0))
        ;; stdin read to its end is still ready
        (call $iov (i32.const 0) (i32.const 0x1000) (i32.const 64))
        (call $read (i32.const 0) (i32.const 1))
        (call $sub_fd (i32.const 0) (i64.const 44) (i32.const 1) (i32.const 0))
        (call $poll (i32.const 1) (i64.const 0))
        ;; closed streams
        (call $close (i32.const 0))
        (call $sub_fd (i32.const 0) (i64.const 45) (i32.const 1) (i32.const 0))
        (call $poll (i32.const 1) (i64.const 0))
        (call $close (i32.const 2))
        (call $sub_fd (i32.const 0) (i64.const 46) (i32.const 2) (i32.const 2))
        (call $poll (i32.const 1) (i64.const 0))
        "#,
    );
    let seen = harness.same("poll_oneoff on streams", &guest, b"abc").await;
    // The first: stdin is ready; the event's type is fd_read.
    assert_eq!(seen.log[..4], [SUCCESS, 1, 1, 31], "{seen:?}");
}
