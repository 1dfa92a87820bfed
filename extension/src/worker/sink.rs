//! Where the worker's decoded messages go: the ring of each message's
//! table (or of one of its key-hash partitions, or the stream's one merged
//! ring), found by relation OID and created on first use, with
//! back-pressure when a ring is full.
//!
//! A change of a published table always has a ring to go to: routes are
//! derived from the relation (names are for display, so a renamed table
//! keeps its ring), never looked up in a list that could be stale. A new
//! ring gets every consumer registered for the stream (the registry beside
//! the rings, locked while the ring is made).

use crate::plugin::{current_message, Message};
use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{RecordBatch, UInt64Array};
use pgcdc_encode::ipc;
use pgcdc_reader::contract;
use pgcdc_reader::partition::split_changes;
use pgcdc_reader::position::Position;
use pgcdc_reader::ring::file::{self, Registry, RingKey};
use pgcdc_reader::ring::layout::{frame_size, Geometry, KIND_BATCH, KIND_SPILL};
use pgcdc_reader::ring::{now_ms, Consumer, FrameMeta, Identity, Ring, RingError, RingWriter, Start, Written};
use pgrx::pg_sys;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How a stream routes its tables (fixed when it is first configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub route_by_table: bool,
    /// Key-hash partitions per table (1: not split).
    pub partitions: u32,
}

/// What a stream's rings are made of.
pub struct RingSettings {
    pub geometry: Geometry,
    pub group: Option<u32>,
    /// Whose rings these are; `relation`, `partition` and `route` are set
    /// per ring.
    pub identity: Identity,
}

/// A route's ring, the schema last published to it, and what the status
/// needs: when each unacknowledged frame was written, and row counts.
struct Route {
    writer: RingWriter,
    path: PathBuf,
    fingerprint: Option<u64>,
    /// The position of the last row written.
    last: Option<Position>,
    /// (end position, written at ms) of frames not yet acknowledged by all.
    unacked: VecDeque<(u64, u64)>,
    /// Spill files and the ring position once past which nobody needs them.
    spills: VecDeque<(u64, PathBuf)>,
    rows_written: u64,
    /// Rows written when the current rate period began, and when.
    period: (u64, Instant),
    rate: u64,
    /// Consumers already reported for impossible positions.
    reported: HashSet<String>,
}

/// One stream's rings.
pub struct Sink {
    dir: PathBuf,
    shape: Shape,
    settings: RingSettings,
    routes: HashMap<RingKey, Route>,
    /// End LSN of the last commit that went through the plugin.
    committed: u64,
    /// `committed` when the open batches were last written.
    flushed: u64,
    /// When the directory was last looked at for rings made by others.
    scanned: Instant,
}

/// How often the stream's directory is looked at for rings that
/// `cdc_auto_configure` made for new tables: until the worker knows a
/// ring, merging readers of it wait.
const SCAN_EVERY: Duration = Duration::from_millis(200);

