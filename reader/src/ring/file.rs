//! Ring files: created atomically (built under a temporary name, then
//! renamed), mapped shared, mode 0600 unless a group may read them.

use super::layout::Geometry;
use super::memory::Region;
use super::{Ring, RingError};
use memmap2::MmapRaw;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The file of a route's ring: `<dir>/<database>/<slot>/<route>.ring`, each
/// name percent-encoded outside `[A-Za-z0-9_.-]` (and a leading dot), so
/// any database, slot or route name makes one safe path component.
pub fn route_path(dir: &Path, database: &str, slot: &str, route: &str) -> PathBuf {
    dir.join(encode(database)).join(encode(slot)).join(format!("{}.ring", encode(route)))
}

fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, byte) in name.bytes().enumerate() {
        let plain = byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' || (byte == b'.' && i > 0);
        if plain {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RingError + '_ {
    move |source| RingError::Io { path: path.display().to_string(), source }
}

/// The id of an OS group, by name.
pub fn group_id(name: &str) -> Result<u32, RingError> {
    let not_found = || RingError::Io {
        path: format!("group {name}"),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such group"),
    };
    let c_name = std::ffi::CString::new(name).map_err(|_| not_found())?;
    let mut group: libc::group = unsafe_zeroed_group();
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes only into `group` and `buffer`, whose sizes
    // it is given, and sets `found` to `&group` or null.
    let rc = unsafe { libc::getgrnam_r(c_name.as_ptr(), &mut group, buffer.as_mut_ptr(), buffer.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return Err(not_found());
    }
    Ok(group.gr_gid)
}

fn unsafe_zeroed_group() -> libc::group {
    // SAFETY: libc::group is a plain C struct of pointers and integers, for
    // which all-zero bytes are a valid (empty) value.
    unsafe { std::mem::zeroed() }
}

/// Opens an existing ring file.
pub fn open(path: &Path) -> Result<Ring, RingError> {
    let file = OpenOptions::new().read(true).write(true).open(path).map_err(io(path))?;
    Ring::open(Region::map(MmapRaw::map_raw(&file).map_err(io(path))?))
}

/// Opens the ring at `path`, creating it with `geometry` if there is none:
/// mode 0600, or 0640 owned by group `group` when one may read it.
pub fn open_or_create(path: &Path, geometry: Geometry, group: Option<u32>) -> Result<Ring, RingError> {
    match open(path) {
        Err(RingError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    // Unique per process and per call: concurrent creators never share it.
    static CREATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let serial = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temporary = path.with_extension(format!("new.{}.{serial}", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(if group.is_some() { 0o640 } else { 0o600 })
        .open(&temporary)
        .map_err(io(&temporary))?;
    if let Some(gid) = group {
        std::os::unix::fs::fchown(&file, None, Some(gid)).map_err(io(&temporary))?;
    }
    file.set_len(geometry.file_len() as u64).map_err(io(&temporary))?;
    let ring = Ring::create(Region::map(MmapRaw::map_raw(&file).map_err(io(&temporary))?), geometry)?;
    // Readers only ever see a complete ring: the name appears at once, and
    // never replaces a ring another process created meanwhile.
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(ring),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => open(path),
        Err(e) => Err(io(path)(e)),
    }
}
