//! The snapshot workers of a stream: up to `pgcdc.snapshot_workers`
//! background processes that plan pending snapshots into key ranges, take
//! ranges one at a time (a session advisory lock per range, so a crashed
//! worker's range is free again at once) and read them chunk by chunk.
//!
//! Each chunk is two short transactions: the low watermark, then the read
//! (under ACCESS SHARE), the chunk file, the high watermark and the
//! range's progress, committed together. A chunk that was read but not
//! committed is read again; one that was committed is never read again.
//! A range whose chunk keeps killing its reader (three attempts) fails
//! the snapshot with a pointer to the server log, rather than crashing
//! forever. A worker exits when no range is left to take.

use super::chunk::{self, Key};
use super::error::SnapshotError;
use super::plan;
use super::{create_dir, durable, emit, emit_end, snapshot_dir, token};
use crate::gucs;
use pgcdc_encode::ipc;
use pgcdc_reader::ring::file;
use pgcdc_reader::snapshot::{Marker, MarkerKind};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime, DynamicBackgroundWorker,
    SignalWakeFlags,
};
use pgrx::prelude::*;
use std::path::Path;
use std::time::Duration;

/// The first key of the advisory lock a snapshot worker holds on its
/// number ("pgcs"), and of those on the ranges being read ("pgcr").
const WORKER_LOCK: i32 = 0x7067_6373;
const RANGE_LOCK: i32 = 0x7067_6372;
/// Chunk files of one range that may wait for the stream's decoder: the
/// worker reads ahead of the stream by this much, and no more.
const AHEAD: usize = 4;
/// Reads of one chunk that may die before the snapshot is failed.
const ATTEMPTS: i32 = 3;

/// The snapshot workers of one stream, started and watched by the
/// stream's worker alone: at most `pgcdc.snapshot_workers`, only while
/// snapshots wait, each number once. (Started from every transaction that
/// asked for a snapshot, and again by the stream worker, transient
/// duplicates took the worker slots a stream worker needed: a stream
/// configured meanwhile did not start.) After a crash they are not
/// restarted by the postmaster: the stream worker, restarted, starts them.
pub struct Team {
    database: String,
    slot: String,
    members: Vec<(usize, DynamicBackgroundWorker)>,
    warned: bool,
}

impl Team {
    pub fn new(database: &str, slot: &str) -> Team {
        Team { database: database.to_owned(), slot: slot.to_owned(), members: Vec::new(), warned: false }
    }

    /// Forgets the workers that ended and, while snapshots of the stream
    /// are pending or running, starts the missing ones.
    pub fn keep(&mut self) {
        self.members.retain(|(_, w)| !matches!(w.pid(), Err(BackgroundWorkerStatus::Stopped)));
        let waiting = BackgroundWorker::transaction(|| {
            super::first_or_none::<bool>(
                "SELECT true FROM pgcdc.snapshots WHERE slot_name = $1 AND state IN ('pending', 'running') LIMIT 1",
                &[self.slot.as_str().into()],
            )
        });
        if !matches!(waiting, Ok(Some(true))) {
            return;
        }
        for number in 0..gucs::snapshot_workers() {
            if self.members.iter().any(|(n, _)| *n == number) {
                continue;
            }
            let started = BackgroundWorkerBuilder::new(&format!("pgcdc snapshot {} #{number}", self.slot))
                .set_type("pgcdc snapshot")
                .set_library("pgcdc")
                .set_function("pgcdc_snapshot_worker_main")
                .set_extra(&format!("{}\n{}\n{number}", self.database, self.slot))
                .enable_spi_access()
                .set_start_time(BgWorkerStartTime::RecoveryFinished)
                .set_restart_time(None)
                .load_dynamic();
            match started {
                Ok(worker) => self.members.push((number, worker)),
                Err(_) => {
                    if !self.warned {
                        pgrx::warning!(
                            "pgcdc: stream \"{}\" runs {} of its {} snapshot workers: no free worker slot (raise max_worker_processes); it tries again every second",
                            self.slot,
                            self.members.len(),
                            gucs::snapshot_workers()
                        );
                        self.warned = true;
                    }
                    return;
                }
            }
        }
        self.warned = false;
    }
}

