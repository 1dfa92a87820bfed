//! Shared-memory rings: one per route, one producer (the pgcdc worker),
//! named consumers that acknowledge what they processed.
//!
//! The format ([`layout`]) is defined here once; the extension writes with
//! [`RingWriter`], applications read with [`RingReader`]. Like arrow-ipc's
//! encoder/decoder, the logic works on any [`Region`] of memory: a file
//! mapping in production, heap memory in the format's unit tests.
//!
//! Rules:
//! * The producer never overwrites a frame some registered consumer has not
//!   acknowledged: a full ring pushes back on decoding. A consumer slot
//!   whose positions cannot be (a corrupted or hostile ring) holds nothing
//!   back and is reported by [`RingStatus::invalid_consumers`].
//! * Consumers are registered explicitly ([`Ring::register`]) and stay
//!   registered across restarts until unregistered; attaching under a name
//!   nobody registered is an error, never a silent new consumer.
//! * Only the server writes a ring file; each consumer writes only its own
//!   state ([`acks`]), in a file no other reader may write.
//! * A waiting consumer sleeps on a futex; so does a producer facing a full
//!   ring. Wake-ups are sent only when someone sleeps.

pub mod acks;
pub mod file;
pub mod layout;
mod memory;
mod reader;
mod writer;

pub use memory::{guard_against_truncation, process_alive, Region};
pub use reader::{Frame, RingReader};
pub use writer::{FrameMeta, RingWriter, Written};

use crate::position::Position;
use layout::*;
use std::path::PathBuf;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What can go wrong with a ring.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("ring file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("not a pgcdc ring (bad magic number)")]
    NotARing,
    #[error("ring format version {0} is not supported (this build reads version {VERSION})")]
    Version(u32),
    #[error("ring header is inconsistent: {0}")]
    Geometry(String),
    #[error("ring is corrupt at position {pos}: {detail}")]
    Corrupt { pos: u64, detail: String },
    #[error("a frame of {frame} bytes cannot fit a ring of {capacity} bytes")]
    TooLarge { frame: u64, capacity: u64 },
    #[error("all {0} reader slots of the ring are taken; drop an unused consumer (cdc_drop_consumer)")]
    NoFreeSlot(u32),
    #[error("consumer name must be 1 to {NAME_MAX} bytes without control characters, got {0} bytes")]
    BadName(usize),
    #[error("consumer \"{0}\" is not registered on this ring; register it first (cdc_register_consumer, or the consumer setting of cdc_auto_configure)")]
    NotRegistered(String),
    #[error("consumer \"{name}\" is in use by process {pid}; each consumer name is read by one process at a time")]
    InUse { name: String, pid: u32 },
    #[error("the ring's schema area holds {area} bytes; this schema needs {needed}")]
    SchemaTooLarge { needed: usize, area: usize },
    #[error("the ring was replaced by a new one (the worker recreated it); open it again")]
    Retired,
    #[error("{path} is not safe for rings: {why}")]
    Unsafe { path: String, why: String },
    #[error("consumer \"{name}\" is read by the OS user with uid {uid}: only that user can read as it")]
    KeptBy { name: String, uid: u32 },
}

/// Whose ring this is, recorded when it is created: the worker refuses (or
/// replaces) a ring that belongs to another cluster, timeline, database,
/// stream or table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The cluster's system identifier (`pg_control_system()`).
    pub system_id: u64,
    /// The timeline the ring's positions belong to.
    pub timeline: u32,
    pub database: u32,
    /// The relation whose route this is (0 for a stream's merged route).
    pub relation: u32,
    pub partition: u32,
    pub slot: String,
    /// The route as people name it (`schema.table`); display only.
    pub route: String,
}

/// A consumer to register: its name, and the one OS user that may read as
/// it (None: the first OS user that does keeps it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub name: String,
    pub owner: Option<u32>,
}

impl Consumer {
    /// A consumer any OS user may read as (the first one keeps it).
    pub fn named(name: &str) -> Consumer {
        Consumer { name: name.to_owned(), owner: None }
    }
}