impl Sink {
    /// Opens the stream's directory: records `consumers` (the catalog's) in
    /// its registry, registers them on the rings that exist, and replaces
    /// rings that belong to another history of the cluster (another
    /// timeline, or acknowledged past the end of the WAL).
    pub fn open(dir: &Path, shape: Shape, settings: RingSettings, consumers: &[Consumer]) -> Result<Sink, RingError> {
        let mut sink = Sink {
            dir: dir.to_owned(),
            shape,
            settings,
            routes: HashMap::new(),
            committed: 0,
            flushed: 0,
            scanned: Instant::now(),
        };
        let mut registry = Registry::lock(dir, sink.settings.group)?;
        let mut names = registry.consumers()?;
        for consumer in consumers {
            names.retain(|c| c.name != consumer.name);
            names.push(consumer.clone());
        }
        registry.set(&names)?;
        // A consumer registered from now on is added to the rings by
        // whoever registers it.
        drop(registry);
        // SAFETY: reads the flush position from shared memory.
        let wal_end = unsafe { pg_sys::GetFlushRecPtr(std::ptr::null_mut()) };
        for path in file::rings_in(dir)? {
            let mut ring = match file::open_own(&path) {
                Ok(ring) => ring,
                Err(e @ (RingError::NotARing | RingError::Version(_) | RingError::Geometry(_))) => {
                    // Cut short or overwritten (the worker restarted after
                    // finding it damaged): nothing in it can be trusted. A
                    // new one takes its place at once, for its readers.
                    pgrx::log!("pgcdc worker: replacing ring {}: {e}", path.display());
                    std::fs::remove_file(&path)
                        .map_err(|source| RingError::Io { path: path.display().to_string(), source })?;
                    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let Some(key) = RingKey::from_file_name(&name, shape.partitions) else { continue };
                    open_ring(dir, key, "", &sink.settings)?.1
                }
                Err(e @ RingError::Unsafe { .. }) => {
                    // Not the server's: a file someone else put there.
                    pgrx::log!("pgcdc worker: ignoring {}: {e}", path.display());
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(key) = sink.key_of(&ring, &path) else { continue };
            if let Some(why) = sink.foreign(&ring, wal_end) {
                // A new ring in its place, which readers of the old one
                // (told it is retired) open instead.
                pgrx::log!("pgcdc worker: replacing ring {}: {why}", path.display());
                let route = ring.identity().route;
                // Retired first: a reader hears of it even if the worker
                // dies before the new ring exists (and also finds the
                // file replaced when it looks).
                RingWriter::new(ring).retire();
                std::fs::remove_file(&path)
                    .map_err(|source| RingError::Io { path: path.display().to_string(), source })?;
                ring = open_ring(dir, key, &route, &sink.settings)?.1;
            }
            for consumer in &names {
                ring.register(consumer, Start::Now)?;
            }
            sink.routes.insert(key, Route::new(RingWriter::new(ring), path));
        }
        sink.adopt_spills()?;
        Ok(sink)
    }

    /// Why a ring must not be written to, if it must not.
    fn foreign(&self, ring: &Ring, wal_end: u64) -> Option<String> {
        let (ours, theirs) = (&self.settings.identity, ring.identity());
        if (theirs.system_id, theirs.database, &theirs.slot) != (ours.system_id, ours.database, &ours.slot) {
            return Some(format!("it belongs to another stream ({theirs:?})"));
        }
        if theirs.timeline != ours.timeline {
            return Some(format!("it was written on timeline {}, the server is on {}", theirs.timeline, ours.timeline));
        }
        let status = ring.status();
        status.consumers.iter().find(|c| c.ack_lsn > wal_end).map(|c| {
            format!("consumer \"{}\" acknowledged {:X}, past the end of the WAL ({wal_end:X})", c.name, c.ack_lsn)
        })
    }

    /// Takes on the rings others made for new tables: they hear of every
    /// transaction that completes from now on.
    fn adopt_new_rings(&mut self) -> Result<(), RingError> {
        for path in file::rings_in(&self.dir)? {
            if self.routes.values().any(|r| r.path == path) {
                continue;
            }
            let Ok(ring) = file::open_own(&path) else { continue };
            let Some(key) = self.key_of(&ring, &path) else { continue };
            let route = Route::new(RingWriter::new(ring), path);
            route.writer.complete_through(self.flushed, u64::MAX);
            self.routes.insert(key, route);
        }
        Ok(())
    }

    /// The key of a ring, as its header says, if that is the key its file
    /// name says too.
    fn key_of(&self, ring: &Ring, path: &Path) -> Option<RingKey> {
        let identity = ring.identity();
        let key = match identity.relation {
            0 => RingKey::Merged,
            relation => RingKey::Table { relation, partition: identity.partition, partitions: self.shape.partitions },
        };
        let named = path.file_name().is_some_and(|n| n.to_string_lossy() == key.file_name());
        if !named {
            pgrx::log!("pgcdc worker: ignoring ring {}: its header names another route", path.display());
        }
        named.then_some(key)
    }

    /// Takes over the spill files a previous worker left: each is deleted
    /// once every consumer is past any frame that could name it.
    fn adopt_spills(&mut self) -> Result<(), RingError> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|source| RingError::Io { path: self.dir.display().to_string(), source })?;
        for path in entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "spill")) {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let mut parts = name.split('.');
            let (Some(stem), Some(at)) = (parts.next(), parts.next().and_then(|p| p.parse::<u64>().ok())) else {
                continue;
            };
            match self.routes.iter_mut().find(|(key, _)| key.file_name() == format!("{stem}.ring")) {
                Some((_, route)) => {
                    let capacity = route.writer.ring().geometry().capacity;
                    route.spills.push_back((at + 2 * capacity, path));
                }
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(())
    }

    /// The rings a relation's changes go to.
    fn keys(&self, relation: u32) -> Vec<RingKey> {
        let partitions = self.shape.partitions;
        match (self.shape.route_by_table, partitions) {
            (false, _) => vec![RingKey::Merged],
            (true, 1) => vec![RingKey::Table { relation, partition: 0, partitions: 1 }],
            (true, n) => (0..n).map(|partition| RingKey::Table { relation, partition, partitions: n }).collect(),
        }
    }

    /// The route of `key`, created (with every registered consumer) if it
    /// has no ring yet.
    fn route(&mut self, key: RingKey, display: &str) -> Result<&mut Route, RingError> {
        if !self.routes.contains_key(&key) {
            let (path, ring) = open_ring(&self.dir, key, display, &self.settings)?;
            self.routes.insert(key, Route::new(RingWriter::new(ring), path));
        }
        Ok(self.routes.get_mut(&key).expect("inserted"))
    }

    /// Writes one plugin message to its table's ring (or its partitions'),
    /// waiting while a ring is full (interrupts and shutdown requests are
    /// served meanwhile).
    pub fn write(&mut self, bytes: &[u8]) {
        let Some(message) = current_message() else { return };
        if let Err(e) = self.write_message(&message, bytes) {
            pgrx::error!("pgcdc worker: writing the changes of {}: {e}", table_name(&message));
        }
        self.check_damage();
        if let Some((commit_lsn, lsn)) = message.synced {
            // Every row decoded so far is in its ring: merging readers may
            // pass them, though the transaction is still being written.
            self.routes.values().for_each(|r| r.writer.complete_through(commit_lsn, lsn));
        }
    }

    fn write_message(&mut self, message: &Message, bytes: &[u8]) -> Result<(), SinkError> {
        let spec = message.schema.spec();
        let keys = self.keys(spec.relid);
        let table = table_name(message);
        let dir = self.dir.clone();
        if message.batch.num_rows() == 0 {
            // A marker: on every route of the table.
            let group = self.settings.group;
            for (k, key) in keys.iter().enumerate() {
                let display = match (self.shape.route_by_table, keys.len()) {
                    (false, _) => self.settings.identity.slot.clone(),
                    (true, 1) => table.clone(),
                    (true, _) => format!("{table}#{k}"),
                };
                self.route(*key, &display)?.write(message, &display, &message.batch, bytes, &dir, group)?;
            }
            return Ok(());
        }
        if let [key] = keys[..] {
            let display = if self.shape.route_by_table { table } else { self.settings.identity.slot.clone() };
            let group = self.settings.group;
            return Ok(self.route(key, &display)?.write(message, &display, &message.batch, bytes, &dir, group)?);
        }
        let key_columns: Vec<String> = spec.partition_key.iter().map(|i| spec.columns[*i].name.clone()).collect();
        let parts = split_changes(&message.batch, &key_columns, keys.len())?;
        for (k, (key, part)) in keys.into_iter().zip(parts).enumerate() {
            let Some(part) = part else { continue };
            let mut payload = Vec::new();
            ipc::write_stream(&part, &mut payload)?;
            let display = format!("{table}#{k}");
            let group = self.settings.group;
            self.route(key, &display)?.write(message, &display, &part, &payload, &dir, group)?;
        }
        Ok(())
    }

    /// A transaction ending at `lsn` went through the plugin (its rows may
    /// still wait in an open batch).
    pub fn committed(&mut self, lsn: u64) {
        self.committed = self.committed.max(lsn);
    }

    /// Every open batch was written: each transaction that went through
    /// the plugin is complete in the rings, and merging readers may pass it.
    pub fn flushed(&mut self) {
        self.flushed = self.committed;
        let lsn = self.committed;
        self.routes.values().for_each(|r| r.writer.complete_through(lsn, u64::MAX));
    }

    /// The LSN the slot may confirm: everything decoded up to `decoded`
    /// (or, while rows wait in open batches, up to the last flush) that
    /// every registered consumer of every ring either acknowledged or has
    /// read to the end of (a consumer that is caught up holds nothing back,
    /// however quiet its tables).
    pub fn confirmable(&self, decoded: u64, pending: bool) -> u64 {
        let mut bound = if pending { self.flushed } else { decoded };
        for route in self.routes.values() {
            let status = route.writer.ring().status();
            for consumer in status.consumers.iter().filter(|c| status.is_valid(c)) {
                if consumer.ack_pos < status.write_pos {
                    bound = bound.min(consumer.ack_lsn);
                }
            }
        }
        // Positions read from a damaged ring are zeros, not the consumers'.
        self.check_damage();
        bound
    }

    /// Stops the worker when a ring file was cut short under it (someone
    /// with write access truncated it): what it wrote since is lost, and
    /// the slot must not confirm it. Restarted, the worker replaces the
    /// ring and decoding sends again what the slot did not confirm.
    fn check_damage(&self) {
        if let Some(route) = self.routes.values().find(|r| r.writer.ring().is_damaged()) {
            pgrx::error!(
                "pgcdc worker: ring {} was cut short while the worker wrote to it; restarting to replace it",
                route.path.display()
            );
        }
    }

    /// Records that the worker is alive, publishes each ring's lag and
    /// throughput for readers and `cdc_status`, deletes spill files nobody
    /// needs any more, and reports consumers with impossible positions.
    pub fn heartbeat(&mut self) {
        self.check_damage();
        if self.scanned.elapsed() >= SCAN_EVERY {
            self.scanned = Instant::now();
            if let Err(e) = self.adopt_new_rings() {
                pgrx::warning!("pgcdc worker: looking for new rings in {}: {e}", self.dir.display());
            }
        }
        for route in self.routes.values_mut() {
            route.writer.heartbeat();
            let status = route.writer.ring().status();
            let acknowledged = status
                .consumers
                .iter()
                .filter(|c| status.is_valid(c))
                .map(|c| c.ack_pos)
                .min()
                .unwrap_or(status.write_pos);
            while route.unacked.front().is_some_and(|(end, _)| *end <= acknowledged) {
                route.unacked.pop_front();
            }
            while route.spills.front().is_some_and(|(end, _)| *end <= acknowledged) {
                let (_, path) = route.spills.pop_front().expect("a spill");
                let _ = std::fs::remove_file(path);
            }
            for consumer in status.invalid_consumers() {
                if route.reported.insert(consumer.name.clone()) {
                    pgrx::warning!(
                        "pgcdc worker: consumer \"{}\" of ring {} has an impossible position ({} with the ring at {}); \
                         it no longer holds the ring back. Drop it with cdc_drop_consumer.",
                        consumer.name,
                        route.path.display(),
                        consumer.ack_pos,
                        status.write_pos
                    );
                }
            }
            let elapsed = route.period.1.elapsed();
            if elapsed >= Duration::from_secs(1) {
                route.rate = ((route.rows_written - route.period.0) as f64 / elapsed.as_secs_f64()) as u64;
                route.period = (route.rows_written, Instant::now());
            }
            let oldest = route.unacked.front().map_or(0, |(_, at)| *at);
            route.writer.publish_stats(oldest, route.rows_written, route.rate);
        }
    }
}

