;; The start of every text guest (see harness.rs, which fills in its pages and body).
(module
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_res_get" (func $clock_res_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fd_fdstat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sched_yield" (func $sched_yield (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") {pages})
  (global $log (export "log_end") (mut i32) (i32.const 0x10000))
  (data (i32.const 0x800) "hello, world\0a")
  (data (i32.const 0x810) "second\0a")

  (func $log (param i64)
    (i64.store (global.get $log) (local.get 0))
    (global.set $log (i32.add (global.get $log) (i32.const 8))))
  (func $log32 (param i32) (call $log (i64.extend_i32_s (local.get 0))))
  (func $flag (param i32) (call $log (i64.extend_i32_u (local.get 0))))
  (func $log_u32 (param i32) (call $log (i64.load32_u (local.get 0))))
  (func $log_u64 (param i32) (call $log (i64.load (local.get 0))))
  (func $log_bytes (param $at i32) (param $len i32)
    (block $done (loop $next
      (br_if $done (i32.eqz (local.get $len)))
      (call $log (i64.load8_u (local.get $at)))
      (local.set $at (i32.add (local.get $at) (i32.const 1)))
      (local.set $len (i32.sub (local.get $len) (i32.const 1)))
      (br $next))))

  ;; Sets iovec number $i of the array at 0x200.
  (func $iov (param $i i32) (param $buf i32) (param $len i32)
    (i32.store (i32.add (i32.const 0x200) (i32.shl (local.get $i) (i32.const 3))) (local.get $buf))
    (i32.store offset=4 (i32.add (i32.const 0x200) (i32.shl (local.get $i) (i32.const 3))) (local.get $len)))

  ;; Reads $fd into the first $n iovecs at 0x200: logs the errno, the count and 0x1000..0x1040.
  (func $read (param $fd i32) (param $n i32)
    (memory.fill (i32.const 0x1000) (i32.const 0xAA) (i32.const 64))
    (i32.store (i32.const 0x100) (i32.const 0x7777))
    (call $log32 (call $fd_read (local.get $fd) (i32.const 0x200) (local.get $n) (i32.const 0x100)))
    (call $log_u32 (i32.const 0x100))
    (call $log_bytes (i32.const 0x1000) (i32.const 64)))

  ;; Writes the first $n iovecs at 0x200 to $fd: logs the errno and the count.
  (func $write (param $fd i32) (param $n i32)
    (i32.store (i32.const 0x104) (i32.const 0x7777))
    (call $log32 (call $fd_write (local.get $fd) (i32.const 0x200) (local.get $n) (i32.const 0x104)))
    (call $log_u32 (i32.const 0x104)))

  (func $close (param $fd i32) (call $log32 (call $fd_close (local.get $fd))))

  (func $fdstat (param $fd i32)
    (memory.fill (i32.const 0x5000) (i32.const 0xAA) (i32.const 24))
    (call $log32 (call $fd_fdstat_get (local.get $fd) (i32.const 0x5000)))
    (call $log_u64 (i32.const 0x5000))
    (call $log_u64 (i32.const 0x5008))
    (call $log_u64 (i32.const 0x5010)))

  ;; Reads clock $id: logs the errno, whether the time was left unwritten, whether it is
  ;; after 2020 (a wall clock) and whether it is under a second (a task's monotonic clock).
  (func $time (param $id i32)
    (i64.store (i32.const 0x108) (i64.const -1))
    (call $log32 (call $clock_time_get (local.get $id) (i64.const 1) (i32.const 0x108)))
    (call $flag (i64.eq (i64.load (i32.const 0x108)) (i64.const -1)))
    (call $flag (i64.gt_u (i64.load (i32.const 0x108)) (i64.const 1577836800000000000)))
    (call $flag (i64.lt_u (i64.load (i32.const 0x108)) (i64.const 1000000000))))

  ;; Logs the errno and the resolution of clock $id.
  (func $res (param $id i32)
    (i64.store (i32.const 0x110) (i64.const -1))
    (call $log32 (call $clock_res_get (local.get $id) (i32.const 0x110)))
    (call $log_u64 (i32.const 0x110)))

  ;; The time on clock $id, or a trap.
  (func $now (param $id i32) (result i64)
    (if (call $clock_time_get (local.get $id) (i64.const 1) (i32.const 0x118)) (then unreachable))
    (i64.load (i32.const 0x118)))

  ;; Sets subscription number $i at 0x3000 to a clock subscription.
  (func $sub_clock (param $i i32) (param $userdata i64) (param $id i32) (param $timeout i64) (param $flags i32)
    (local $at i32)
    (local.set $at (i32.add (i32.const 0x3000) (i32.mul (local.get $i) (i32.const 48))))
    (memory.fill (local.get $at) (i32.const 0) (i32.const 48))
    (i64.store (local.get $at) (local.get $userdata))
    (i32.store offset=16 (local.get $at) (local.get $id))
    (i64.store offset=24 (local.get $at) (local.get $timeout))
    (i32.store16 offset=40 (local.get $at) (local.get $flags)))

  ;; Sets subscription number $i at 0x3000 to one of type $tag on $fd.
  (func $sub_fd (param $i i32) (param $userdata i64) (param $tag i32) (param $fd i32)
    (local $at i32)
    (local.set $at (i32.add (i32.const 0x3000) (i32.mul (local.get $i) (i32.const 48))))
    (memory.fill (local.get $at) (i32.const 0) (i32.const 48))
    (i64.store (local.get $at) (local.get $userdata))
    (i32.store8 offset=8 (local.get $at) (local.get $tag))
    (i32.store offset=16 (local.get $at) (local.get $fd)))

  ;; Polls the first $n subscriptions at 0x3000: logs the errno, whether it took at least
  ;; $min ns, the number of events and the $n event slots (4 words each, raw).
  (func $poll (param $n i32) (param $min i64)
    (local $start i64) (local $i i32)
    (memory.fill (i32.const 0x4000) (i32.const 0xAA) (i32.mul (local.get $n) (i32.const 32)))
    (i32.store (i32.const 0x120) (i32.const 0x7777))
    (local.set $start (call $now (i32.const 1)))
    (call $log32 (call $poll_oneoff (i32.const 0x3000) (i32.const 0x4000) (local.get $n) (i32.const 0x120)))
    (call $flag (i64.ge_u (i64.sub (call $now (i32.const 1)) (local.get $start)) (local.get $min)))
    (call $log_u32 (i32.const 0x120))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (i32.shl (local.get $n) (i32.const 2))))
      (call $log_u64 (i32.add (i32.const 0x4000) (i32.shl (local.get $i) (i32.const 3))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))))

  ;; Gets $len random bytes at 0x20000: logs the errno, whether few enough of them are zero
  ;; to be random, and the words just before and after them (untouched: 0).
  (func $random (param $len i32)
    (local $i i32) (local $zeros i32)
    (memory.fill (i32.const 0x1FFF0) (i32.const 0) (i32.add (local.get $len) (i32.const 32)))
    (call $log32 (call $random_get (i32.const 0x20000) (local.get $len)))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
      (if (i32.eqz (i32.load8_u (i32.add (i32.const 0x20000) (local.get $i))))
        (then (local.set $zeros (i32.add (local.get $zeros) (i32.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (call $flag (i32.le_u (i32.mul (local.get $zeros) (i32.const 64)) (i32.add (local.get $len) (i32.const 64))))
    (call $log_u64 (i32.const 0x1FFF8))
    (call $log_u64 (i32.add (i32.const 0x20000) (local.get $len))))

  (func (export "_start")
    (local $t i64) (local $i i32)
    {body})
)
