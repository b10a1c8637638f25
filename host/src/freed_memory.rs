//! Handing memory the server has freed back to the system now, rather than when the
//! allocator's decay gets to it.
//!
//! The server allocates with jemalloc (`main.rs`), which keeps freed pages for about a second
//! (`dirty_decay_ms`) and acts on that only as the process allocates. Pool warming frees up to
//! one store a slot at once, and a burst that comes right after it allocates in other size
//! classes: the two were resident together, 50-60 MiB of the peak of 10,000 sleepers that
//! started right after warming (docs/PERFORMANCE.md, "Warming's garbage returned").

/// Asks jemalloc to return every arena's unused dirty pages to the system. Best effort: on a
/// failure they are left to the decay, as before. Where the server's allocator is not jemalloc
/// (the tests), there is nothing of the server's to return.
pub fn return_to_system() {
    if let Err(error) = purge_all_arenas() {
        tracing::debug!(%error, "jemalloc did not return freed memory");
    }
}

/// jemalloc's `arena.<MALLCTL_ARENAS_ALL>.purge`.
#[cfg(not(target_env = "msvc"))]
fn purge_all_arenas() -> std::io::Result<()> {
    // A command: it reads and writes no value.
    const PURGE_ALL_ARENAS: &[u8] = b"arena.4096.purge\0";
    // SAFETY: the name is NUL-terminated, and a command takes no pointers (jemalloc checks
    // that none is passed).
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL_ARENAS.as_ptr().cast(),
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

#[cfg(all(test, not(target_env = "msvc")))]
mod tests {
    /// jemalloc knows the command: a misspelt name is refused (`ENOENT`), and then nothing
    /// would ever be returned.
    #[test]
    fn jemalloc_takes_the_purge_command() {
        super::purge_all_arenas().unwrap();
        let misspelt = b"arena.4096.purg\0";
        // SAFETY: as in `purge_all_arenas`.
        let status = unsafe {
            tikv_jemalloc_sys::mallctl(
                misspelt.as_ptr().cast(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(status, libc::ENOENT);
    }
}
