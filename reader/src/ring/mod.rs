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
//!   acknowledged: a full ring pushes back on decoding.
//! * A consumer registers by name and stays registered across restarts
//!   until it unregisters; the `default` consumer is registered when the
//!   ring is created, so nothing written before the first reader attaches
//!   is lost.
//! * A waiting consumer sleeps on a futex; so does a producer facing a full
//!   ring. Wake-ups are sent only when someone sleeps.

pub mod file;
pub mod layout;
mod memory;
mod reader;
mod writer;

pub use memory::{process_alive, Region};
pub use reader::{Frame, RingReader};
pub use writer::{RingWriter, Written};

use layout::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

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
    #[error("a frame of {frame} bytes cannot fit a ring of {capacity} bytes; raise pgcdc.ring_size")]
    TooLarge { frame: u64, capacity: u64 },
    #[error("all {0} reader slots of the ring are taken; unregister an unused consumer")]
    NoFreeSlot(u32),
    #[error("consumer name must be 1 to {NAME_MAX} bytes, got {0}")]
    BadName(usize),
    #[error("the ring's schema area holds {area} bytes; this schema needs {needed}")]
    SchemaTooLarge { needed: usize, area: usize },
}

/// A ring in memory: its header and data area. Clones share the memory,
/// as processes mapping the same file do.
#[derive(Clone)]
pub struct Ring {
    region: Arc<Region>,
    geometry: Geometry,
}

/// A consumer as the header records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStatus {
    pub name: String,
    pub pid: u32,
    pub alive: bool,
    pub ack_pos: u64,
    pub ack_lsn: u64,
    pub read_pos: u64,
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
    /// No row of a transaction committed at or before it can still arrive.
    pub complete_lsn: u64,
    pub producer_pid: u32,
    pub producer_epoch: u64,
    pub heartbeat_ms: u64,
    pub consumers: Vec<ConsumerStatus>,
}

impl RingStatus {
    /// Bytes written but not yet acknowledged by the slowest consumer.
    pub fn fill(&self) -> u64 {
        self.consumers.iter().map(|c| self.write_pos.saturating_sub(c.ack_pos)).max().unwrap_or(0)
    }

