//! Handing memory the server has freed back to the system now, rather than when the
//! allocator's decay gets to it.
//!
//! The server allocates with jemalloc (`main.rs`), which keeps freed pages for about a second
//! (`dirty_decay_ms`) and acts on that only as the process allocates, so a server that goes
//! quiet keeps what it freed last. Two moments hand it back:
//! - the end of pool warming, which frees up to one store a slot at once: a burst that came
//!   right after it allocated in other size classes, and the two were resident together,
//!   50-60 MiB of the peak of 10,000 sleepers (docs/PERFORMANCE.md, "Warming's garbage
//!   returned");
//! - a server gone quiet after work ([`QuietAfterWork`]): after 10,000 sleepers it kept the
//!   memory their tasks had freed until the next task came.

/// Asks jemalloc to return every arena's unused dirty pages to the system. Best effort: on a
/// failure they are left to the decay, as before. Where the server's allocator is not jemalloc
/// (the tests), there is nothing of the server's to return.
pub fn return_to_system() {
    if let Err(error) = purge_all_arenas() {
        tracing::debug!(%error, "jemalloc did not return freed memory");
    }
}

/// Tells, from checks made at a steady interval, when the server has gone quiet after work:
/// nothing queued or running now, no task ended since the last check, and some ended since
/// memory was last handed back. A steady trickle of tasks never looks quiet, so it does not
/// hand back memory its next tasks would fault in again.
#[derive(Debug, Default)]
pub struct QuietAfterWork {
    ended_at_last_check: u64,
    ended_at_last_return: u64,
}

impl QuietAfterWork {
    /// `ended`: tasks ended since start; `in_flight`: tasks queued or running now. Says
    /// whether to hand freed memory back now.
    pub fn due(&mut self, ended: u64, in_flight: u64) -> bool {
        let quiet = in_flight == 0 && ended == self.ended_at_last_check;
        self.ended_at_last_check = ended;
        if quiet && ended != self.ended_at_last_return {
            self.ended_at_last_return = ended;
            return true;
        }
        false
    }
}

/// jemalloc's `arena.<MALLCTL_ARENAS_ALL>.purge`.
#[cfg(not(target_env = "msvc"))]
fn purge_all_arenas() -> std::io::Result<()> {
    command(b"arena.4096.purge\0")
}

/// Runs jemalloc's command `name` (NUL-terminated), which reads and writes no value.
#[cfg(not(target_env = "msvc"))]
fn command(name: &[u8]) -> std::io::Result<()> {
    assert_eq!(name.last(), Some(&0), "a command's name ends in NUL");
    // SAFETY: the name is NUL-terminated (checked above), and a command takes no pointers
    // (jemalloc checks that none is passed).
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    match status {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

#[cfg(target_env = "msvc")]
fn purge_all_arenas() -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(test)]
mod tests {
    use super::QuietAfterWork;

    #[test]
    fn memory_goes_back_once_the_server_is_quiet_after_work() {
        let mut quiet = QuietAfterWork::default();
        // A server that never ran a task has nothing to hand back.
        assert!(!quiet.due(0, 0));
        // Busy: tasks in flight, or ending between checks.
        assert!(!quiet.due(0, 10_000));
        assert!(!quiet.due(6_000, 4_000));
        assert!(
            !quiet.due(10_000, 0),
            "the last ones ended since the last check"
        );
        // A whole interval with nothing in flight and nothing ended: once.
        assert!(quiet.due(10_000, 0));
        assert!(!quiet.due(10_000, 0));
        // A trickle: one task between each two checks, never quiet for a whole interval.
        for ended in 10_001..10_005 {
            assert!(!quiet.due(ended, 0));
        }
        assert!(quiet.due(10_004, 0));
    }
}

#[cfg(all(test, not(target_env = "msvc")))]
mod jemalloc_tests {
    /// jemalloc knows the command: a misspelt name is refused (`ENOENT`), and then nothing
    /// would ever be returned.
    #[test]
    fn jemalloc_takes_the_purge_command() {
        super::purge_all_arenas().unwrap();
        let misspelt = super::command(b"arena.4096.purg\0").unwrap_err();
        assert_eq!(misspelt.raw_os_error(), Some(libc::ENOENT));
    }
}