/// A range taken by this worker.
struct Work {
    slot: String,
    snapshot: u64,
    relid: u32,
    range: u32,
    key: Key,
    upper: Option<Vec<String>>,
    after: Option<Vec<String>>,
    /// Chunks of the range committed so far: the next one's number.
    chunks: u64,
    token: u64,
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgcdc_snapshot_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let extra = BackgroundWorker::get_extra().to_owned();
    let mut parts = extra.splitn(3, '\n');
    let (Some(database), Some(slot), Some(number)) = (parts.next(), parts.next(), parts.next()) else {
        pgrx::log!("pgcdc snapshot worker: malformed arguments {extra:?}");
        return;
    };
    BackgroundWorker::connect_worker_to_spi(Some(database), None);
    set_session(c"application_name", &format!("pgcdc snapshot {slot}"));
    // Each chunk reads under a snapshot taken after its table is locked.
    set_session(c"default_transaction_isolation", "read committed");
    let taken = BackgroundWorker::transaction(|| {
        Spi::get_one_with_args::<bool>(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[WORKER_LOCK.into(), format!("{slot}#{number}").into()],
        )
    });
    if !matches!(taken, Ok(Some(true))) {
        return;
    }
    let chunk_rows = gucs::snapshot_chunk_rows();
    loop {
        if BackgroundWorker::sigterm_received() {
            return;
        }
        let work = BackgroundWorker::transaction(|| plan_pending(slot, chunk_rows).and_then(|()| claim(slot)));
        let work = match work {
            Ok(Some(work)) => work,
            Ok(None) => return,
            Err(e) => pgrx::error!("pgcdc snapshot worker of \"{slot}\": {e}"),
        };
        if let Err(e) = read_range(&work, chunk_rows) {
            pgrx::warning!("pgcdc snapshot {} of stream \"{slot}\" failed: {e}", work.snapshot);
            let why = e.to_string();
            BackgroundWorker::transaction(|| fail(slot, work.snapshot, &why))
                .unwrap_or_else(|e| pgrx::error!("pgcdc snapshot worker of \"{slot}\": {e}"));
        }
        BackgroundWorker::transaction(|| {
            Spi::run_with_args(
                "SELECT pg_advisory_unlock($1, hashtext($2))",
                &[RANGE_LOCK.into(), format!("{}.{}", work.snapshot, work.range).into()],
            )
        })
        .unwrap_or_else(|e| pgrx::error!("pgcdc snapshot worker of \"{slot}\": {e}"));
    }
}

/// Sets a setting for the rest of the session.
fn set_session(name: &std::ffi::CStr, value: &str) {
    let value = std::ffi::CString::new(value).unwrap_or_default();
    // SAFETY: setting a session GUC by name with a NUL-terminated value.
    unsafe {
        pg_sys::SetConfigOption(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
        );
    }
}

