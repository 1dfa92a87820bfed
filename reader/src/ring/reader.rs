//! The consumer side: read frames in order, acknowledge what was processed.

use super::layout::*;
use super::memory::{wait, wake_all};
use super::{now_ms, Ring, RingError};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// One frame of record batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// An Arrow IPC stream.
    pub payload: Vec<u8>,
    /// The highest `_commit_lsn` of its rows.
    pub commit_lsn: u64,
    /// The ring position after it.
    pub end_pos: u64,
}

/// A named consumer of a ring.
pub struct RingReader {
    ring: Ring,
    slot: usize,
    read_pos: u64,
    /// Frames returned and not yet acknowledged: (end position, commit LSN).
    unacked: VecDeque<(u64, u64)>,
}

impl RingReader {
    /// Attaches as consumer `name`: resumes at its acknowledged position, or
    /// registers it at the current end of the ring.
    pub fn attach(ring: Ring, name: &str) -> Result<RingReader, RingError> {
        let write_pos = ring.region.u64_at(OFF_WRITE_POS).load(Ordering::Acquire);
        let slot = slot_offset(ring.claim_slot(name, write_pos)?);
        let r = &ring.region;
        r.u32_at(slot + SLOT_PID).store(std::process::id(), Ordering::Relaxed);
        r.u64_at(slot + SLOT_HEARTBEAT).store(now_ms(), Ordering::Relaxed);
        let read_pos = r.u64_at(slot + SLOT_ACK_POS).load(Ordering::Acquire);
        r.u64_at(slot + SLOT_READ_POS).store(read_pos, Ordering::Relaxed);
        Ok(RingReader { ring, slot, read_pos, unacked: VecDeque::new() })
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// No row of a transaction committed at or before this LSN can still
    /// arrive in this ring.
    pub fn complete_lsn(&self) -> u64 {
        self.ring.region.u64_at(OFF_COMPLETE_LSN).load(Ordering::Acquire)
    }

    /// The highest commit LSN this consumer acknowledged (kept across
    /// restarts).
    pub fn acknowledged_lsn(&self) -> u64 {
        self.ring.region.u64_at(self.slot + SLOT_ACK_LSN).load(Ordering::Acquire)
    }

    /// The next frame, if one is published; never blocks.
    pub fn try_next(&mut self) -> Result<Option<Frame>, RingError> {
        let capacity = self.ring.geometry.capacity;
        loop {
            let r = &self.ring.region;
            let write_pos = r.u64_at(OFF_WRITE_POS).load(Ordering::Acquire);
            if self.read_pos == write_pos {
                return Ok(None);
            }
            let corrupt = |detail: String| RingError::Corrupt { pos: self.read_pos, detail };
            if self.read_pos > write_pos {
                return Err(corrupt(format!("the consumer is ahead of the producer (write position {write_pos})")));
            }
            if !self.read_pos.is_multiple_of(FRAME_ALIGN) {
                return Err(corrupt("position not on a frame boundary".into()));
            }
            let offset = self.read_pos % capacity;
            let at = self.ring.data_offset() + offset as usize;
            let h = r.read(at, FRAME_HEADER as usize);
            let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes"));
            let kind = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
            let commit_lsn = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
            let size = frame_size(u64::from(len));
            if offset + size > capacity || self.read_pos + size > write_pos {
                return Err(corrupt(format!("frame of {len} bytes runs past the data")));
            }
            let end_pos = self.read_pos + size;
            match kind {
                KIND_PADDING if offset + size == capacity => {
                    self.advance(end_pos, 0);
                }
                KIND_BATCH => {
                    let payload = r.read(at + FRAME_HEADER as usize, len as usize);
                    self.advance(end_pos, commit_lsn);
                    return Ok(Some(Frame { payload, commit_lsn, end_pos }));
                }
                other => return Err(corrupt(format!("unknown frame kind {other}"))),
            }
        }
    }

    fn advance(&mut self, end_pos: u64, commit_lsn: u64) {
        self.read_pos = end_pos;
        self.unacked.push_back((end_pos, commit_lsn));
        let r = &self.ring.region;
        r.u64_at(self.slot + SLOT_READ_POS).store(end_pos, Ordering::Relaxed);
        r.u64_at(self.slot + SLOT_HEARTBEAT).store(now_ms(), Ordering::Relaxed);
    }

    /// The next frame, sleeping up to `timeout` for one.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Frame>, RingError> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.ring.region.u32_at(OFF_DATA_SEQ).load(Ordering::Acquire);
            if let Some(frame) = self.try_next()? {
                return Ok(Some(frame));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let r = &self.ring.region;
            let waiting = r.u32_at(OFF_READERS_WAITING);
            waiting.fetch_add(1, Ordering::AcqRel);
            // The producer may have published between the check and the
            // registration above; the sequence tells, and the wait returns.
            wait(r.u32_at(OFF_DATA_SEQ), seen, deadline - now);
            waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Acknowledges every row with a commit LSN up to `lsn`: frames made only
    /// of such rows may be overwritten, and the slot may confirm `lsn`.
    pub fn ack(&mut self, lsn: u64) {
        let r = &self.ring.region;
        let mut ack_pos = None;
        while let Some(&(end_pos, commit_lsn)) = self.unacked.front() {
            if commit_lsn > lsn {
                break;
            }
            ack_pos = Some(end_pos);
            self.unacked.pop_front();
        }
        let ack_lsn = r.u64_at(self.slot + SLOT_ACK_LSN);
        ack_lsn.fetch_max(lsn, Ordering::AcqRel);
        if let Some(pos) = ack_pos {
            r.u64_at(self.slot + SLOT_ACK_POS).store(pos, Ordering::Release);
        }
        let space = r.u32_at(OFF_SPACE_SEQ);
        space.fetch_add(1, Ordering::Release);
        if r.u32_at(OFF_PRODUCER_WAITING).load(Ordering::Acquire) != 0 {
            wake_all(space);
        }
    }

    /// Stops retaining data for this consumer, for good.
    pub fn unregister(self) {
        let r = &self.ring.region;
        r.u32_at(self.slot + SLOT_STATE).store(SLOT_FREE, Ordering::Release);
        let space = r.u32_at(OFF_SPACE_SEQ);
        space.fetch_add(1, Ordering::Release);
        wake_all(space);
    }
}
