//! The pgcdc worker (DESIGN §4): one background process per stream keeps a
//! decoding session open and writes each table's batches into its ring.
//!
//! Started by `cdc_auto_configure` as a dynamic worker; restarted by
//! PostgreSQL one second after a crash, and at once after a crash-restart
//! of the whole server. With `shared_preload_libraries = 'pgcdc'`, a
//! launcher also starts every registered stream when the server starts.
//! A worker that is asked to stop (or finds its stream gone) exits with
//! code 0, which unregisters it.

mod decoding;
mod launcher;
mod sink;

pub use sink::open_ring;

use crate::gucs;
use decoding::Session;
use pgcdc_reader::ring::layout::Geometry;
use pgcdc_reader::ring::{file, Identity};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
pub use sink::RingSettings;
use sink::{Shape, Sink};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use launcher::init;

/// How often the slot is told what it may forget.
const CONFIRM_EVERY: Duration = Duration::from_millis(50);
/// How often a moved confirmation is also written to disk: a crash
/// re-sends at most about this much (PostgreSQL itself saves a logical
/// slot only when its restart point or catalog horizon moves).
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// WAL records decoded between checks of the linger time.
const PUMP_RECORDS: usize = 256;
/// Longest sleep when no WAL arrives, where the worker polls for it (the
/// first one is a millisecond).
const MAX_IDLE_SLEEP: Duration = Duration::from_millis(10);
/// Longest sleep when no WAL arrives, where a flush wakes the worker: the
/// slot's confirmation and the rings' heartbeats go on meanwhile.
const WOKEN_WAIT: Duration = Duration::from_millis(100);

/// Starts the worker of stream `slot` in `database`.
pub fn start(database: &str, slot: &str) -> Result<(), String> {
    BackgroundWorkerBuilder::new(&format!("pgcdc stream {slot}"))
        .set_type("pgcdc worker")
        .set_library("pgcdc")
        .set_function("pgcdc_stream_worker_main")
        .set_extra(&format!("{database}\n{slot}"))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load_dynamic()
        .map(|_| ())
        .map_err(|_| "could not register the worker: raise max_worker_processes".to_owned())
}

/// What the catalog says about a stream.
struct Stream {
    publication: String,
    shape: Shape,
    consumers: Vec<pgcdc_reader::ring::Consumer>,
}

/// What the rings of stream `slot` are made of: the size and group the
/// settings say, and this cluster's, timeline's and database's identity.
pub fn ring_settings(slot: &str) -> Result<RingSettings, pgcdc_reader::ring::RingError> {
    let group = gucs::ring_group().map(|g| file::group_id(&g)).transpose()?;
    if let (Some(gid), Some(name)) = (group, gucs::ring_group()) {
        if !file::member_of(gid) {
            return Err(pgcdc_reader::ring::RingError::Unsafe {
                path: format!("pgcdc.ring_group = '{name}'"),
                why: format!(
                    "the server's OS user does not belong to group {name} (gid {gid}), so it cannot give ring files to it; \
                     add it to the group and restart PostgreSQL, or reset pgcdc.ring_group"
                ),
            });
        }
    }
    // SAFETY: plain reads of this server's identity (shared memory, and a
    // global set when the process connected to its database).
    let (system_id, timeline, database) =
        unsafe { (pg_sys::GetSystemIdentifier(), pg_sys::GetWALInsertionTimeLine(), pg_sys::MyDatabaseId.to_u32()) };
    let identity = Identity { system_id, timeline, database, slot: slot.to_owned(), ..Identity::default() };
    Ok(RingSettings { geometry: Geometry::new(gucs::ring_bytes()), group, identity })
}

/// The directory of the rings of stream `slot` in this database:
/// `pgcdc.ring_directory`, then this cluster's system identifier, the
/// database's OID and the slot.
pub fn stream_dir(slot: &str) -> PathBuf {
    // SAFETY: the system identifier is read from the control file's copy
    // in shared memory; MyDatabaseId is set once the process connected.
    let (system_id, database) = unsafe { (pg_sys::GetSystemIdentifier(), pg_sys::MyDatabaseId.to_u32()) };
    file::stream_dir(std::path::Path::new(&gucs::ring_directory()), system_id, database, slot)
}

/// The `application_name` a stream's worker shows in pg_stat_activity.
pub fn application_name(slot: &str) -> String {
    format!("pgcdc {slot}")
}

