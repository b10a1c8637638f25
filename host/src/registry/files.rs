//! Reading files from the tasks folder safely: capped in size, and named in messages without
//! their folder.

use std::path::Path;

/// Reads at most `max` bytes of the file at `path`; a longer file is an error (`InvalidData`).
/// Files that report no size (such as those under /proc) are measured by reading.
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("it is larger than {} MiB", max >> 20),
        ));
    }
    Ok(bytes)
}

/// A file's name without its folder: what error messages (which reach clients through
/// `list`) say, so they do not reveal where the server keeps its files.
pub fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}