impl Route {
    fn new(writer: RingWriter, path: PathBuf) -> Route {
        let rows_written = writer.rows_written();
        Route {
            writer,
            path,
            fingerprint: None,
            last: None,
            unacked: VecDeque::new(),
            spills: VecDeque::new(),
            rows_written,
            period: (rows_written, Instant::now()),
            rate: 0,
            reported: HashSet::new(),
        }
    }

    /// Writes `batch` (encoded as `payload`) as one frame, numbering its
    /// rows after the route's last; a frame too large for the ring goes to
    /// a spill file beside it.
    fn write(
        &mut self,
        message: &Message,
        display: &str,
        batch: &RecordBatch,
        payload: &[u8],
        dir: &Path,
        group: Option<u32>,
    ) -> Result<(), RingError> {
        if self.fingerprint != Some(message.schema.fingerprint()) {
            let mut schema = Vec::new();
            if ipc::write_schema_stream(message.schema.arrow(), &mut schema).is_ok() {
                // A schema too large for the header area is only a missed
                // convenience for late readers: every frame carries its own.
                let _ = self.writer.publish_schema(&schema);
            }
            // A new schema comes with every rename.
            self.writer.set_route_name(display);
            self.fingerprint = Some(message.schema.fingerprint());
        }
        let meta = match message.marker {
            Some(commit_lsn) if batch.num_rows() == 0 => {
                // A marker takes the place (its commit, 0) before any row of
                // its transaction: it comes in a transaction of its own.
                if self.last.is_some_and(|last| last.commit_lsn >= commit_lsn) {
                    pgrx::log!("pgcdc worker: a marker in a transaction with rows on route {display}: not written");
                    return Ok(());
                }
                let at = Position::new(commit_lsn, 0);
                FrameMeta { rows: 0, first: at, last: at, ends_transaction: false }
            }
            _ => {
                let commits = batch
                    .column_by_name(contract::COMMIT_LSN)
                    .and_then(|c| c.as_primitive_opt::<UInt64Type>())
                    .expect("a change batch has _commit_lsn");
                positions(self.last, commits, message.ends_transaction)
            }
        };
        let geometry = self.writer.ring().geometry();
        let spill;
        let (kind, frame): (u32, &[u8]) = if frame_size(payload.len() as u64) > geometry.max_frame() {
            let at = self.writer.ring().status().write_pos;
            let stem = self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let path = dir.join(format!("{stem}.{at}.spill"));
            // A file of that name is of a frame a crash kept from being
            // published (a published one moved the write position past it).
            let _ = std::fs::remove_file(&path);
            file::write_beside(&path, payload, group)?;
            spill = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            self.spills.push_back((at + 2 * geometry.capacity, path));
            (KIND_SPILL, spill.as_bytes())
        } else {
            (KIND_BATCH, payload)
        };
        loop {
            match self.writer.write(kind, frame, &meta, Duration::from_millis(100))? {
                Written::Done { end_pos } => {
                    self.unacked.push_back((end_pos, now_ms()));
                    self.rows_written += u64::from(meta.rows);
                    self.last = Some(meta.last);
                    return Ok(());
                }
                Written::Full => {
                    pgrx::check_for_interrupts!();
                    // SAFETY: reading a flag the signal handler sets.
                    if unsafe { pg_sys::ShutdownRequestPending } != 0 {
                        super::decoding::exit_asked();
                    }
                }
            }
        }
    }
}

