//! Ring files: where they live, created atomically (built under a
//! temporary name, then linked), mapped shared, mode 0600 unless a group
//! may read them; and the stream's consumer registry beside them.
//!
//! ```text
//! <ring_directory>/<system identifier>/<database OID>/<slot>/
//!     consumers          the stream's registered consumers, one per line
//!     <relid>.ring       a table's route
//!     <relid>-<k>.ring   partition k of a table split by key
//!     merged.ring        the one route of a stream that merges its tables
//!     *.spill            frames too large for their ring
//! ```
//! Names are numbers, so any database, table or schema name makes a safe,
//! bounded path, and a renamed table keeps its ring. Two clusters on one
//! host never share a directory: the system identifier tells them apart.

use super::layout::Geometry;
use super::memory::Region;
use super::{Consumer, Identity, Ring, RingError};
use memmap2::MmapRaw;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The directory of one stream's rings.
pub fn stream_dir(dir: &Path, system_id: u64, database: u32, slot: &str) -> PathBuf {
    dir.join(system_id.to_string()).join(database.to_string()).join(encode(slot))
}

/// Which ring of a stream: a table's (or one of its key-hash partitions),
/// or the stream's one merged route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RingKey {
    Table { relation: u32, partition: u32, partitions: u32 },
    Merged,
}

impl RingKey {
    /// The ring's file name in its stream's directory.
    pub fn file_name(&self) -> String {
        match self {
            RingKey::Table { relation, partitions: 1, .. } => format!("{relation}.ring"),
            RingKey::Table { relation, partition, .. } => format!("{relation}-{partition}.ring"),
            RingKey::Merged => "merged.ring".into(),
        }
    }

    /// The key a ring file name says, in a stream of `partitions`
    /// partitions per table.
    pub fn from_file_name(name: &str, partitions: u32) -> Option<RingKey> {
        let stem = name.strip_suffix(".ring")?;
        if stem == "merged" {
            return Some(RingKey::Merged);
        }
        let (relation, partition) = match stem.split_once('-') {
            Some((r, p)) => (r.parse().ok()?, p.parse().ok()?),
            None => (stem.parse().ok()?, 0),
        };
        let key = RingKey::Table { relation, partition, partitions };
        (key.file_name() == name).then_some(key)
    }

    /// The relation and partition a ring header records.
    pub fn relation_and_partition(&self) -> (u32, u32) {
        match self {
            RingKey::Table { relation, partition, .. } => (*relation, *partition),
            RingKey::Merged => (0, 0),
        }
    }
}

/// A slot name as one path component (PostgreSQL allows only
/// `[a-z0-9_]` in slot names; anything else is percent-encoded anyway).
pub(crate) fn encode(name: &str) -> String {
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

/// The uid of an OS user, by name.
pub fn user_id(name: &str) -> Result<u32, RingError> {
    let not_found = || RingError::Io {
        path: format!("user {name}"),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such user"),
    };
    let c_name = std::ffi::CString::new(name).map_err(|_| not_found())?;
    // SAFETY: a zeroed passwd is a valid (empty) value; getpwnam_r writes
    // only into it and into `buffer`, whose sizes it is given, and sets
    // `found` to `&user` or null.
    let mut user: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as above.
    let rc = unsafe { libc::getpwnam_r(c_name.as_ptr(), &mut user, buffer.as_mut_ptr(), buffer.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return Err(not_found());
    }
    Ok(user.pw_uid)
}

/// Whether this process belongs to group `gid` (so that it may give files
/// to it).
pub fn member_of(gid: u32) -> bool {
    let mut groups = vec![0 as libc::gid_t; 4096];
    // SAFETY: getgroups writes at most `len` ids into the buffer, and
    // getegid has no preconditions.
    let (count, egid) = unsafe { (libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()), libc::getegid()) };
    egid == gid || groups[..usize::try_from(count).unwrap_or(0)].contains(&gid)
}

fn unsafe_zeroed_group() -> libc::group {
    // SAFETY: libc::group is a plain C struct of pointers and integers, for
    // which all-zero bytes are a valid (empty) value.
    unsafe { std::mem::zeroed() }
}

/// Opens an existing ring file to read it (never through a symbolic link),
/// mapped read-only: readers write only their own state, beside it.
pub fn open(path: &Path) -> Result<Ring, RingError> {
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(io(path))?;
    let map = memmap2::MmapOptions::new().map_raw_read_only(&file).map_err(io(path))?;
    beside(path, Ring::open(Region::map(map))?)
}

/// Whether the file at `path` is no longer `ring`'s: gone, or another
/// ring made in its place (which readers of the old one must open, in
/// case its producer could not mark it retired).
pub fn superseded(ring: &Ring, path: &Path) -> bool {
    let Ok(file) = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) else { return true };
    let mut word = [0u8; 8];
    match std::os::unix::fs::FileExt::read_at(&file, &mut word, super::layout::OFF_INCARNATION as u64) {
        Ok(8) => u64::from_le_bytes(word) != ring.incarnation(),
        _ => true,
    }
}

