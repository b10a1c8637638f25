;; `upper`: upper-cases the strings of its JSON input, written by hand in WebAssembly
;; text to show that a task needs no Rust, only the ABI (guest-tasks/README.md):
;;
;; - a WASI preview 1 command: it exports `memory` and `_start`, and imports from
;;   `wasi_snapshot_preview1` only what it uses;
;; - the input is JSON on stdin (fd 0), the result goes to stdout (fd 1);
;; - returning from `_start` is exit status 0 (`finished`); `proc_exit` with any other
;;   status is `failed`.
;;
;; It streams: read a chunk of stdin, change it in place, write it all out, repeat
;; until a read returns 0 bytes (end of input). Only the letters a-z inside JSON
;; strings are upper-cased, and never the character right after a backslash, so the
;; output stays valid JSON: `"hello"` gives `"HELLO"`, `{"a": "b\n"}` gives
;; `{"A": "B\n"}` (keys are strings too), and `null`, `true` and `1e5` are left
;; alone. Empty input gives empty output, which the host reads as `null`.
;;
;; Memory (one 64 KiB page):
;;   0..8      an iovec {buf: i32, len: i32}, the one buffer handed to fd_read/fd_write
;;   8..12     the byte count that fd_read/fd_write report back
;;   16..      the message written to stderr when I/O fails
;;   1024..    the chunk buffer, up to the end of the page
(module
  ;; fd_read(fd, iovs, iovs_len, nread_out) -> errno
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  ;; fd_write(fd, iovs, iovs_len, nwritten_out) -> errno
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  ;; proc_exit(status): does not return
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))

  (memory (export "memory") 1)

  (global $IOVEC i32 (i32.const 0))
  (global $COUNT i32 (i32.const 8))
  (global $BUFFER i32 (i32.const 1024))
  (global $BUFFER_LEN i32 (i32.const 64512)) ;; 65536 - 1024

  ;; 44 bytes at offset 16.
  (data (i32.const 16) "upper: could not read stdin or write stdout\n")

  ;; Reports an I/O failure on stderr and exits with status 1. Called with the errno
  ;; of a WASI call; does nothing when it is 0 (success).
  (func $check (param $errno i32)
    (if (i32.eqz (local.get $errno)) (then (return)))
    (i32.store (global.get $IOVEC) (i32.const 16))
    (i32.store offset=4 (global.get $IOVEC) (i32.const 44))
    ;; The exit status carries the failure even if stderr cannot be written.
    (drop (call $fd_write (i32.const 2) (global.get $IOVEC) (i32.const 1)
      (global.get $COUNT)))
    (call $proc_exit (i32.const 1)))

  ;; Writes `len` bytes from `ptr` to stdout, looping over short writes.
  (func $write_all (param $ptr i32) (param $len i32)
    (local $written i32)
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $len)))
        (i32.store (global.get $IOVEC) (local.get $ptr))
        (i32.store offset=4 (global.get $IOVEC) (local.get $len))
        (call $check (call $fd_write (i32.const 1) (global.get $IOVEC) (i32.const 1)
          (global.get $COUNT)))
        (local.set $written (i32.load (global.get $COUNT)))
        ;; A write that makes no progress would loop forever: treat it as a failure.
        (if (i32.eqz (local.get $written)) (then (call $check (i32.const 1))))
        (local.set $ptr (i32.add (local.get $ptr) (local.get $written)))
        (local.set $len (i32.sub (local.get $len) (local.get $written)))
        (br $more))))

  (func (export "_start")
    (local $n i32)          ;; bytes in the buffer
    (local $i i32)          ;; index of the byte being looked at
    (local $c i32)          ;; that byte
    ;; The scanner's state, kept across chunks (a string may span two reads):
    (local $in_string i32)  ;; 1 between a string's opening and closing quote
    (local $escaped i32)    ;; 1 right after a backslash inside a string
    (loop $chunks
      ;; Read the next chunk into the buffer.
      (i32.store (global.get $IOVEC) (global.get $BUFFER))
      (i32.store offset=4 (global.get $IOVEC) (global.get $BUFFER_LEN))
      (call $check (call $fd_read (i32.const 0) (global.get $IOVEC) (i32.const 1)
        (global.get $COUNT)))
      (local.set $n (i32.load (global.get $COUNT)))
      ;; 0 bytes: end of input. Returning from _start is exit status 0.
      (if (i32.eqz (local.get $n)) (then (return)))

      ;; Upper-case the chunk in place.
      (local.set $i (i32.const 0))
      (block $scanned
        (loop $bytes
          (br_if $scanned (i32.ge_u (local.get $i) (local.get $n)))
          (local.set $c (i32.load8_u (i32.add (global.get $BUFFER) (local.get $i))))
          (if (local.get $escaped)
            (then
              ;; The character after a backslash (`n` in `\n`, `u` in `\u00e9`) stays.
              (local.set $escaped (i32.const 0)))
            (else
              (if (local.get $in_string)
                (then
                  (if (i32.eq (local.get $c) (i32.const 92)) ;; '\'
                    (then (local.set $escaped (i32.const 1)))
                    (else
                      (if (i32.eq (local.get $c) (i32.const 34)) ;; '"' closes the string
                        (then (local.set $in_string (i32.const 0)))
                        (else
                          ;; c - 'a' < 26, unsigned, means 'a' <= c <= 'z':
                          ;; subtract 32 to get the upper-case letter.
                          (if (i32.lt_u (i32.sub (local.get $c) (i32.const 97))
                                        (i32.const 26))
                            (then
                              (i32.store8 (i32.add (global.get $BUFFER) (local.get $i))
                                (i32.sub (local.get $c) (i32.const 32))))))))))
                (else
                  ;; Outside strings only a '"' matters: it opens one.
                  (if (i32.eq (local.get $c) (i32.const 34))
                    (then (local.set $in_string (i32.const 1))))))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $bytes)))

      (call $write_all (global.get $BUFFER) (local.get $n))
      (br $chunks))))