/// Opens the ring of `key` in the stream directory `dir`, creating it (named
/// `display` for people) if there is none, with every consumer of the
/// stream's registry registered: under the registry's lock, so that a
/// consumer registered meanwhile is on it too.
pub fn open_ring(
    dir: &Path,
    key: RingKey,
    display: &str,
    settings: &RingSettings,
) -> Result<(PathBuf, Ring), RingError> {
    let path = dir.join(key.file_name());
    let (relation, partition) = key.relation_and_partition();
    let identity = Identity { relation, partition, route: display.to_owned(), ..settings.identity.clone() };
    let mut registry = Registry::lock(dir, settings.group)?;
    let consumers = registry.consumers()?;
    let ring = file::open_or_create(&path, settings.geometry, &identity, &consumers, settings.group)?;
    for consumer in &consumers {
        ring.register(consumer, Start::Now)?;
    }
    Ok((path, ring))
}

/// The header of a frame of rows whose commit LSNs are `commits`, written
/// after the route's `last` row: rows of one transaction are numbered on
/// from where the route's last frame left off.
fn positions(last: Option<Position>, commits: &UInt64Array, ends_transaction: bool) -> FrameMeta {
    let values = commits.values();
    let first_commit = values[0];
    let first = match last {
        Some(last) if last.commit_lsn == first_commit => last.next_in_transaction(),
        _ => Position::new(first_commit, 1),
    };
    let last_commit = values[values.len() - 1];
    let last = match values.partition_point(|c| *c < last_commit) {
        0 => Position::new(last_commit, first.index + values.len() as u64 - 1),
        start => Position::new(last_commit, (values.len() - start) as u64),
    };
    FrameMeta { rows: values.len() as u32, first, last, ends_transaction }
}

fn table_name(message: &Message) -> String {
    let spec = message.schema.spec();
    format!("{}.{}", spec.schema, spec.table)
}

/// What can go wrong writing a message.
#[derive(Debug, thiserror::Error)]
enum SinkError {
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error("splitting a batch into partitions: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}