/// Plans every pending snapshot of the stream nobody else is planning.
fn plan_pending(slot: &str, chunk_rows: usize) -> Result<(), SnapshotError> {
    loop {
        let pending = Spi::connect_mut(|client| {
            let rows = client.update(
                "SELECT snapshot_id, relid::int8 FROM pgcdc.snapshots WHERE slot_name = $1 AND state = 'pending'
                 ORDER BY snapshot_id LIMIT 1 FOR UPDATE SKIP LOCKED",
                None,
                &[slot.into()],
            )?;
            if rows.is_empty() {
                return Ok::<_, pgrx::spi::Error>(None);
            }
            let row = rows.first();
            Ok(Some((row.get::<i64>(1)?.unwrap_or(0), row.get::<i64>(2)?.unwrap_or(0))))
        })?;
        let Some((snapshot, relid)) = pending else { return Ok(()) };
        let (snapshot, relid) = (u64::try_from(snapshot).unwrap_or(0), u32::try_from(relid).unwrap_or(0));
        match plan::plan(relid, chunk_rows, 4 * gucs::snapshot_workers()) {
            Ok(plan) => {
                token(slot, snapshot)?;
                for (number, range) in plan.ranges.iter().enumerate() {
                    Spi::run_with_args(
                        "INSERT INTO pgcdc.snapshot_ranges (snapshot_id, range_no, lower_key, upper_key, resume_after)
                         VALUES ($1, $2, $3, $4, $3)",
                        &[
                            (snapshot as i64).into(),
                            (number as i32).into(),
                            range.lower.clone().into(),
                            range.upper.clone().into(),
                        ],
                    )?;
                }
                Spi::run_with_args(
                    "UPDATE pgcdc.snapshots SET state = 'running', started_at = now(), key_columns = $2,
                            key_types = $3, rows_estimated = $4
                     WHERE snapshot_id = $1",
                    &[
                        (snapshot as i64).into(),
                        plan.key.columns.clone().into(),
                        plan.key.types.clone().into(),
                        plan.estimate.into(),
                    ],
                )?;
            }
            Err(e @ (SnapshotError::NoKey(_) | SnapshotError::TableGone(_))) => {
                pgrx::warning!("pgcdc: snapshot {snapshot} of stream \"{slot}\" failed: {e}");
                Spi::run_with_args(
                    "UPDATE pgcdc.snapshots SET state = 'failed', error = $2, finished_at = now() WHERE snapshot_id = $1",
                    &[(snapshot as i64).into(), e.to_string().into()],
                )?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Takes the first range of the stream's running snapshots that nobody
/// reads.
fn claim(slot: &str) -> Result<Option<Work>, SnapshotError> {
    let candidates = Spi::connect(|client| {
        client
            .select(
                "SELECT s.snapshot_id, r.range_no, s.relid::int8, s.key_columns, s.key_types, r.upper_key,
                        r.resume_after, r.chunks, r.attempts
                 FROM pgcdc.snapshot_ranges r JOIN pgcdc.snapshots s USING (snapshot_id)
                 WHERE s.slot_name = $1 AND s.state = 'running' AND NOT r.done
                 ORDER BY s.snapshot_id, r.range_no",
                None,
                &[slot.into()],
            )?
            .map(|row| {
                Ok((
                    Work {
                        slot: slot.to_owned(),
                        snapshot: u64::try_from(row.get::<i64>(1)?.unwrap_or(0)).unwrap_or(0),
                        range: u32::try_from(row.get::<i32>(2)?.unwrap_or(0)).unwrap_or(0),
                        relid: u32::try_from(row.get::<i64>(3)?.unwrap_or(0)).unwrap_or(0),
                        key: Key {
                            columns: row.get::<Vec<String>>(4)?.unwrap_or_default(),
                            types: row.get::<Vec<String>>(5)?.unwrap_or_default(),
                        },
                        upper: row.get::<Vec<String>>(6)?,
                        after: row.get::<Vec<String>>(7)?,
                        chunks: u64::try_from(row.get::<i64>(8)?.unwrap_or(0)).unwrap_or(0),
                        token: 0,
                    },
                    row.get::<i32>(9)?.unwrap_or(0),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })?;
    for (mut work, attempts) in candidates {
        let locked = Spi::get_one_with_args::<bool>(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[RANGE_LOCK.into(), format!("{}.{}", work.snapshot, work.range).into()],
        )?;
        if locked != Some(true) {
            continue;
        }
        if attempts >= ATTEMPTS {
            let after = work.after.as_ref().map_or("its first key".to_owned(), |k| format!("key ({})", k.join(", ")));
            fail(
                slot,
                work.snapshot,
                &format!(
                    "reading the chunk after {after} of range {} ended the worker {attempts} times; the server log says why",
                    work.range
                ),
            )?;
            continue;
        }
        work.token = token(slot, work.snapshot)?;
        return Ok(Some(work));
    }
    Ok(None)
}

/// Reads a range chunk by chunk to its end (or until the snapshot stops
/// being wanted, or the worker is asked to stop).
fn read_range(work: &Work, chunk_rows: usize) -> Result<(), SnapshotError> {
    let dir = snapshot_dir(&work.slot);
    create_dir(&dir)?;
    let mut after = work.after.clone();
    let mut chunk = work.chunks;
    loop {
        if !wait_for_room(&dir, work)? {
            return Ok(());
        }
        let marker = |kind| Marker {
            slot: work.slot.clone(),
            kind,
            snapshot: work.snapshot,
            token: work.token,
            relid: work.relid,
            range: work.range,
            chunk,
        };
        let go = BackgroundWorker::transaction(|| {
            if !running(&work.slot, work.snapshot)? {
                return Ok::<_, SnapshotError>(false);
            }
            Spi::run_with_args(
                "UPDATE pgcdc.snapshot_ranges SET attempts = attempts + 1 WHERE snapshot_id = $1 AND range_no = $2",
                &[(work.snapshot as i64).into(), (work.range as i32).into()],
            )?;
            emit(&marker(MarkerKind::Low))?;
            Ok(true)
        })?;
        if !go {
            return Ok(());
        }
        let (last, done) = BackgroundWorker::transaction(|| {
            let read = chunk::read_chunk(work.relid, &work.key, after.as_deref(), work.upper.as_deref(), chunk_rows)?;
            let rows = read.batch.num_rows();
            let high = marker(MarkerKind::High);
            let mut bytes = Vec::new();
            ipc::write_stream(&read.batch, &mut bytes)
                .map_err(|e| SnapshotError::Write { table: format!("OID {}", work.relid), why: e.to_string() })?;
            file::write_private(&dir.join(high.chunk_file_name()), &bytes, durable())?;
            emit(&high)?;
            let done = rows < chunk_rows;
            Spi::run_with_args(
                "UPDATE pgcdc.snapshot_ranges
                 SET resume_after = coalesce($3, resume_after), chunks = chunks + 1, rows = rows + $4, attempts = 0,
                     done = $5, updated_at = now()
                 WHERE snapshot_id = $1 AND range_no = $2",
                &[
                    (work.snapshot as i64).into(),
                    (work.range as i32).into(),
                    read.last_key.clone().into(),
                    (rows as i64).into(),
                    done.into(),
                ],
            )?;
            Ok::<_, SnapshotError>((read.last_key, done))
        })?;
        if done {
            return BackgroundWorker::transaction(|| finish(work));
        }
        after = last;
        chunk += 1;
    }
}

/// Waits while the range has [`AHEAD`] chunks the stream has not
/// delivered yet. False when the worker is asked to stop or the snapshot
/// is no longer running.
fn wait_for_room(dir: &Path, work: &Work) -> Result<bool, SnapshotError> {
    let prefix = format!("{}.{}.", work.snapshot, work.range);
    let mut waited = 0u32;
    loop {
        let waiting = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.starts_with(&prefix) && name.ends_with(".chunk")
                    })
                    .count()
            })
            .unwrap_or(0);
        if waiting < AHEAD {
            return Ok(true);
        }
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(10))) {
            return Ok(false);
        }
        waited += 1;
        // A cancelled snapshot's chunks are never delivered: look now and then.
        if waited % 100 == 0 && !BackgroundWorker::transaction(|| running(&work.slot, work.snapshot))? {
            return Ok(false);
        }
    }
}

/// Whether snapshot `snapshot` of stream `slot` is still running: neither
/// cancelled, nor failed here, nor failed by the stream (which could not
/// deliver one of its chunks; recorded now, so that its workers stop).
fn running(slot: &str, snapshot: u64) -> Result<bool, SnapshotError> {
    if super::record_stream_failure(slot, snapshot)? {
        return Ok(false);
    }
    let state = super::first_or_none::<String>(
        "SELECT state FROM pgcdc.snapshots WHERE snapshot_id = $1",
        &[(snapshot as i64).into()],
    )?;
    Ok(state.as_deref() == Some("running"))
}

/// After a range's last chunk: the snapshot is done once every range is,
/// and the worker that finds so (under the snapshot's row lock, so exactly
/// one does) commits the marker that tells readers.
fn finish(work: &Work) -> Result<(), SnapshotError> {
    let state = super::first_or_none::<String>(
        "SELECT state FROM pgcdc.snapshots WHERE snapshot_id = $1 FOR UPDATE",
        &[(work.snapshot as i64).into()],
    )?;
    if state.as_deref() != Some("running") {
        return Ok(());
    }
    let left = Spi::get_one_with_args::<i64>(
        "SELECT count(*) FROM pgcdc.snapshot_ranges WHERE snapshot_id = $1 AND NOT done",
        &[(work.snapshot as i64).into()],
    )?;
    if left != Some(0) {
        return Ok(());
    }
    emit_end(&work.slot, work.snapshot, work.token, work.relid, MarkerKind::Done)?;
    Spi::run_with_args(
        "UPDATE pgcdc.snapshots SET state = 'done', finished_at = now() WHERE snapshot_id = $1",
        &[(work.snapshot as i64).into()],
    )?;
    Ok(())
}

/// Fails a snapshot: recorded with why, and its open chunks closed in the
/// stream.
fn fail(slot: &str, snapshot: u64, why: &str) -> Result<(), SnapshotError> {
    super::stop(slot, snapshot, "failed", Some(why)).map(|_| ())
}
