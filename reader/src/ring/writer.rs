//! The producer side: append frames, never over unacknowledged ones.

use super::layout::*;
use super::memory::{wait, wake_all};
use super::{now_ms, Ring, RingError};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The one producer of a ring.
pub struct RingWriter {
    ring: Ring,
}

/// The outcome of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The frame is published; the ring's write position is now `end_pos`.
    Done { end_pos: u64 },
    /// No room until consumers acknowledge more: nothing was written.
    Full,
}

impl RingWriter {
    /// Takes the producer role: a new epoch, this process's pid.
    pub fn new(ring: Ring) -> RingWriter {
        let r = &ring.region;
        r.u64_at(OFF_EPOCH).fetch_add(1, Ordering::AcqRel);
        r.u32_at(OFF_PRODUCER_PID).store(std::process::id(), Ordering::Relaxed);
        r.u64_at(OFF_HEARTBEAT_MS).store(now_ms(), Ordering::Relaxed);
        RingWriter { ring }
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Registers a consumer from the current end of the ring on (or keeps
    /// its position if it is registered already).
    pub fn register(&self, name: &str) -> Result<(), RingError> {
        let write_pos = self.ring.region.u64_at(OFF_WRITE_POS).load(Ordering::Relaxed);
        self.ring.claim_slot(name, write_pos).map(|_| ())
    }

    /// Appends one frame, unless the ring lacks room; never blocks.
    pub fn try_write(&self, payload: &[u8], commit_lsn: u64) -> Result<Written, RingError> {
        let r = &self.ring.region;
        let capacity = self.ring.geometry.capacity;
        let size = frame_size(payload.len() as u64);
        if size > capacity {
            return Err(RingError::TooLarge { frame: size, capacity });
        }
        let write_pos = r.u64_at(OFF_WRITE_POS).load(Ordering::Relaxed);
        let offset = write_pos % capacity;
        // Frames never wrap: fill the end of the area and start over.
        let pad = if offset + size > capacity { capacity - offset } else { 0 };
        let total = pad + size;
        if write_pos + total - self.ring.min_ack(write_pos) > capacity {
            return Ok(Written::Full);
        }
        let base = self.ring.data_offset();
        if pad > 0 {
            r.write(base + offset as usize, &header((pad - FRAME_HEADER) as u32, KIND_PADDING, 0));
        }
        let at = base + ((write_pos + pad) % capacity) as usize;
        r.write(at, &header(payload.len() as u32, KIND_BATCH, commit_lsn));
        r.write(at + FRAME_HEADER as usize, payload);
        r.u64_at(OFF_LAST_COMMIT_LSN).fetch_max(commit_lsn, Ordering::Relaxed);
        let end_pos = write_pos + total;
        r.u64_at(OFF_WRITE_POS).store(end_pos, Ordering::Release);
        let seq = r.u32_at(OFF_DATA_SEQ);
        seq.fetch_add(1, Ordering::Release);
        if r.u32_at(OFF_READERS_WAITING).load(Ordering::Acquire) > 0 {
            wake_all(seq);
        }
        Ok(Written::Done { end_pos })
    }

    /// Appends one frame, sleeping up to `timeout` for room when the ring is
    /// full. Returns [`Written::Full`] if there is still none, so the caller
    /// can handle interrupts and call again.
    pub fn write(&self, payload: &[u8], commit_lsn: u64, timeout: Duration) -> Result<Written, RingError> {
        let r = &self.ring.region;
        let space = r.u32_at(OFF_SPACE_SEQ);
        // Read the sequence before checking for room: an acknowledgement in
        // between changes it and the futex wait returns at once.
        let seen = space.load(Ordering::Acquire);
        match self.try_write(payload, commit_lsn)? {
            Written::Full => {
                r.u32_at(OFF_PRODUCER_WAITING).store(1, Ordering::Release);
                wait(space, seen, timeout);
                r.u32_at(OFF_PRODUCER_WAITING).store(0, Ordering::Release);
                self.try_write(payload, commit_lsn)
            }
            done => Ok(done),
        }
    }

    /// Records that the producer is alive.
    pub fn heartbeat(&self) {
        self.ring.region.u64_at(OFF_HEARTBEAT_MS).store(now_ms(), Ordering::Relaxed);
    }

    /// Declares every transaction that committed at or before `lsn` fully
    /// written (to this ring and every other ring of the stream).
    pub fn complete_through(&self, lsn: u64) {
        self.ring.region.u64_at(OFF_COMPLETE_LSN).fetch_max(lsn, Ordering::Release);
    }

    /// Publishes the producer's counters for status readers.
    pub fn publish_stats(&self, oldest_unacked_ms: u64, rows_written: u64, rows_per_second: u64) {
        let r = &self.ring.region;
        r.u64_at(OFF_OLDEST_UNACKED_MS).store(oldest_unacked_ms, Ordering::Relaxed);
        r.u64_at(OFF_ROWS_WRITTEN).store(rows_written, Ordering::Relaxed);
        r.u64_at(OFF_ROWS_PER_SECOND).store(rows_per_second, Ordering::Relaxed);
    }

    /// Rows written so far, as last published (survives producer restarts).
    pub fn rows_written(&self) -> u64 {
        self.ring.region.u64_at(OFF_ROWS_WRITTEN).load(Ordering::Relaxed)
    }

    /// Publishes the route's current schema (an Arrow IPC stream with no
    /// batches) for consumers that attach before any frame arrives.
    pub fn publish_schema(&self, ipc: &[u8]) -> Result<(), RingError> {
        let area = self.ring.geometry.schema_area as usize;
        if ipc.len() > area {
            return Err(RingError::SchemaTooLarge { needed: ipc.len(), area });
        }
        let r = &self.ring.region;
        let seq = r.u64_at(OFF_SCHEMA_SEQ);
        let odd = seq.load(Ordering::Relaxed) | 1;
        seq.store(odd, Ordering::Release);
        r.write(HEADER_BYTES, ipc);
        r.u32_at(OFF_SCHEMA_LEN).store(ipc.len() as u32, Ordering::Relaxed);
        seq.store(odd + 1, Ordering::Release);
        Ok(())
    }
}

fn header(len: u32, kind: u32, commit_lsn: u64) -> [u8; FRAME_HEADER as usize] {
    let mut h = [0u8; FRAME_HEADER as usize];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&commit_lsn.to_le_bytes());
    h
}
