//! Ring files: created atomically (built under a temporary name, then
//! renamed), mapped shared, mode 0600 unless a group may read them.

use super::layout::Geometry;
use super::memory::Region;
use super::{Ring, RingError};
use memmap2::MmapRaw;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

fn io(path: &Path) -> impl Fn(std::io::Error) -> RingError + '_ {
    move |source| RingError::Io { path: path.display().to_string(), source }
}

/// Opens an existing ring file.
pub fn open(path: &Path) -> Result<Ring, RingError> {
    let file = OpenOptions::new().read(true).write(true).open(path).map_err(io(path))?;
    Ring::open(Region::map(MmapRaw::map_raw(&file).map_err(io(path))?))
}

/// Opens the ring at `path`, creating it with `geometry` if there is none.
/// `mode` is the file's permission bits (0o600, or 0o640 with a group).
pub fn open_or_create(path: &Path, geometry: Geometry, mode: u32) -> Result<Ring, RingError> {
    match open(path) {
        Err(RingError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let temporary = path.with_extension(format!("new.{}", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(io(&temporary))?;
    file.set_len(geometry.file_len() as u64).map_err(io(&temporary))?;
    let ring = Ring::create(Region::map(MmapRaw::map_raw(&file).map_err(io(&temporary))?), geometry)?;
    // Readers only ever see a complete ring: the name appears at once.
    std::fs::rename(&temporary, path).map_err(io(path))?;
    Ok(ring)
}
