//! Every pgcdc setting, registered once at library load, plus reading
//! PostgreSQL's own settings where SQL would hide them.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use std::ffi::{CStr, CString};

/// Where ring files live: `<dir>/<database>/<slot>/<route>.ring`. A tmpfs
/// (the default, /dev/shm) keeps them in memory.
pub static RING_DIRECTORY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"/dev/shm/pgcdc"));

/// Bytes of frames per ring, in megabytes. A full ring pushes back on
/// decoding until its consumers acknowledge.
pub static RING_SIZE_MB: GucSetting<i32> = GucSetting::<i32>::new(16);

/// An OS group allowed to read rings (directories become 0750 and rings
/// 0660 to it: readers write their acknowledgements); empty keeps them to
/// the server's user. The server's user must belong to the group.
pub static RING_GROUP: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// How long the worker may hold decoded rows to batch them with the next
/// transactions' (microseconds). It never waits once it has caught up with
/// the WAL, so quiet streams see no delay.
pub static LINGER_US: GucSetting<i32> = GucSetting::<i32>::new(500);

/// Snapshot workers per stream: tables, and key ranges of large tables,
/// are read in parallel by this many processes.
pub static SNAPSHOT_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(2);

/// Rows per snapshot chunk: each chunk is read in one short transaction.
pub static SNAPSHOT_CHUNK_ROWS: GucSetting<i32> = GucSetting::<i32>::new(20_000);

pub fn init() {
    GucRegistry::define_int_guc(
        c"pgcdc.snapshot_workers",
        c"Snapshot workers per stream.",
        c"Tables, and key ranges of large tables, are read in parallel by this many background workers (each takes one of max_worker_processes while it runs).",
        &SNAPSHOT_WORKERS,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pgcdc.snapshot_chunk_rows",
        c"Rows per snapshot chunk.",
        c"Each chunk is read in one short transaction between two watermarks; larger chunks cost fewer watermarks and hold more rows in memory.",
        &SNAPSHOT_CHUNK_ROWS,
        1,
        10_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pgcdc.linger",
        c"Microseconds the worker may hold rows to batch them with later transactions.",
        c"A busy stream's batches go out at least this far apart; rows after a quiet moment go out at once.",
        &LINGER_US,
        0,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pgcdc.ring_directory",
        c"Directory of the shared-memory ring files.",
        c"Rings are created as <directory>/<database>/<slot>/<route>.ring; use a tmpfs such as /dev/shm.",
        &RING_DIRECTORY,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pgcdc.ring_size",
        c"Bytes of changes each ring holds, in megabytes.",
        c"For rings created after it is set. A full ring makes decoding wait for its consumers; a change larger than half a ring goes to a file beside it.",
        &RING_SIZE_MB,
        1,
        65536,
        GucContext::Sighup,
        GucFlags::UNIT_MB,
    );
    GucRegistry::define_string_guc(
        c"pgcdc.ring_group",
        c"OS group allowed to read ring files.",
        c"Empty: rings are the server's OS user's only (mode 0600). The server's OS user must be in the group.",
        &RING_GROUP,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

pub fn ring_directory() -> String {
    RING_DIRECTORY.get().map(|d| d.to_string_lossy().into_owned()).unwrap_or_else(|| "/dev/shm/pgcdc".into())
}

pub fn ring_bytes() -> u64 {
    u64::try_from(RING_SIZE_MB.get()).unwrap_or(16) << 20
}

pub fn linger() -> std::time::Duration {
    std::time::Duration::from_micros(u64::try_from(LINGER_US.get()).unwrap_or(0))
}

pub fn snapshot_workers() -> usize {
    usize::try_from(SNAPSHOT_WORKERS.get()).unwrap_or(1).max(1)
}

pub fn snapshot_chunk_rows() -> usize {
    usize::try_from(SNAPSHOT_CHUNK_ROWS.get()).unwrap_or(1).max(1)
}

pub fn ring_group() -> Option<String> {
    RING_GROUP.get().map(|g| g.to_string_lossy().into_owned()).filter(|g| !g.is_empty())
}

/// A setting's value, whatever the current role may see; None where the
/// server has no such setting. Used for `output_plugin_libraries`, which
/// only superusers may read from SQL but every configuring role needs
/// checked.
pub fn read_unrestricted(name: &CStr) -> Option<String> {
    // SAFETY: GetConfigOption with missing_ok returns NULL or a pointer to
    // the setting's current string, valid until the next change; it is
    // copied at once.
    unsafe {
        let value = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        (!value.is_null()).then(|| CStr::from_ptr(value).to_string_lossy().into_owned())
    }
}