    /// The smallest acknowledged position of a registered consumer.
    pub fn min_ack_pos(&self) -> u64 {
        self.consumers.iter().map(|c| c.ack_pos).min().unwrap_or(self.write_pos)
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

/// Milliseconds since 1970.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Ring {
    /// Lays out a new ring in zeroed memory and registers the `default`
    /// consumer at position 0.
    pub fn create(region: Region, geometry: Geometry) -> Result<Ring, RingError> {
        geometry.validate(region.len()).map_err(RingError::Geometry)?;
        region.u32_at(OFF_VERSION).store(VERSION, Ordering::Relaxed);
        region.u32_at(OFF_DATA_OFFSET).store(geometry.data_offset() as u32, Ordering::Relaxed);
        region.u64_at(OFF_CAPACITY).store(geometry.capacity, Ordering::Relaxed);
        region.u32_at(OFF_READER_SLOTS).store(geometry.readers, Ordering::Relaxed);
        region.u32_at(OFF_SCHEMA_AREA).store(geometry.schema_area, Ordering::Relaxed);
        region.u64_at(OFF_CREATED_MS).store(now_ms(), Ordering::Relaxed);
        let ring = Ring { region: Arc::new(region), geometry };
        ring.claim_slot("default", 0)?;
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
        Ok(Ring { region: Arc::new(region), geometry })
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// A copy of the ring's first `len` bytes (tools and fuzzing).
    pub fn copy_bytes(&self, len: usize) -> Vec<u8> {
        self.region.read(0, len.min(self.region.len()))
    }

    /// The positions of the ring and its consumers.
    pub fn status(&self) -> RingStatus {
        let r = &self.region;
        let consumers = (0..self.geometry.readers)
            .filter(|i| r.u32_at(slot_offset(*i) + SLOT_STATE).load(Ordering::Acquire) == SLOT_REGISTERED)
            .map(|i| {
                let at = slot_offset(i);
                let pid = r.u32_at(at + SLOT_PID).load(Ordering::Relaxed);
                ConsumerStatus {
                    name: self.slot_name(i),
                    pid,
                    alive: process_alive(pid),
                    ack_pos: r.u64_at(at + SLOT_ACK_POS).load(Ordering::Acquire),
                    ack_lsn: r.u64_at(at + SLOT_ACK_LSN).load(Ordering::Acquire),
                    read_pos: r.u64_at(at + SLOT_READ_POS).load(Ordering::Relaxed),
                }
            })
            .collect();
        RingStatus {
            capacity: self.geometry.capacity,
            write_pos: r.u64_at(OFF_WRITE_POS).load(Ordering::Acquire),
            last_commit_lsn: r.u64_at(OFF_LAST_COMMIT_LSN).load(Ordering::Acquire),
            oldest_unacked_ms: r.u64_at(OFF_OLDEST_UNACKED_MS).load(Ordering::Relaxed),
            rows_written: r.u64_at(OFF_ROWS_WRITTEN).load(Ordering::Relaxed),
            rows_per_second: r.u64_at(OFF_ROWS_PER_SECOND).load(Ordering::Relaxed),
            complete_lsn: r.u64_at(OFF_COMPLETE_LSN).load(Ordering::Acquire),
            producer_pid: r.u32_at(OFF_PRODUCER_PID).load(Ordering::Relaxed),
            producer_epoch: r.u64_at(OFF_EPOCH).load(Ordering::Relaxed),
            heartbeat_ms: r.u64_at(OFF_HEARTBEAT_MS).load(Ordering::Relaxed),
            consumers,
        }
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

    fn slot_name(&self, index: u32) -> String {
        let at = slot_offset(index);
        let len = (self.region.u32_at(at + SLOT_NAME_LEN).load(Ordering::Relaxed) as usize).min(NAME_MAX);
        String::from_utf8_lossy(&self.region.read(at + SLOT_NAME, len)).into_owned()
    }

    /// The slot registered under `name`, if any.
    fn find_slot(&self, name: &str) -> Option<u32> {
        (0..self.geometry.readers).find(|i| {
            self.region.u32_at(slot_offset(*i) + SLOT_STATE).load(Ordering::Acquire) == SLOT_REGISTERED
                && self.slot_name(*i) == name
        })
    }

    /// Registers `name` with its acknowledged position at `pos`, or returns
    /// its slot if already registered.
    fn claim_slot(&self, name: &str, pos: u64) -> Result<u32, RingError> {
        if name.is_empty() || name.len() > NAME_MAX {
            return Err(RingError::BadName(name.len()));
        }
        if let Some(found) = self.find_slot(name) {
            return Ok(found);
        }
        for i in 0..self.geometry.readers {
            let at = slot_offset(i);
            let state = self.region.u32_at(at + SLOT_STATE);
            if state.compare_exchange(SLOT_FREE, SLOT_CLAIMING, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                self.region.u32_at(at + SLOT_NAME_LEN).store(name.len() as u32, Ordering::Relaxed);
                self.region.write(at + SLOT_NAME, name.as_bytes());
                self.region.u64_at(at + SLOT_ACK_POS).store(pos, Ordering::Relaxed);
                self.region.u64_at(at + SLOT_READ_POS).store(pos, Ordering::Relaxed);
                self.region.u64_at(at + SLOT_ACK_LSN).store(0, Ordering::Relaxed);
                state.store(SLOT_REGISTERED, Ordering::Release);
                // Two processes registering the same new name at once: the
                // lower slot wins, the other gives its slot back.
                if let Some(first) = self.find_slot(name).filter(|f| *f != i) {
                    state.store(SLOT_FREE, Ordering::Release);
                    return Ok(first);
                }
                return Ok(i);
            }
        }
        Err(RingError::NoFreeSlot(self.geometry.readers))
    }

    /// The smallest acknowledged position over registered consumers, or
    /// `write_pos` when there is none.
    fn min_ack(&self, write_pos: u64) -> u64 {
        (0..self.geometry.readers)
            .filter(|i| self.region.u32_at(slot_offset(*i) + SLOT_STATE).load(Ordering::Acquire) == SLOT_REGISTERED)
            .map(|i| self.region.u64_at(slot_offset(i) + SLOT_ACK_POS).load(Ordering::Acquire))
            .min()
            .unwrap_or(write_pos)
    }

    fn data_offset(&self) -> usize {
        self.geometry.data_offset()
    }
}

#[cfg(test)]
mod tests;
