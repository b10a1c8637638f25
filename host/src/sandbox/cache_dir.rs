//! The compile cache's folder. Wasmtime loads the native code it finds there and runs it in
//! the server, so whoever can write the folder can run code as the server. The folder must
//! therefore be the server user's alone: created with mode 0700 when it is missing, and
//! refused at start when it belongs to another user or its group or other users may write it.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use anyhow::{Context, bail};

/// Permission bits that let the folder's group or other users write it.
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// What an operator can do about a folder that is refused.
const WHAT_TO_DO: &str = "pass another --cache-dir, or --no-cache";

/// Creates `dir` (mode 0700, as are any missing parents) if it is missing, then refuses it
/// unless it is a folder owned by the user the server runs as, that no one else may write.
pub fn prepare(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| {
            format!(
                "could not create the compile cache folder {}: {WHAT_TO_DO}",
                dir.display()
            )
        })?;
    let metadata = std::fs::metadata(dir).with_context(|| {
        format!(
            "could not read the compile cache folder {}: {WHAT_TO_DO}",
            dir.display()
        )
    })?;
    if !metadata.is_dir() {
        bail!(
            "the compile cache {} is not a folder: {WHAT_TO_DO}",
            dir.display()
        );
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let user = unsafe { libc::geteuid() };
    if metadata.uid() != user {
        bail!(
            "refusing the compile cache folder {}: it is owned by user id {}, not by the user \
             this server runs as (user id {user}), and whoever can write it can run code in \
             the server; {WHAT_TO_DO}, or give the folder to this user",
            dir.display(),
            metadata.uid()
        );
    }
    let mode = metadata.mode() & 0o777;
    if mode & WRITABLE_BY_OTHERS != 0 {
        bail!(
            "refusing the compile cache folder {}: its group or other users may write it (mode \
             {mode:03o}), and whoever can write it can run code in the server; {WHAT_TO_DO}, or \
             `chmod go-w` the folder",
            dir.display()
        );
    }
    Ok(())
}