fn open_file(path: &Path) -> Result<File, RingError> {
    OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(io(path))
}

fn map(path: &Path, file: &File) -> Result<Ring, RingError> {
    beside(path, Ring::open(Region::map(MmapRaw::map_raw(file).map_err(io(path))?))?)
}

/// The ring of the file at `path`, with its consumer states and spilled
/// frames beside it.
fn beside(path: &Path, ring: Ring) -> Result<Ring, RingError> {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(ring.with_file(path.parent().map_or_else(PathBuf::new, Path::to_owned), stem))
}

/// Opens a ring file of this process's own (the server's), to write it:
/// a file it owns, writable by nobody else, so that no other user can have
/// put it there.
pub fn open_own(path: &Path) -> Result<Ring, RingError> {
    let file = open_file(path)?;
    check_own(path, &file.metadata().map_err(io(path))?)?;
    map(path, &file)
}

/// The effective user id of this process.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn unsafe_path(path: &Path, why: String) -> RingError {
    RingError::Unsafe { path: path.display().to_string(), why }
}

/// A file or directory this process made: its own, and writable by nobody
/// else (but a stream's directory, where the ring group's readers make
/// their state files: writable by the group, and sticky, so that nobody
/// removes or renames another's files).
fn check_own(path: &Path, meta: &std::fs::Metadata) -> Result<(), RingError> {
    let me = euid();
    if meta.uid() != me {
        return Err(unsafe_path(
            path,
            format!("it belongs to uid {}, not to the server's user (uid {me}); remove it, or set pgcdc.ring_directory elsewhere", meta.uid()),
        ));
    }
    let sticky_dir = meta.is_dir() && meta.mode() & 0o1000 != 0;
    let writable_by_others = if sticky_dir { 0o002 } else { 0o022 };
    if meta.mode() & writable_by_others != 0 {
        return Err(unsafe_path(
            path,
            format!(
                "others may write to it (mode {:o}); remove it, or make it writable by its owner only",
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Creates the directories down to the stream directory `dir` (mode 0700;
/// with a ring group, 0750 and, for `dir` itself, 01770: the group's
/// readers make their state files there), and checks every directory on
/// the way: none may be
/// a symbolic link, or belong to a user other than root or this one, or be
/// writable by others (unless root's and sticky, as /dev/shm and /tmp
/// are). A directory another user made in a shared place before the
/// server started is refused with the way out, not written into.
pub fn create_dirs(dir: &Path, group: Option<u32>) -> Result<(), RingError> {
    let dir = if dir.is_absolute() { dir.to_owned() } else { std::env::current_dir().map_err(io(dir))?.join(dir) };
    let mut path = PathBuf::new();
    let parts = dir.components().count();
    for (i, part) in dir.components().enumerate() {
        path.push(part);
        let mode = match group {
            Some(_) if i + 1 == parts => 0o1770,
            Some(_) => 0o750,
            None => 0o700,
        };
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut builder = std::fs::DirBuilder::new();
                builder.mode(0o700);
                match builder.create(&path) {
                    Ok(()) => {
                        if let Some(gid) = group {
                            // The group's readers may enter (not umask's
                            // business: the mode is set after chown).
                            std::os::unix::fs::chown(&path, None, Some(gid)).map_err(io(&path))?;
                            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                                .map_err(io(&path))?;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io(&path)(e)),
                }
                std::fs::symlink_metadata(&path).map_err(io(&path))?
            }
            Err(e) => return Err(io(&path)(e)),
        };
        if meta.file_type().is_symlink() {
            return Err(unsafe_path(&path, "it is a symbolic link; use the directory it points to".into()));
        }
        if !meta.is_dir() {
            return Err(unsafe_path(&path, "it is not a directory".into()));
        }
        let shared = meta.uid() == 0 && meta.mode() & 0o1000 != 0;
        if meta.uid() == 0 && (shared || meta.mode() & 0o022 == 0) {
            continue;
        }
        check_own(&path, &meta)?;
    }
    Ok(())
}

/// Opens the ring at `path`, creating it with `geometry`, owned by
/// `identity` and with `consumers` registered, if there is none: mode
/// 0600, or 0640 owned by group `group`. A file of that name another user
/// put there is removed first (the stream's directory is the server's).
pub fn open_or_create(
    path: &Path,
    geometry: Geometry,
    identity: &Identity,
    consumers: &[Consumer],
    group: Option<u32>,
) -> Result<Ring, RingError> {
    match open_own(path) {
        Err(RingError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(RingError::Unsafe { .. }) => std::fs::remove_file(path).map_err(io(path))?,
        other => return other,
    }
    if let Some(dir) = path.parent() {
        create_dirs(dir, group)?;
    }
    // Unique per process and per call: concurrent creators never share it.
    static CREATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let serial = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temporary = path.with_extension(format!("new.{}.{serial}", std::process::id()));
    let created = create_at(&temporary, geometry, identity, consumers, group);
    // Readers only ever see a complete ring: the name appears at once, and
    // never replaces a ring another process created meanwhile.
    let linked = created.map(|()| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    match linked? {
        Ok(()) => open_own(path),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => open_own(path),
        Err(e) => Err(io(path)(e)),
    }
}

fn create_at(
    path: &Path,
    geometry: Geometry,
    identity: &Identity,
    consumers: &[Consumer],
    group: Option<u32>,
) -> Result<(), RingError> {
    let file = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(path).map_err(io(path))?;
    if let Some(gid) = group {
        std::os::unix::fs::fchown(&file, None, Some(gid)).map_err(io(path))?;
        // After fchown, and not at open: the server's umask would cut it.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o640)).map_err(io(path))?;
    }
    file.set_len(geometry.file_len() as u64).map_err(io(path))?;
    Ring::create(Region::map(MmapRaw::map_raw(&file).map_err(io(path))?), geometry, identity, consumers)?;
    Ok(())
}

/// Writes `bytes` to a new file beside the rings, readable by the ring
/// group when there is one (a spilled frame).
pub fn write_beside(path: &Path, bytes: &[u8], group: Option<u32>) -> Result<(), RingError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io(path))?;
    if let Some(gid) = group {
        std::os::unix::fs::fchown(&file, None, Some(gid)).map_err(io(path))?;
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o640)).map_err(io(path))?;
    }
    file.write_all(bytes).map_err(io(path))
}

/// Writes `bytes` to `path` for this process alone (mode 0600): to a
/// temporary file first, renamed into place, so that a reader finds the
/// whole file or none (snapshot chunks, which hold a table's rows). With
/// `durable`, the file and its name are on disk when this returns.
pub fn write_private(path: &Path, bytes: &[u8], durable: bool) -> Result<(), RingError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let _ = std::fs::remove_file(&temporary);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temporary)
        .map_err(io(&temporary))?;
    file.write_all(bytes).map_err(io(&temporary))?;
    if durable {
        file.sync_all().map_err(io(&temporary))?;
    }
    drop(file);
    std::fs::rename(&temporary, path).map_err(io(path))?;
    if let (true, Some(dir)) = (durable, path.parent()) {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    }
    Ok(())
}

/// Reads a file this process wrote with [`write_private`]: refused unless
/// it is this process's user's, and writable by nobody else, so that no
/// other user can have put it there.
pub fn read_private(path: &Path) -> Result<Vec<u8>, RingError> {
    let mut file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(io(path))?;
    let meta = file.metadata().map_err(io(path))?;
    check_own(path, &meta)?;
    if meta.mode() & 0o077 != 0 {
        return Err(unsafe_path(path, format!("others may read it (mode {:o})", meta.mode() & 0o7777)));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut bytes).map_err(io(path))?;
    Ok(bytes)
}

/// The ring files of a stream's directory (none when it does not exist).
pub fn rings_in(stream_dir: &Path) -> Result<Vec<PathBuf>, RingError> {
    let entries = match std::fs::read_dir(stream_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(stream_dir)(e)),
    };
    let mut rings: Vec<PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "ring")).collect();
    rings.sort();
    Ok(rings)
}

