//! Snapshots (DESIGN §6): a table's existing rows delivered on its route as
//! `r` rows, interleaved with its live changes so that applying the route
//! in order yields the table's exact contents.
//!
//! A snapshot is planned into key ranges ([`plan`]); snapshot workers
//! ([`worker`], up to `pgcdc.snapshot_workers` per stream) take ranges and
//! read them chunk by chunk ([`chunk`]), each chunk between a low and a
//! high watermark that the stream's decoder reconciles with the changes
//! between them (`pgcdc_reader::snapshot`). No lock beyond ACCESS SHARE for
//! the few milliseconds of a chunk, no transaction held for a whole table,
//! and progress committed with every chunk: a crash of anything resumes
//! from the last chunk delivered.
//!
//! The catalog (`pgcdc.snapshots`, `pgcdc.snapshot_ranges`) says what was
//! asked and how far it got. The chunk files and each snapshot's token live
//! in `$PGDATA/pgcdc_snapshots/<slot>`: durable like the slot itself (a
//! chunk must outlive the slot's confirmed position, also across a reboot
//! that empties a tmpfs ring directory), and out of every reader's reach
//! (they hold rows of tables a reader may not be allowed to see).

mod chunk;
mod error;
mod plan;
mod worker;

pub use error::SnapshotError;
pub use worker::Team;

use pgcdc_reader::ring::file;
use pgcdc_reader::snapshot::{token_file_name, Marker, MarkerKind, MESSAGE_PREFIX};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::spi::Spi;
use pgrx::{FromDatum, IntoDatum};
use std::path::PathBuf;

/// The first row's first column of `sql` (which may write), or None when
/// it returns no row: pgrx's `Spi::get_one` makes "no row" an error, and
/// here it is an answer (no snapshot in progress, one that ended already).
pub fn first_or_none<T: FromDatum + IntoDatum>(
    sql: &str,
    args: &[DatumWithOid<'_>],
) -> Result<Option<T>, pgrx::spi::Error> {
    Spi::connect_mut(|client| {
        let table = client.update(sql, Some(1), args)?;
        if table.is_empty() {
            return Ok(None);
        }
        table.first().get_one::<T>()
    })
}

/// Where stream `slot`'s snapshot files live.
pub fn snapshot_dir(slot: &str) -> PathBuf {
    // SAFETY: DataDir is set once at server start, before any backend or
    // worker runs, and never changes.
    let data = unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir).to_string_lossy().into_owned() };
    PathBuf::from(data).join("pgcdc_snapshots").join(slot)
}

/// Whether files must reach the disk before a commit that relies on them:
/// as PostgreSQL's own `fsync` setting says.
fn durable() -> bool {
    // SAFETY: reading a setting's global, set by the GUC machinery.
    unsafe { pg_sys::enableFsync }
}

/// Commits a watermark to the WAL, in the current transaction.
fn emit(marker: &Marker) -> Result<(), pgrx::spi::Error> {
    Spi::run_with_args(
        "SELECT pg_logical_emit_message(true, $1, $2)",
        &[MESSAGE_PREFIX.into(), marker.to_string().into()],
    )
}

/// The token of snapshot `snapshot` of stream `slot`, made (and written to
/// its file) on first use.
fn token(slot: &str, snapshot: u64) -> Result<u64, SnapshotError> {
    let dir = snapshot_dir(slot);
    let path = dir.join(token_file_name(snapshot));
    if let Ok(text) = file::read_private(&path) {
        if let Ok(token) = u64::from_str_radix(String::from_utf8_lossy(&text).trim(), 16) {
            return Ok(token);
        }
    }
    // gen_random_uuid draws from pg_strong_random.
    let random: Option<String> = Spi::get_one("SELECT substr(replace(gen_random_uuid()::text, '-', ''), 1, 16)")?;
    let token = u64::from_str_radix(&random.unwrap_or_default(), 16).map_err(|e| SnapshotError::Write {
        table: format!("snapshot {snapshot}"),
        why: format!("making its token: {e}"),
    })?;
    create_dir(&dir)?;
    file::write_private(&path, format!("{token:016x}").as_bytes(), durable())?;
    Ok(token)
}

