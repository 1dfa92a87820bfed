//! The producer side: append frames, never over unacknowledged ones.

use super::layout::*;
use super::memory::wake_all;
use super::{now_ms, Ring, RingError};
use crate::position::Position;
use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

/// The one producer of a ring.
pub struct RingWriter {
    ring: Ring,
    /// The complete position last published (only this producer raises it).
    complete: std::cell::Cell<(u64, u64)>,
}

/// What a frame holds, as its header records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// Rows in the frame's batches.
    pub rows: u32,
    /// Positions of the first and last row.
    pub first: Position,
    pub last: Position,
    /// Whether the last row is its transaction's last in this route.
    pub ends_transaction: bool,
}

impl FrameMeta {
    /// The metadata of a padding frame: no rows.
    pub const PADDING: FrameMeta =
        FrameMeta { rows: 0, first: Position::START, last: Position::START, ends_transaction: false };
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
        let complete = ring.read_complete().unwrap_or_else(|| {
            // A producer died while raising it: start again from nothing.
            r.u64_at(OFF_COMPLETE_SEQ).fetch_add(1, Ordering::AcqRel);
            r.u64_at(OFF_COMPLETE_COMMIT).store(0, Ordering::Relaxed);
            r.u64_at(OFF_COMPLETE_LSN).store(0, Ordering::Release);
            (0, 0)
        });
        RingWriter { ring, complete: std::cell::Cell::new(complete) }
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Appends one frame of `kind` (a batch, or a spilled batch's file
    /// name), unless the ring lacks room; never blocks. A frame that does
    /// not fit before the end of the area is preceded by a padding frame,
    /// published on its own, so that a frame up to
    /// [`Geometry::max_frame`] always fits once consumers catch up.
    pub fn try_write(&self, kind: u32, payload: &[u8], meta: &FrameMeta) -> Result<Written, RingError> {
        let r = &self.ring.region;
        let capacity = self.ring.geometry.capacity;
        let size = frame_size(payload.len() as u64);
        if size > self.ring.geometry.max_frame() || payload.len() > u32::MAX as usize {
            return Err(RingError::TooLarge { frame: size, capacity });
        }
        let mut write_pos = r.u64_at(OFF_WRITE_POS).load(Ordering::Relaxed);
        if write_pos.checked_add(2 * capacity).is_none() {
            return Err(RingError::Corrupt {
                pos: write_pos,
                detail: "the write position is at the end of its range".into(),
            });
        }
        let mut free = capacity - (write_pos - self.ring.min_ack(write_pos));
        let offset = write_pos % capacity;
        if offset + size > capacity {
            let pad = capacity - offset;
            if pad > free {
                return Ok(Written::Full);
            }
            let at = self.ring.data_offset() + offset as usize;
            r.write(at, &header((pad - FRAME_HEADER) as u32, KIND_PADDING, &FrameMeta::PADDING));
            write_pos += pad;
            free -= pad;
            self.publish(write_pos);
        }
        if size > free {
            return Ok(Written::Full);
        }
        let at = self.ring.data_offset() + (write_pos % capacity) as usize;
        r.write(at, &header(payload.len() as u32, kind, meta));
        r.write(at + FRAME_HEADER as usize, payload);
        r.u64_at(OFF_LAST_COMMIT_LSN).fetch_max(meta.last.commit_lsn, Ordering::Relaxed);
        let end_pos = write_pos + size;
        self.publish(end_pos);
        Ok(Written::Done { end_pos })
    }

    /// Makes everything up to `write_pos` visible to consumers.
    fn publish(&self, write_pos: u64) {
        let r = &self.ring.region;
        r.u64_at(OFF_WRITE_POS).store(write_pos, Ordering::Release);
        self.wake_readers();
    }

    fn wake_readers(&self) {
        let r = &self.ring.region;
        let seq = r.u32_at(OFF_DATA_SEQ);
        seq.fetch_add(1, Ordering::Release);
        // Readers cannot write the ring to say they sleep: always wake.
        wake_all(seq);
    }

    /// Appends one frame, waiting up to `timeout` for room when the ring is
    /// full. Returns [`Written::Full`] if there is still none, so the caller
    /// can handle interrupts and call again. Consumers acknowledge in their
    /// own files, which the producer does not map: it looks again after
    /// 100 µs, doubling to 10 ms (only a full ring waits).
    pub fn write(&self, kind: u32, payload: &[u8], meta: &FrameMeta, timeout: Duration) -> Result<Written, RingError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut pause = Duration::from_micros(100);
        loop {
            match self.try_write(kind, payload, meta)? {
                Written::Full if std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause.min(deadline.saturating_duration_since(std::time::Instant::now())));
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
                outcome => return Ok(outcome),
            }
        }
    }

    /// Records that the producer is alive.
    pub fn heartbeat(&self) {
        self.ring.region.u64_at(OFF_HEARTBEAT_MS).store(now_ms(), Ordering::Relaxed);
    }

    /// Declares that no row at or below (`commit_lsn`, `lsn`) can still
    /// arrive in this ring, and wakes readers waiting for that (a merging
    /// reader waits on the complete position of a route with no rows).
    pub fn complete_through(&self, commit_lsn: u64, lsn: u64) {
        if (commit_lsn, lsn) <= self.complete.get() {
            return;
        }
        self.complete.set((commit_lsn, lsn));
        let r = &self.ring.region;
        let seq = r.u64_at(OFF_COMPLETE_SEQ);
        let odd = seq.load(Ordering::Relaxed) | 1;
        seq.store(odd, Ordering::Relaxed);
        fence(Ordering::Release);
        r.u64_at(OFF_COMPLETE_COMMIT).store(commit_lsn, Ordering::Relaxed);
        r.u64_at(OFF_COMPLETE_LSN).store(lsn, Ordering::Relaxed);
        seq.store(odd + 1, Ordering::Release);
        self.wake_readers();
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

    /// Records the route's name as people know it now (after a rename).
    pub fn set_route_name(&self, route: &str) {
        if self.ring.identity().route != route {
            super::write_name(&self.ring.region, OFF_ROUTE_NAME_LEN, OFF_ROUTE_NAME, ROUTE_NAME_MAX, route);
        }
    }

    /// Marks the ring as replaced: readers attached to it open the path
    /// again.
    pub fn retire(&self) {
        self.ring.region.u32_at(OFF_RETIRED).store(1, Ordering::Release);
        self.wake_readers();
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

fn header(len: u32, kind: u32, meta: &FrameMeta) -> [u8; FRAME_HEADER as usize] {
    let mut h = [0u8; FRAME_HEADER as usize];
    let flags = if meta.ends_transaction { FLAG_ENDS_TRANSACTION } else { 0 };
    h[FRAME_LEN..FRAME_LEN + 4].copy_from_slice(&len.to_le_bytes());
    h[FRAME_KIND..FRAME_KIND + 4].copy_from_slice(&kind.to_le_bytes());
    h[FRAME_ROWS..FRAME_ROWS + 4].copy_from_slice(&meta.rows.to_le_bytes());
    h[FRAME_FLAGS..FRAME_FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
    h[FRAME_FIRST_COMMIT..FRAME_FIRST_COMMIT + 8].copy_from_slice(&meta.first.commit_lsn.to_le_bytes());
    h[FRAME_FIRST_INDEX..FRAME_FIRST_INDEX + 8].copy_from_slice(&meta.first.index.to_le_bytes());
    h[FRAME_LAST_COMMIT..FRAME_LAST_COMMIT + 8].copy_from_slice(&meta.last.commit_lsn.to_le_bytes());
    h[FRAME_LAST_INDEX..FRAME_LAST_INDEX + 8].copy_from_slice(&meta.last.index.to_le_bytes());
    h
}

/// Reads a frame header: (payload length, kind, metadata).
pub(crate) fn parse_header(h: &[u8]) -> (u32, u32, FrameMeta) {
    let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
    let meta = FrameMeta {
        rows: u32_at(FRAME_ROWS),
        first: Position::new(u64_at(FRAME_FIRST_COMMIT), u64_at(FRAME_FIRST_INDEX)),
        last: Position::new(u64_at(FRAME_LAST_COMMIT), u64_at(FRAME_LAST_INDEX)),
        ends_transaction: u32_at(FRAME_FLAGS) & FLAG_ENDS_TRANSACTION != 0,
    };
    (u32_at(FRAME_LEN), u32_at(FRAME_KIND), meta)
}