/// The stream's registered consumers, in a file beside its rings, held
/// under an exclusive lock for as long as this value lives: whoever
/// registers a consumer (a backend running `cdc_register_consumer`) and
/// whoever creates a ring (the worker) take it, so that a new ring gets
/// every consumer registered before it, and a new consumer every ring
/// created before it.
pub struct Registry {
    file: File,
    path: PathBuf,
}

impl Registry {
    /// Locks the registry of the stream in `stream_dir`, creating both
    /// when missing.
    pub fn lock(stream_dir: &Path, group: Option<u32>) -> Result<Registry, RingError> {
        create_dirs(stream_dir, group)?;
        let path = stream_dir.join("consumers");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io(&path))?;
        check_own(&path, &file.metadata().map_err(io(&path))?)?;
        file.lock().map_err(io(&path))?;
        Ok(Registry { file, path })
    }

    /// The registered consumers: a line each, the owner's uid (or `-`), a
    /// tab, and the name (which has no control characters).
    pub fn consumers(&mut self) -> Result<Vec<Consumer>, RingError> {
        let mut text = String::new();
        self.file.rewind().map_err(io(&self.path))?;
        self.file.read_to_string(&mut text).map_err(io(&self.path))?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let (owner, name) = line.split_once('\t')?;
                Some(Consumer { name: name.to_owned(), owner: owner.parse().ok() })
            })
            .collect())
    }

    /// Replaces the list of registered consumers.
    pub fn set(&mut self, consumers: &[Consumer]) -> Result<(), RingError> {
        let mut text = String::new();
        for c in consumers {
            text.push_str(&format!("{}\t{}\n", c.owner.map_or("-".to_owned(), |u| u.to_string()), c.name));
        }
        self.file.set_len(0).map_err(io(&self.path))?;
        self.file.rewind().map_err(io(&self.path))?;
        self.file.write_all(text.as_bytes()).map_err(io(&self.path))
    }
}