/// Creates the snapshot directory of a stream (the server's only).
fn create_dir(dir: &std::path::Path) -> Result<(), SnapshotError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| {
        SnapshotError::Ring(pgcdc_reader::ring::RingError::Io { path: dir.display().to_string(), source: e })
    })
}

/// A table's snapshot, as a request for one returns it.
pub struct Requested {
    pub snapshot: u64,
    pub schema: String,
    pub table: String,
    pub state: String,
}

/// Asks for a snapshot of each table (`relid`, schema, name) of stream
/// `slot`: a table with a snapshot pending or running keeps that one (it
/// delivers the whole table anyway). The stream's worker starts its
/// snapshot workers ([`Team`]) once the transaction has committed.
///
/// A table without a key is recorded as failed at once, with a warning that
/// says what to do.
///
/// With `reset` (the stream lost changes: its slot was made again), each
/// new snapshot starts with a `Reset` watermark, at which the table's route
/// gets a `t` row: a consumer that applies its route in order drops its
/// copy there and builds it again from the snapshot's rows.
pub fn request(slot: &str, tables: &[(u32, String, String)], reset: bool) -> Result<Vec<Requested>, SnapshotError> {
    let mut requested = Vec::with_capacity(tables.len());
    for (relid, schema, table) in tables {
        // An empty table needs no key: there is nothing to read.
        let empty = seen_empty(*relid)?;
        if let (false, Err(e @ SnapshotError::NoKey(_))) = (empty, chunk::table_key(*relid)) {
            pgrx::warning!("pgcdc: no snapshot of {}: {e}", pgrx::spi::quote_qualified_identifier(schema, table));
            let snapshot = Spi::get_one_with_args::<i64>(
                "INSERT INTO pgcdc.snapshots (slot_name, relid, schema_name, table_name, state, error, finished_at)
                 VALUES ($1, $2::int8::oid, $3, $4, 'failed', $5, now()) RETURNING snapshot_id",
                &[
                    slot.into(),
                    i64::from(*relid).into(),
                    schema.as_str().into(),
                    table.as_str().into(),
                    e.to_string().into(),
                ],
            )?;
            requested.push(Requested {
                snapshot: u64::try_from(snapshot.unwrap_or(0)).unwrap_or(0),
                schema: schema.clone(),
                table: table.clone(),
                state: "failed".into(),
            });
            continue;
        }
        let in_progress = match in_progress(slot, *relid)? {
            Some(id) => !record_stream_failure(slot, id)?,
            None => false,
        };
        if empty && !in_progress {
            // Complete at once, in this transaction: the marker comes
            // before every change committed after it.
            let snapshot = Spi::get_one_with_args::<i64>(
                "INSERT INTO pgcdc.snapshots (slot_name, relid, schema_name, table_name, state, rows_estimated,
                                              started_at, finished_at)
                 VALUES ($1, $2::int8::oid, $3, $4, 'done', 0, now(), now()) RETURNING snapshot_id",
                &[slot.into(), i64::from(*relid).into(), schema.as_str().into(), table.as_str().into()],
            )?;
            let snapshot = u64::try_from(snapshot.unwrap_or(0)).unwrap_or(0);
            if reset {
                emit_end(slot, snapshot, token(slot, snapshot)?, *relid, MarkerKind::Reset)?;
            }
            emit_end(slot, snapshot, token(slot, snapshot)?, *relid, MarkerKind::Done)?;
            requested.push(Requested { snapshot, schema: schema.clone(), table: table.clone(), state: "done".into() });
            continue;
        }
        let made = first_or_none::<i64>(
            "INSERT INTO pgcdc.snapshots (slot_name, relid, schema_name, table_name) VALUES ($1, $2::int8::oid, $3, $4)
             ON CONFLICT (slot_name, relid) WHERE state IN ('pending', 'running') DO NOTHING RETURNING snapshot_id",
            &[slot.into(), i64::from(*relid).into(), schema.as_str().into(), table.as_str().into()],
        )?;
        if let (true, Some(made)) = (reset, made.and_then(|id| u64::try_from(id).ok())) {
            emit_end(slot, made, token(slot, made)?, *relid, MarkerKind::Reset)?;
        }
        let (snapshot, state) = Spi::get_two_with_args::<i64, String>(
            "SELECT snapshot_id, state FROM pgcdc.snapshots
             WHERE slot_name = $1 AND relid = $2::int8::oid AND state IN ('pending', 'running')",
            &[slot.into(), i64::from(*relid).into()],
        )?;
        requested.push(Requested {
            snapshot: u64::try_from(snapshot.unwrap_or(0)).unwrap_or(0),
            schema: schema.clone(),
            table: table.clone(),
            state: state.unwrap_or_default(),
        });
    }
    Ok(requested)
}