impl From<&str> for Consumer {
    fn from(name: &str) -> Consumer {
        Consumer::named(name)
    }
}

/// Where a newly registered consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At the beginning of the ring: for consumers registered when the
    /// ring is created, before any frame.
    Beginning,
    /// At the end, after the last transaction written so far.
    Now,
}

/// A ring in memory: its header and data area. Clones share the memory,
/// as processes mapping the same file do.
#[derive(Clone)]
pub struct Ring {
    region: Arc<Region>,
    geometry: Geometry,
    /// The directory of the ring file, where spilled frames live.
    dir: Option<PathBuf>,
    /// Where its consumers keep their states.
    acks: acks::Acks,
    /// The state last read of each consumer: what counts while its file
    /// cannot be read (being written, just replaced), so that a consumer
    /// never seems further behind, or ahead, than it was.
    known: Arc<std::sync::Mutex<std::collections::HashMap<String, acks::State>>>,
}

/// A consumer as the header records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStatus {
    pub name: String,
    pub pid: u32,
    pub alive: bool,
    pub ack_pos: u64,
    /// The last transaction it acknowledged completely.
    pub ack_lsn: u64,
    /// The last row it acknowledged.
    pub acked: Position,
    pub read_pos: u64,
    /// When it last read or acknowledged (ms since 1970).
    pub heartbeat_ms: u64,
}

/// A snapshot of a ring's positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingStatus {
    pub capacity: u64,
    pub write_pos: u64,
    pub last_commit_lsn: u64,
    /// When the oldest unacknowledged frame was written (ms since 1970),
    /// 0 when every consumer is caught up.
    pub oldest_unacked_ms: u64,
    pub rows_written: u64,
    pub rows_per_second: u64,
    /// No row at or below this (`_commit_lsn`, `_lsn`) can still arrive.
    pub complete: (u64, u64),
    pub producer_pid: u32,
    pub producer_epoch: u64,
    pub heartbeat_ms: u64,
    pub consumers: Vec<ConsumerStatus>,
}

impl RingStatus {
    /// Whether a consumer's positions are possible: not ahead of the
    /// producer, not further behind than the ring holds, on frame
    /// boundaries.
    pub fn is_valid(&self, consumer: &ConsumerStatus) -> bool {
        valid_ack(consumer.ack_pos, self.write_pos, self.capacity)
    }

    /// Consumers whose positions cannot be: they hold nothing back.
    pub fn invalid_consumers(&self) -> Vec<&ConsumerStatus> {
        self.consumers.iter().filter(|c| !self.is_valid(c)).collect()
    }

    /// Bytes written but not yet acknowledged by the slowest consumer.
    pub fn fill(&self) -> u64 {
        self.consumers.iter().filter(|c| self.is_valid(c)).map(|c| self.write_pos - c.ack_pos).max().unwrap_or(0)
    }

    /// How long the oldest unacknowledged frame has waited, at `now_ms`.
    pub fn lag_ms(&self, now_ms: u64) -> u64 {
        if self.oldest_unacked_ms == 0 {
            0
        } else {
            now_ms.saturating_sub(self.oldest_unacked_ms)
        }
    }
}

fn valid_ack(ack_pos: u64, write_pos: u64, capacity: u64) -> bool {
    ack_pos <= write_pos && write_pos - ack_pos <= capacity && ack_pos.is_multiple_of(FRAME_ALIGN)
}