fn load_stream(slot: &str) -> Result<Option<Stream>, pgrx::spi::Error> {
    Spi::connect(|client| {
        let installed = client.select("SELECT 1 FROM pg_extension WHERE extname = 'pgcdc'", None, &[])?;
        if installed.is_empty() {
            return Ok(None);
        }
        let rows = client.select(
            "SELECT publication_name::text, route_by_table, partitions FROM pgcdc.streams WHERE slot_name = $1",
            None,
            &[slot.into()],
        )?;
        let Some(row) = rows.into_iter().next() else { return Ok(None) };
        let publication: String = row.get(1)?.unwrap_or_default();
        let shape = Shape {
            route_by_table: row.get::<bool>(2)?.unwrap_or(true),
            partitions: row.get::<i32>(3)?.and_then(|p| u32::try_from(p).ok()).unwrap_or(1),
        };
        let consumers = client
            .select(
                "SELECT consumer_name::text, os_user::text FROM pgcdc.consumers WHERE slot_name = $1 ORDER BY 1",
                None,
                &[slot.into()],
            )?
            .map(|row| {
                let name: String = row.get(1)?.unwrap_or_default();
                // A user that went away keeps the consumer from everybody.
                let owner = row.get::<String>(2)?.map(|user| file::user_id(&user).unwrap_or(u32::MAX - 1));
                Ok(pgcdc_reader::ring::Consumer { name, owner })
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()?;
        Ok(Some(Stream { publication, shape, consumers }))
    })
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgcdc_stream_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let extra = BackgroundWorker::get_extra().to_owned();
    let Some((database, slot)) = extra.split_once('\n') else {
        pgrx::log!("pgcdc worker: malformed arguments {extra:?}");
        return;
    };
    BackgroundWorker::connect_worker_to_spi(Some(database), None);
    // Named at once, so that cdc_auto_configure and cdc_drop find it.
    let name = std::ffi::CString::new(application_name(slot)).unwrap_or_default();
    // SAFETY: setting a session GUC by name with a NUL-terminated value.
    unsafe {
        pg_sys::SetConfigOption(
            c"application_name".as_ptr(),
            name.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
        );
    }
    // cdc_auto_configure starts the worker once its transaction committed.
    let stream = match BackgroundWorker::transaction(|| load_stream(slot)) {
        Ok(Some(stream)) => stream,
        Ok(None) => {
            pgrx::log!("pgcdc worker: no stream uses slot \"{slot}\" in database \"{database}\"; stopping");
            return;
        }
        Err(e) => pgrx::error!("pgcdc worker: reading the stream of slot \"{slot}\": {e}"),
    };

    // One worker per stream: a second one (started by a racing
    // cdc_auto_configure) finds the stream's lock taken and leaves for good.
    match BackgroundWorker::transaction(|| take_stream_lock(slot)) {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => pgrx::error!("pgcdc worker: locking stream \"{slot}\": {e}"),
    }
    // Wait while another process holds the slot (the worker being replaced,
    // or a consumer reading it with SQL).
    loop {
        match BackgroundWorker::transaction(|| slot_holder(slot)) {
            Ok(SlotState::Free) => break,
            Ok(SlotState::Held) => {
                if !BackgroundWorker::wait_latch(Some(Duration::from_millis(200))) {
                    return;
                }
            }
            Ok(SlotState::Missing) => {
                pgrx::log!("pgcdc worker: slot \"{slot}\" does not exist in database \"{database}\"; stopping");
                return;
            }
            // Restarting would fail the same way: stop, and say what to do
            // (cdc_status() says it too).
            Ok(SlotState::Lost(why)) => {
                pgrx::log!("pgcdc worker: stream \"{slot}\" stops: {}", invalidated_remedy(slot, &why));
                return;
            }
            Err(e) => pgrx::error!("pgcdc worker: looking up slot \"{slot}\": {e}"),
        }
    }

    // A ring file truncated under the worker must not take the server
    // down with a SIGBUS: the worker notices, and restarts (see the sink).
    pgcdc_reader::ring::guard_against_truncation();
    let settings = match ring_settings(slot) {
        Ok(settings) => settings,
        Err(e) => {
            // Restarting would change nothing until the setting is fixed:
            // stop (cdc_auto_configure starts the worker again).
            pgrx::log!("pgcdc worker: stream \"{slot}\" stops: {e}");
            return;
        }
    };
    let geometry = settings.geometry;
    let dir = stream_dir(slot);
    let sink = Sink::open(&dir, stream.shape, settings, &stream.consumers)
        .unwrap_or_else(|e| pgrx::error!("pgcdc worker: opening the rings of slot \"{slot}\": {e}"));
    // A quarter of a ring: larger messages would wait long for room (and
    // those over half a ring go to spill files beside it).
    let batch_bytes = (geometry.capacity / 4).clamp(1024, 8 << 20);
    // Tables sharing a route (one merged stream) need their rows in exact
    // LSN order across tables: a message ends wherever the table changes.
    let merged = !stream.shape.route_by_table;
    let options = [
        ("publication_names", quote_publication(&stream.publication)),
        ("batch_bytes", batch_bytes.to_string()),
        ("flush_on_table_change", merged.to_string()),
        ("flush_at_commit", "false".to_string()),
        ("snapshot_markers", "true".to_string()),
    ];
    // SAFETY: a background worker connected to the slot's database, outside
    // any transaction, as the decoding loop requires.
    let mut session = unsafe { Session::start(slot, &options, Box::new(sink)) };
    pgrx::log!("pgcdc worker: streaming slot \"{slot}\" of database \"{database}\" into {}", dir.display());
    // The stream's snapshot workers, while snapshots wait (also those a
    // crash interrupted).
    let mut team = crate::snapshot::Team::new(database, slot);
    team.keep();
    // Snapshot files delivered, deleted once the slot's saved position
    // passes them.
    let mut delivered: VecDeque<crate::plugin::Delivered> = VecDeque::new();

    let mut last_confirm = Instant::now();
    let mut last_save = Instant::now();
    let mut idle = Duration::from_millis(1);
    // When the oldest row waiting in an open batch was decoded, and when
    // the last batches went out.
    let mut holding_since: Option<Instant> = None;
    let mut last_flush = Instant::now() - gucs::linger();
    loop {
        let read = session.pump(PUMP_RECORDS);
        // A busy stream's batches go out at least the linger time apart
        // (woken by every flush, the worker would otherwise write a frame
        // per commit, and a Python reader of 10 000 commits a second fell a
        // second behind); rows after a quiet moment go out at once, and
        // none waits longer than the linger time.
        if session.has_pending() {
            let since = *holding_since.get_or_insert_with(Instant::now);
            let linger = gucs::linger();
            let caught_up = read < PUMP_RECORDS;
            if since.elapsed() >= linger || (caught_up && last_flush.elapsed() >= linger) {
                session.flush();
                holding_since = None;
                last_flush = Instant::now();
            } else if caught_up {
                // More WAL may come before the batch is due.
                let due = (last_flush + linger).min(since + linger);
                crate::majors::wait_for_flush(session.decoded_upto(), due.saturating_duration_since(Instant::now()));
                continue;
            }
        } else {
            session.sink_mut().flushed();
            holding_since = None;
        }
        if last_confirm.elapsed() >= CONFIRM_EVERY || read == 0 {
            let mut bound = session.sink().confirmable(session.decoded_upto(), session.has_pending());
            if let Some(hold) = session.snapshot_hold(bound) {
                bound = bound.min(hold);
            }
            session.confirm(bound);
            delivered.extend(session.take_delivered());
            // Snapshot workers wait for their chunk files to go: saved
            // sooner while some could.
            let freeable = delivered.front().is_some_and(|d| d.after <= bound);
            if last_save.elapsed() >= SAVE_EVERY || freeable {
                team.keep();
                session.save();
                last_save = Instant::now();
                while delivered.front().is_some_and(|d| d.after <= session.saved()) {
                    for file in delivered.pop_front().map(|d| d.files).unwrap_or_default() {
                        let _ = std::fs::remove_file(file);
                    }
                }
            }
            session.sink_mut().heartbeat();
            last_confirm = Instant::now();
        }
        if read > 0 {
            idle = Duration::from_millis(1);
            if BackgroundWorker::sigterm_received() {
                break;
            }
            continue;
        }
        // Woken by the next WAL flush where the server wakes waiters (16
        // and later), else polling, less often the longer nothing comes.
        let wait = if crate::majors::flush_wakes() { WOKEN_WAIT } else { idle };
        crate::majors::wait_for_flush(session.decoded_upto(), wait);
        if BackgroundWorker::sigterm_received() {
            break;
        }
        idle = (idle * 2).min(MAX_IDLE_SLEEP);
        if BackgroundWorker::sighup_received() {
            // SAFETY: re-reads the configuration files, as backends do.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
    }
    drop(session);
    match invalidation_under_way(slot) {
        Some(why) => pgrx::log!("pgcdc worker: stream \"{slot}\" stops: {}", invalidated_remedy(slot, &why)),
        None => pgrx::log!("pgcdc worker: slot \"{slot}\" stopped"),
    }
}

/// Why the slot was invalidated, when that is what stopped the worker:
/// PostgreSQL stops a slot's holder first and marks the slot once it is
/// released, so a slot whose WAL was past keeping (`unreserved`) is
/// watched for a second.
fn invalidation_under_way(slot: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (status, why) = BackgroundWorker::transaction(|| {
            Spi::connect(|client| {
                let rows = client.select(
                    &format!("SELECT wal_status, {SLOT_INVALIDATED} FROM pg_replication_slots s WHERE slot_name = $1"),
                    None,
                    &[slot.into()],
                )?;
                let Some(row) = rows.into_iter().next() else { return Ok((None, None)) };
                Ok::<_, pgrx::spi::Error>((row.get::<String>(1)?, row.get::<String>(2)?))
            })
        })
        .ok()?;
        if why.is_some() || status.as_deref() != Some("unreserved") || Instant::now() >= deadline {
            return why;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Drops replication slot `slot` if it exists (an ERROR if a process
/// holds it).
pub fn drop_slot(slot: &str) {
    let Ok(name) = std::ffi::CString::new(slot) else { return };
    // SAFETY: looks the slot up under its lock (the `true`), then drops it
    // by name, as pg_drop_replication_slot does; `name` outlives both calls.
    unsafe {
        if !pg_sys::SearchNamedReplicationSlot(name.as_ptr(), true).is_null() {
            pg_sys::ReplicationSlotDrop(name.as_ptr(), true);
        }
    }
}

/// The first key of the advisory lock (`pg_try_advisory_lock(key,
/// hashtext(slot))`) a stream's worker holds while it runs ("pgcd").
pub const STREAM_LOCK: i32 = 0x7067_6364;

/// Takes the session-level advisory lock that marks the stream's worker.
fn take_stream_lock(slot: &str) -> Result<bool, pgrx::spi::Error> {
    Spi::connect(|client| {
        let rows =
            client.select("SELECT pg_try_advisory_lock($1, hashtext($2))", None, &[STREAM_LOCK.into(), slot.into()])?;
        Ok(rows.first().get_one::<bool>()?.unwrap_or(false))
    })
}

/// Why replication slot `s` (a row of `pg_replication_slots`) can no
/// longer stream, as PostgreSQL 17's `invalidation_reason` names it (NULL
/// while it can): one SQL expression for every major (15 says so in
/// `wal_status`, 16 also in `conflicting`; `to_jsonb` reads columns a
/// major may lack). [`invalidated_remedy`] says it to people.
pub const SLOT_INVALIDATED: &str = "coalesce(to_jsonb(s)->>'invalidation_reason',
    CASE WHEN s.wal_status = 'lost' THEN 'wal_removed' WHEN to_jsonb(s)->>'conflicting' = 'true' THEN 'rows_removed' END)";

/// An invalidation `reason` (as `invalidation_reason` names it) for people.
pub fn invalidation_text(reason: &str) -> &str {
    match reason {
        "wal_removed" => "the WAL it needed was removed: its stream fell further behind than max_slot_wal_keep_size",
        "rows_removed" => "catalog rows it needed were removed (a conflict with recovery)",
        "wal_level_insufficient" => "wal_level was set below logical",
        "idle_timeout" => "it was idle longer than idle_replication_slot_timeout",
        other => other,
    }
}

/// What happened to slot `slot`, invalidated for `reason` (as
/// `invalidation_reason` names it), and what to do.
pub fn invalidated_remedy(slot: &str, reason: &str) -> String {
    let why = invalidation_text(reason);
    format!(
        "replication slot \"{slot}\" was invalidated ({why}), and the changes it had not streamed are gone from the WAL. \
         Run cdc_auto_configure for the stream again: it makes a new slot and snapshots the stream's tables again"
    )
}

enum SlotState {
    Free,
    Held,
    Missing,
    /// Invalidated, and why.
    Lost(String),
}

fn slot_holder(slot: &str) -> Result<SlotState, pgrx::spi::Error> {
    Spi::connect(|client| {
        let rows = client.select(
            &format!(
                "SELECT active_pid IS NOT NULL, {SLOT_INVALIDATED} FROM pg_replication_slots s
                 WHERE slot_name = $1 AND database = current_database()"
            ),
            None,
            &[slot.into()],
        )?;
        if rows.is_empty() {
            return Ok(SlotState::Missing);
        }
        let row = rows.first();
        if let Some(why) = row.get::<String>(2)? {
            return Ok(SlotState::Lost(why));
        }
        Ok(if row.get::<bool>(1)?.unwrap_or(false) { SlotState::Held } else { SlotState::Free })
    })
}

/// A publication name as the plugin's identifier-list option reads it.
fn quote_publication(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