/// Whether table `relid` has no row at all, as far as this transaction can
/// tell: only when the role may read it and no row security hides rows
/// from it (otherwise it cannot tell, and says no). Called after the
/// stream's slot exists, a yes means every row the table will have is
/// committed after the slot's consistent point and reaches the stream as
/// a change: reading the table would only send those rows twice.
fn seen_empty(relid: u32) -> Result<bool, SnapshotError> {
    let readable = first_or_none::<String>(
        "SELECT c.oid::regclass::text FROM pg_class c
         WHERE c.oid = $1::int8::oid AND NOT c.relrowsecurity AND has_table_privilege(c.oid, 'SELECT')",
        &[i64::from(relid).into()],
    )?;
    let Some(table) = readable else { return Ok(false) };
    Ok(first_or_none::<bool>(&format!("SELECT NOT EXISTS (SELECT FROM {table})"), &[])?.unwrap_or(false))
}

/// Records in the catalog that the stream failed snapshot `snapshot` of
/// stream `slot` (the decoder cannot write the catalog, so it leaves a
/// file saying why): its workers stop, and a new request for the table
/// makes a new snapshot. True if it was failed so.
pub fn record_stream_failure(slot: &str, snapshot: u64) -> Result<bool, SnapshotError> {
    let path = snapshot_dir(slot).join(pgcdc_reader::snapshot::failed_file_name(snapshot));
    let Ok(why) = file::read_private(&path) else { return Ok(false) };
    stop(slot, snapshot, "failed", Some(&String::from_utf8_lossy(&why)))?;
    Ok(true)
}

/// Ends snapshot `snapshot` of stream `slot` before its time (`state`:
/// cancelled or failed, with why): its workers stop at their next chunk,
/// and the stream forgets its open chunks. False if it had ended already.
pub fn stop(slot: &str, snapshot: u64, state: &str, error: Option<&str>) -> Result<bool, SnapshotError> {
    let relid = first_or_none::<i64>(
        "UPDATE pgcdc.snapshots SET state = $2, error = $3, finished_at = now()
         WHERE snapshot_id = $1 AND state IN ('pending', 'running') RETURNING relid::int8",
        &[(snapshot as i64).into(), state.into(), error.into()],
    )?;
    let Some(relid) = relid else { return Ok(false) };
    emit_end(slot, snapshot, token(slot, snapshot)?, u32::try_from(relid).unwrap_or(0), MarkerKind::Cancel)?;
    Ok(true)
}

/// The snapshot of table `relid` that stream `slot` has pending or
/// running, if any (one at most).
pub fn in_progress(slot: &str, relid: u32) -> Result<Option<u64>, pgrx::spi::Error> {
    let id = first_or_none::<i64>(
        "SELECT snapshot_id FROM pgcdc.snapshots
         WHERE slot_name = $1 AND relid = $2::int8::oid AND state IN ('pending', 'running')",
        &[slot.into(), i64::from(relid).into()],
    )?;
    Ok(id.and_then(|id| u64::try_from(id).ok()))
}

/// The watermark of snapshot `snapshot` of table `relid` that is no
/// chunk's (done, cancelled, reset), in the current transaction.
fn emit_end(slot: &str, snapshot: u64, token: u64, relid: u32, kind: MarkerKind) -> Result<(), pgrx::spi::Error> {
    emit(&Marker { slot: slot.to_owned(), kind, snapshot, token, relid, range: 0, chunk: 0 })
}