/// Milliseconds since 1970.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Ring {
    /// Lays out a new ring in zeroed memory, owned by `identity`, with
    /// `consumers` registered at its beginning.
    pub fn create(
        region: Region,
        geometry: Geometry,
        identity: &Identity,
        consumers: &[Consumer],
    ) -> Result<Ring, RingError> {
        geometry.validate(region.len()).map_err(RingError::Geometry)?;
        let r = &region;
        r.u32_at(OFF_VERSION).store(VERSION, Ordering::Relaxed);
        r.u32_at(OFF_DATA_OFFSET).store(geometry.data_offset() as u32, Ordering::Relaxed);
        r.u64_at(OFF_CAPACITY).store(geometry.capacity, Ordering::Relaxed);
        r.u32_at(OFF_READER_SLOTS).store(geometry.readers, Ordering::Relaxed);
        r.u32_at(OFF_SCHEMA_AREA).store(geometry.schema_area, Ordering::Relaxed);
        r.u64_at(OFF_CREATED_MS).store(now_ms(), Ordering::Relaxed);
        r.u64_at(OFF_SYSTEM_ID).store(identity.system_id, Ordering::Relaxed);
        r.u32_at(OFF_TIMELINE).store(identity.timeline, Ordering::Relaxed);
        r.u32_at(OFF_DATABASE).store(identity.database, Ordering::Relaxed);
        r.u32_at(OFF_RELATION).store(identity.relation, Ordering::Relaxed);
        r.u32_at(OFF_PARTITION).store(identity.partition, Ordering::Relaxed);
        write_name(r, OFF_SLOT_NAME_LEN, OFF_SLOT_NAME, SLOT_NAME_MAX, &identity.slot);
        write_name(r, OFF_ROUTE_NAME_LEN, OFF_ROUTE_NAME, ROUTE_NAME_MAX, &identity.route);
        r.u64_at(OFF_INCARNATION).store(incarnation(), Ordering::Relaxed);
        let ring =
            Ring { region: Arc::new(region), geometry, dir: None, acks: acks::Acks::memory(), known: Arc::default() };
        for consumer in consumers {
            ring.register(consumer, Start::Beginning)?;
        }
        // The magic goes last: a reader never sees a half-made header.
        ring.region.u64_at(OFF_MAGIC).store(u64::from_le_bytes(MAGIC), Ordering::Release);
        Ok(ring)
    }

    /// Opens an existing ring, checking its header.
    pub fn open(region: Region) -> Result<Ring, RingError> {
        if region.len() < HEADER_BYTES {
            return Err(RingError::Geometry(format!("{} bytes is smaller than the header", region.len())));
        }
        if region.u64_at(OFF_MAGIC).load(Ordering::Acquire) != u64::from_le_bytes(MAGIC) {
            return Err(RingError::NotARing);
        }
        let version = region.u32_at(OFF_VERSION).load(Ordering::Relaxed);
        if version != VERSION {
            return Err(RingError::Version(version));
        }
        let geometry = Geometry {
            capacity: region.u64_at(OFF_CAPACITY).load(Ordering::Relaxed),
            readers: region.u32_at(OFF_READER_SLOTS).load(Ordering::Relaxed),
            schema_area: region.u32_at(OFF_SCHEMA_AREA).load(Ordering::Relaxed),
        };
        geometry.validate(region.len()).map_err(RingError::Geometry)?;
        if region.u32_at(OFF_DATA_OFFSET).load(Ordering::Relaxed) as usize != geometry.data_offset() {
            return Err(RingError::Geometry("data offset does not follow from the geometry".into()));
        }
        Ok(Ring { region: Arc::new(region), geometry, dir: None, acks: acks::Acks::memory(), known: Arc::default() })
    }

    /// The ring file is `dir/<stem>.ring`: spilled frames and consumer
    /// states live beside it.
    pub(crate) fn with_file(mut self, dir: PathBuf, stem: String) -> Ring {
        self.acks = acks::Acks::Files { dir: dir.clone(), stem };
        self.dir = Some(dir);
        self
    }

    /// Tells consumer states of this ring from those of a ring that was
    /// at the same path before.
    pub(crate) fn incarnation(&self) -> u64 {
        self.region.u64_at(OFF_INCARNATION).load(Ordering::Relaxed)
    }

    pub(crate) fn dir(&self) -> Option<&std::path::Path> {
        self.dir.as_deref()
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Whose ring this is, as its header says.
    pub fn identity(&self) -> Identity {
        let r = &self.region;
        Identity {
            system_id: r.u64_at(OFF_SYSTEM_ID).load(Ordering::Relaxed),
            timeline: r.u32_at(OFF_TIMELINE).load(Ordering::Relaxed),
            database: r.u32_at(OFF_DATABASE).load(Ordering::Relaxed),
            relation: r.u32_at(OFF_RELATION).load(Ordering::Relaxed),
            partition: r.u32_at(OFF_PARTITION).load(Ordering::Relaxed),
            slot: read_name(r, OFF_SLOT_NAME_LEN, OFF_SLOT_NAME, SLOT_NAME_MAX),
            route: read_name(r, OFF_ROUTE_NAME_LEN, OFF_ROUTE_NAME, ROUTE_NAME_MAX),
        }
    }

    /// Whether the file was cut short under this process's mapping (with
    /// [`guard_against_truncation`]): nothing read or written is the file's.
    pub fn is_damaged(&self) -> bool {
        self.region.damaged()
    }

    /// Whether the producer replaced this ring by a new file.
    pub fn is_retired(&self) -> bool {
        self.region.u32_at(OFF_RETIRED).load(Ordering::Acquire) != 0
    }

    /// A copy of the ring's first `len` bytes (tools and fuzzing).
    pub fn copy_bytes(&self, len: usize) -> Vec<u8> {
        self.region.read(0, len.min(self.region.len()))
    }

    /// The positions of the ring and its consumers.
    pub fn status(&self) -> RingStatus {
        let r = &self.region;
        let write_pos = r.u64_at(OFF_WRITE_POS).load(Ordering::Acquire);
        let consumers = self
            .registered()
            .map(|i| {
                let name = self.slot_name(i);
                let state = self.state(i, &name);
                ConsumerStatus {
                    pid: state.pid,
                    alive: process_alive(state.pid),
                    ack_pos: state.ack_pos,
                    ack_lsn: state.ack_lsn,
                    acked: state.acked,
                    read_pos: state.read_pos,
                    heartbeat_ms: state.heartbeat_ms,
                    name,
                }
            })
            .collect();
        RingStatus {
            capacity: self.geometry.capacity,
            write_pos,
            last_commit_lsn: r.u64_at(OFF_LAST_COMMIT_LSN).load(Ordering::Acquire),
            oldest_unacked_ms: r.u64_at(OFF_OLDEST_UNACKED_MS).load(Ordering::Relaxed),
            rows_written: r.u64_at(OFF_ROWS_WRITTEN).load(Ordering::Relaxed),
            rows_per_second: r.u64_at(OFF_ROWS_PER_SECOND).load(Ordering::Relaxed),
            complete: self.complete(),
            producer_pid: r.u32_at(OFF_PRODUCER_PID).load(Ordering::Relaxed),
            producer_epoch: r.u64_at(OFF_EPOCH).load(Ordering::Relaxed),
            heartbeat_ms: r.u64_at(OFF_HEARTBEAT_MS).load(Ordering::Relaxed),
            consumers,
        }
    }

    /// The complete position: no row at or below this (`_commit_lsn`,
    /// `_lsn`) can still arrive in this ring. `(0, 0)` while a producer
    /// that died in the middle of raising it left it unreadable.
    pub fn complete(&self) -> (u64, u64) {
        self.read_complete().unwrap_or((0, 0))
    }

    fn read_complete(&self) -> Option<(u64, u64)> {
        let r = &self.region;
        let seq = r.u64_at(OFF_COMPLETE_SEQ);
        for _ in 0..10_000 {
            let before = seq.load(Ordering::Acquire);
            if before.is_multiple_of(2) {
                let commit = r.u64_at(OFF_COMPLETE_COMMIT).load(Ordering::Relaxed);
                let lsn = r.u64_at(OFF_COMPLETE_LSN).load(Ordering::Relaxed);
                fence(Ordering::Acquire);
                if seq.load(Ordering::Relaxed) == before {
                    return Some((commit, lsn));
                }
            }
            std::hint::spin_loop();
        }
        None
    }

    /// The route's latest Arrow schema (an IPC stream with no batches), if
    /// the producer published one.
    pub fn schema(&self) -> Option<Vec<u8>> {
        let seq = self.region.u64_at(OFF_SCHEMA_SEQ);
        for _ in 0..1000 {
            let before = seq.load(Ordering::Acquire);
            if before == 0 {
                return None;
            }
            if before % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            let len = (self.region.u32_at(OFF_SCHEMA_LEN).load(Ordering::Relaxed) as usize)
                .min(self.geometry.schema_area as usize);
            let bytes = self.region.read(HEADER_BYTES, len);
            if seq.load(Ordering::Acquire) == before {
                return Some(bytes);
            }
        }
        None
    }

    /// Registers consumer `name`, or leaves it as it is if it is registered
    /// already. Registration is serialized by a lock word in the header, so
    /// two processes registering one new name end with one registration.
    pub fn register(&self, consumer: &Consumer, start: Start) -> Result<(), RingError> {
        let name = consumer.name.as_str();
        if name.is_empty() || name.len() > NAME_MAX || name.chars().any(char::is_control) {
            return Err(RingError::BadName(name.len()));
        }
        let _lock = self.lock_registration();
        if self.find_slot(name).is_some() {
            return Ok(());
        }
        let r = &self.region;
        let (ack_pos, acked, ack_lsn) = match start {
            Start::Beginning => (0, Position::START, 0),
            Start::Now => {
                let last = r.u64_at(OFF_LAST_COMMIT_LSN).load(Ordering::Acquire);
                (r.u64_at(OFF_WRITE_POS).load(Ordering::Acquire), Position::end_of(last), last)
            }
        };
        // A state left by a consumer of this name that was dropped is not
        // the new one's.
        self.acks.remove(name);
        self.known.lock().expect("known states").remove(name);
        for i in 0..self.geometry.readers {
            let at = slot_offset(i);
            let state = r.u32_at(at + SLOT_STATE);
            if state.compare_exchange(SLOT_FREE, SLOT_CLAIMING, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                r.u32_at(at + SLOT_NAME_LEN).store(name.len() as u32, Ordering::Relaxed);
                r.write(at + SLOT_NAME, name.as_bytes());
                r.u32_at(at + SLOT_OWNER).store(consumer.owner.unwrap_or(ANY_OWNER), Ordering::Relaxed);
                r.u64_at(at + SLOT_START_ACK_POS).store(ack_pos, Ordering::Relaxed);
                r.u64_at(at + SLOT_START_ACK_LSN).store(ack_lsn, Ordering::Relaxed);
                r.u64_at(at + SLOT_START_COMMIT).store(acked.commit_lsn, Ordering::Relaxed);
                r.u64_at(at + SLOT_START_INDEX).store(acked.index, Ordering::Relaxed);
                state.store(SLOT_REGISTERED, Ordering::Release);
                return Ok(());
            }
        }
        Err(RingError::NoFreeSlot(self.geometry.readers))
    }

    /// Unregisters consumer `name`: it no longer holds anything back.
    /// Returns whether it was registered.
    pub fn unregister(&self, name: &str) -> bool {
        let _lock = self.lock_registration();
        let Some(i) = self.find_slot(name) else { return false };
        self.region.u32_at(slot_offset(i) + SLOT_STATE).store(SLOT_FREE, Ordering::Release);
        self.acks.remove(name);
        self.known.lock().expect("known states").remove(name);
        true
    }

    /// The names of the registered consumers.
    pub fn consumers(&self) -> Vec<String> {
        self.registered().map(|i| self.slot_name(i)).collect()
    }

    /// Takes the registration lock, taking it over from a holder that died.
    fn lock_registration(&self) -> RegistrationLock<'_> {
        let word = self.region.u32_at(OFF_REGISTRATION_LOCK);
        let me = std::process::id();
        loop {
            match word.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return RegistrationLock(self),
                Err(holder) if holder != me && !process_alive(holder) => {
                    if word.compare_exchange(holder, me, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        return RegistrationLock(self);
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    }

    fn registered(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.geometry.readers)
            .filter(|i| self.region.u32_at(slot_offset(*i) + SLOT_STATE).load(Ordering::Acquire) == SLOT_REGISTERED)
    }

    fn slot_name(&self, index: u32) -> String {
        let at = slot_offset(index);
        let len = (self.region.u32_at(at + SLOT_NAME_LEN).load(Ordering::Relaxed) as usize).min(NAME_MAX);
        String::from_utf8_lossy(&self.region.read(at + SLOT_NAME, len)).into_owned()
    }

    /// Where consumer slot `index` starts: its state until it attaches.
    fn start(&self, index: u32) -> acks::State {
        let (r, at) = (&self.region, slot_offset(index));
        let ack_pos = r.u64_at(at + SLOT_START_ACK_POS).load(Ordering::Acquire);
        acks::State {
            ack_pos,
            read_pos: ack_pos,
            ack_lsn: r.u64_at(at + SLOT_START_ACK_LSN).load(Ordering::Acquire),
            acked: Position::new(
                r.u64_at(at + SLOT_START_COMMIT).load(Ordering::Acquire),
                r.u64_at(at + SLOT_START_INDEX).load(Ordering::Acquire),
            ),
            ..acks::State::default()
        }
    }

    /// The one OS user that may read as consumer slot `index`, if one is set.
    fn owner(&self, index: u32) -> Option<u32> {
        Some(self.region.u32_at(slot_offset(index) + SLOT_OWNER).load(Ordering::Acquire)).filter(|o| *o != ANY_OWNER)
    }

    /// What consumer `name` (in slot `index`) read and acknowledged: its
    /// state file, else the state last read of it (a file being made, or
    /// taken away), else where it started.
    fn state(&self, index: u32, name: &str) -> acks::State {
        let mut known = self.known.lock().expect("known states");
        match self.acks.read(name, self.incarnation(), self.owner(index)) {
            Some(state) => {
                known.insert(name.to_owned(), state);
                state
            }
            None => known.get(name).copied().unwrap_or_else(|| self.start(index)),
        }
    }

    /// The slot registered under `name`, if any.
    fn find_slot(&self, name: &str) -> Option<u32> {
        self.registered().find(|i| self.slot_name(*i) == name)
    }

    /// The smallest acknowledged position over registered consumers whose
    /// positions are possible, or `write_pos` when there is none.
    fn min_ack(&self, write_pos: u64) -> u64 {
        let capacity = self.geometry.capacity;
        self.registered()
            .map(|i| self.state(i, &self.slot_name(i)).ack_pos)
            .filter(|ack| valid_ack(*ack, write_pos, capacity))
            .min()
            .unwrap_or(write_pos)
    }

    fn data_offset(&self) -> usize {
        self.geometry.data_offset()
    }
}

/// A number no earlier ring at the same path had.
fn incarnation() -> u64 {
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    (nanos ^ (u64::from(std::process::id()) << 40) ^ serial.rotate_left(20)) | 1
}

/// Held while registering; released when dropped.
struct RegistrationLock<'a>(&'a Ring);

impl Drop for RegistrationLock<'_> {
    fn drop(&mut self) {
        self.0.region.u32_at(OFF_REGISTRATION_LOCK).store(0, Ordering::Release);
    }
}

fn write_name(region: &Region, len_at: usize, at: usize, max: usize, name: &str) {
    let mut end = name.len().min(max);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    region.write(at, &name.as_bytes()[..end]);
    region.u32_at(len_at).store(end as u32, Ordering::Release);
}

fn read_name(region: &Region, len_at: usize, at: usize, max: usize) -> String {
    let len = (region.u32_at(len_at).load(Ordering::Acquire) as usize).min(max);
    String::from_utf8_lossy(&region.read(at, len)).into_owned()
}

#[cfg(test)]
mod tests;
